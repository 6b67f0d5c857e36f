"""A diagnostics actor lost mid-evaluation: the pool replaces its actors and runs the evaluation again from the
tracker's state before it (same answer as an undisturbed pool); lost again, the evaluation comes back as a
failed one with its reason, and Q_T and q_evaluations are unchanged (a failed evaluation is not counted)."""
import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test Ray only
import ray  # noqa: E402

from test_diagnostics_actors import ee_setup  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_pool():
    from eeray.diagnostics.alignment import AlignmentOptions
    from eeray.raytune.diagnostics_pool import DiagnosticsPool

    model, x, y = ee_setup()
    return DiagnosticsPool(model, x, num_actors=2, num_cpus=0.5, y=y, loss="ce",
                           options=AlignmentOptions(method="dense")), model


def killer(pool, times):
    """Wrap the pool's snapshot upload so an actor is killed just before it (mid-evaluation), ``times`` times."""
    backend, left = pool.backend, [times]

    def backend_with_loss(model):
        if left[0] > 0:
            left[0] -= 1
            ray.kill(pool.actors[0], no_restart=True)
        return backend(model)

    pool._tracker.factory = backend_with_loss


def test_an_evaluation_whose_actor_is_lost_once_is_retried_with_the_same_answer(local_ray):
    reference, model = make_pool()
    ref = [reference.submit(s, model).result().to_record() for s in (0, 5)]
    reference.shutdown()
    pool, model = make_pool()
    first = pool.submit(0, model).result().to_record()
    killer(pool, 1)
    second = pool.submit(5, model).result()
    assert second.extra["evaluation_attempts"] == 2 and "ActorDiedError" in second.extra["evaluation_error"]
    assert pool.replaced == 2 and len(pool.actors) == 2
    got = [first, second.to_record()]
    for key in ("step", "aligned", "rank", "q_t", "q_evaluations", "delta_m_ref_step"):
        assert [r[key] for r in got] == [r[key] for r in ref], key
    for key in ("residual", "delta_m_fro_sq"):  # the same blocks on fresh actors: the same numbers
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=1e-12, abs=1e-15), key
    assert pool.tracker.q.steps == [0, 5]
    pool.shutdown()


def test_an_evaluation_whose_actors_are_lost_twice_is_recorded_as_failed_and_not_counted(local_ray):
    pool, model = make_pool()
    pool.submit(0, model).result()
    q_before = (pool.tracker.q.q_t, list(pool.tracker.q.steps))
    killer(pool, 2)
    failed = pool.submit(5, model).result()
    assert failed.failed and failed.attempts == 2 and failed.reason.count("ActorDiedError") == 2
    rec = failed.to_record()
    assert rec["evaluation_error"] == failed.reason and rec["q_evaluations"] == 1 and rec["q_t"] == q_before[0]
    assert (pool.tracker.q.q_t, pool.tracker.q.steps) == q_before  # Q_T does not count it
    again = pool.submit(9, model).result()  # the pool goes on with fresh actors
    assert again.extra["evaluation_attempts"] == 1 and pool.tracker.q.steps == [0, 9]
    pool.shutdown()
