"""A trial whose alignment reports run on a Ray actor pool, asynchronously: the same rows as the local run,
attached to their steps, and none lost or repeated across a checkpoint."""
import os

import pytest
import ray

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.records import MemorySink
from eeray.trial import run_trial

pytestmark = pytest.mark.ray
KEYS = ("step", "phase", "q_t", "aligned", "rank", "method", "gram_size", "d")


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def cfg(actors: int) -> TrialConfig:
    return TrialConfig(data=DataConfig(name="random16", n_train=48, n_test=16),
                       model=ModelConfig(arch="lenet", lenet_pool="avg2"), optim=OptimConfig(lr=0.05, momentum=0.9),
                       ee=EEConfig(m_H=6, tau=0.5), train=TrainConfig(epochs=4, batch_size=16),
                       diag=DiagConfig(alignment=True, every=1, unit="epochs", actors=actors, lemma5=False))


def test_actor_pool_rows_equal_local_rows_and_survive_resume(local_ray):
    local, pooled = MemorySink(), MemorySink(keep_checkpoints=("post_switch",))
    ref = run_trial(cfg(0), local)
    res = run_trial(cfg(2), pooled)
    strip = lambda rows: [{k: r[k] for k in KEYS} for r in rows]  # noqa: E731
    assert strip(pooled.rows["diagnostics"]) == strip(local.rows["diagnostics"])
    for a, b in zip(pooled.rows["diagnostics"], local.rows["diagnostics"]):
        assert a["residual"] == pytest.approx(b["residual"], abs=1e-12)
        assert a["lambda_max"] == pytest.approx(b["lambda_max"], rel=1e-9)
        assert a["delta_m_fro_sq"] == pytest.approx(b["delta_m_fro_sq"], rel=1e-6, abs=1e-9)
    assert res.summary["final_Q_T"] == ref.summary["final_Q_T"]
    kept = pooled.checkpoints[0]
    resumed = MemorySink()
    run_trial(cfg(2), resumed, checkpoint=kept.state)
    assert strip(resumed.rows["diagnostics"]) == strip(pooled.rows["diagnostics"][kept.emitted["diagnostics"]:])
