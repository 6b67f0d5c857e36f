"""The Ray actor pool gives the local answers (same decision code, blocks computed on actors), works
asynchronously from a training loop, and places its actors in the caller's placement group."""
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster only (docs/architecture.md, Environment notes)
import ray  # noqa: E402  (a dependency of eeray: a missing Ray is an error, not a skip)

from eeray.diagnostics import AlignmentOptions, alignment_report  # noqa: E402
from eeray.diagnostics.errors import DiagnosticsError  # noqa: E402
from eeray.diagnostics.gram import build_gram  # noqa: E402
from eeray.diagnostics.jacobian import FunctionalModel  # noqa: E402
from eeray.diagnostics.safety import assumption4_report, lemma5_report  # noqa: E402
from eeray.diagnostics.q_tracker import AlignmentTracker  # noqa: E402
from eeray.surgery import to_ee_model  # noqa: E402

pytestmark = pytest.mark.ray


def ee_setup():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 6), nn.Softplus(), nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 3)).double()
    x = torch.randn(11, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randint(0, 3, (11,), generator=torch.Generator().manual_seed(2))
    return to_ee_model(base, x, m_H=3, gate_scale=2.0), x, y


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(cluster):
    from eeray.raytune.diagnostics_pool import DiagnosticsPool
    model, x, y = ee_setup()
    p = DiagnosticsPool(model, x, num_actors=2, num_cpus=0.5, y=y, loss="ce",
                        options=AlignmentOptions(method="dense"))
    yield p, model, x, y
    p.shutdown()


def test_pool_gram_equals_local_gram(pool):
    p, model, x, _ = pool
    local = build_gram(FunctionalModel(model), x, 3, 10**9)
    torch.testing.assert_close(p.build_gram(model, x, 3, 10**9), local, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", ["dense", "matrix_free"])
def test_pool_alignment_report_equals_local(pool, method):
    p, model, x, y = pool
    local = alignment_report(model, x, y, "ce", method=method, certificate=True).to_record()
    remote = p.alignment_report(model, x, y, "ce", method=method, certificate=True).to_record()
    for key in ("method", "gram_size", "d", "aligned", "rank", "second_aligned", "disagree", "cert_valid"):
        assert remote[key] == local[key], key
    # dense: identical up to summation order. Matrix-free: the Krylov iterates differ only by summation order,
    # but an aligned ρ is only resolved to ~tol/100 (LSQR stops there), so compare it as a bound.
    tol = 1e-10 if method == "dense" else 1e-6
    if method == "matrix_free" and local["aligned"]:
        assert remote["residual"] <= 1e-9 and local["residual"] <= 1e-9
    else:
        assert remote["residual"] == pytest.approx(local["residual"], rel=tol, abs=1e-14)
    for key in ("lambda_max", "cert_bound", "cert_grad_norm", "cert_loss"):
        assert remote[key] == pytest.approx(local[key], rel=tol if key != "cert_bound" else 1e-4), key


def test_pool_safe_exploration_equals_local(pool):
    p, model, x, _ = pool
    local, remote = assumption4_report(model, x, seed=3), p.assumption4_report(model, x, seed=3)
    assert (remote.gram.certified, remote.gram.second_rank) == (local.gram.certified, local.gram.second_rank)
    assert remote.gram.shift == pytest.approx(local.gram.shift, rel=1e-12)
    assert remote.gram.lambda_min == pytest.approx(local.gram.lambda_min, rel=1e-8, abs=1e-14)
    model.head.freeze_gate()
    l5_local, l5_remote = lemma5_report(model, x), p.lemma5_report(model, x)
    assert [h.second_rank for h in l5_remote.heads] == [h.second_rank for h in l5_local.heads]
    assert [h.certified for h in l5_remote.heads] == [h.certified for h in l5_local.heads]


def test_pool_rejects_other_data(pool):
    p, model, x, y = pool
    with pytest.raises(DiagnosticsError, match=r"x = \(10, 4\) is invalid: must be the samples the pool was built"):
        p.alignment_report(model, x[:10], y[:10], "ce")


def test_submit_poll_collect_attach_results_to_steps(pool):
    p, model, x, y = pool
    local = AlignmentTracker(x, y, "ce", method="dense")
    expected = {0: local.evaluate(model, 0).to_record()}
    p.submit(0, model)  # snapshot now; training goes on below while the pool evaluates
    with torch.no_grad():
        for prm in model.parameters():
            prm.mul_(1.1)
    expected[4] = local.evaluate(model, 4).to_record()
    p.submit(4, model)
    results = p.poll() + p.collect()
    assert [s for s, _ in results] == [0, 4]
    for step, rep in results:
        rec = rep.to_record()
        assert rec["step"] == step and rec["q_evaluations"] == (1 if step == 0 else 2)
        assert rec["delta_m_fro_sq"] == pytest.approx(expected[step]["delta_m_fro_sq"], rel=1e-10, abs=1e-12)
        assert rec["residual"] == pytest.approx(expected[step]["residual"], rel=1e-8, abs=1e-14)


def test_actors_use_the_callers_placement_group_bundles(cluster):
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote
    def trial(num_actors, model, x, y):  # stands in for a Tune trial running in bundle 0
        from eeray.raytune.diagnostics_pool import DiagnosticsPool
        from eeray.diagnostics.errors import DiagnosticsError
        try:
            p = DiagnosticsPool(model, x, num_actors=num_actors)
        except DiagnosticsError as err:
            return str(err)
        ids = ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_placement_group_id())
                       for a in p.actors])
        residual = p.alignment_report(model, x, y, "ce").residual
        p.shutdown()
        return ids, residual

    pg = placement_group([{"CPU": 0.3}] * 3)
    ray.get(pg.ready())
    opts = dict(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0,
                                                                     placement_group_capture_child_tasks=True))
    model, x, y = ee_setup()
    ids, residual = ray.get(trial.options(num_cpus=0.3, **opts).remote(2, model, x, y))
    assert ids == [pg.id.hex()] * 2
    assert residual == pytest.approx(alignment_report(model, x, y, "ce").residual, abs=1e-14)
    message = ray.get(trial.options(num_cpus=0.3, **opts).remote(3, model, x, y))
    assert "placement group has 3 bundles; the pool needs bundles 1..3" in message
    remove_placement_group(pg)
