"""The one training loop: records, the Standard baseline, divergence, and bitwise resume across the switch."""
import math

import pytest
import torch

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.records import MemorySink
from eeray.trial import TrialDiverged, run_trial


def lenet_cfg(**ee) -> TrialConfig:
    return TrialConfig(
        data=DataConfig(name="random16", n_train=48, n_test=16),
        model=ModelConfig(arch="lenet", lenet_mc=1, lenet_pool="avg2"),
        optim=OptimConfig(lr=0.05, momentum=0.9, weight_decay=1e-4),
        ee=EEConfig(**{"tau": 0.5, "epsilon": 1e-2, "m_H": 6, **ee}),
        train=TrainConfig(epochs=4, batch_size=16, eval_every=1, eval_unit="steps"), seed=5)


def _final_params(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


@pytest.mark.parametrize("ee", [
    {},  # τ = 2 epochs, SGD both phases
    {"tau": 7, "tau_unit": "steps", "perturb_base": "tau_minus_1"},  # mid-epoch switch, the literal θ^{τ−1}
    {"exploit_optim": OptimConfig(name="lbfgs", lbfgs_iters=3)},  # full-batch L-BFGS on cached features
    {"exploit_optim": OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-2)},
], ids=["sgd", "mid_epoch_literal", "lbfgs_fullbatch", "adamw"])
def test_resume_from_before_and_after_the_switch_is_bitwise_equal(ee):
    cfg = lenet_cfg(**ee)
    full = MemorySink(keep_checkpoints=("pre_switch", "post_switch", "epoch"))
    ref = run_trial(cfg, full)
    reasons = [c.reason for c in full.checkpoints]
    assert "pre_switch" in reasons and "post_switch" in reasons and reasons.count("epoch") == 4
    ref_params, ref_rows = _final_params(ref), full.rows["steps"]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]  # noqa: E731
    for kept in full.checkpoints:
        sink = MemorySink()
        resumed = run_trial(cfg, sink, checkpoint=kept.state)
        params = _final_params(resumed)
        assert all(torch.equal(params[k], ref_params[k]) for k in ref_params), f"{kept.reason} at step {kept.step}"
        # exactly the rows the uninterrupted run emitted after this checkpoint: none lost, none repeated
        assert strip(sink.rows["steps"]) == strip(ref_rows[kept.emitted["steps"]:])
        assert resumed.summary["final_train_loss"] == ref.summary["final_train_loss"]


def test_the_loop_switches_where_the_schedule_says(monkeypatch):
    """The loop asks PhaseSchedule.phase_at (through EEWrapper.before_step) when to switch: moving the schedule's
    answer moves the switch, its event, the phase of the rows and the phase timers."""
    from eeray.wrapper import Phase, PhaseSchedule

    monkeypatch.setattr(PhaseSchedule, "phase_at", lambda self, step: Phase.EXPLOIT if step >= 4 else Phase.EXPLORE)
    sink = MemorySink()
    run_trial(lenet_cfg(), sink)  # τ would be step 6
    (event,) = sink.rows["events"]
    assert event["step"] == 4
    steps = sink.frame("steps")
    assert steps[steps.step == 4].phase.tolist() == ["explore", "exploit"]
    assert set(steps[steps.step > 4].phase) == {"exploit"}
    assert steps.exploit_seconds.iloc[-1] > 0 and steps[steps.step == 4].exploit_seconds.iloc[0] == 0


def test_records_switch_event_and_summary():
    sink = MemorySink()
    result = run_trial(lenet_cfg(), sink)
    steps = sink.frame("steps")
    assert list(steps.step[:3]) == [0, 1, 2] and steps.step.iloc[-1] == 12
    assert set(steps.phase) == {"explore", "exploit"}
    assert (steps[steps.step == 6].phase.tolist()) == ["explore", "exploit"]  # θ^τ before and after perturbation
    (event,) = sink.rows["events"]
    assert event["step"] == 6 and event["perturb_epsilon"] == 1e-2 and event["trainable"] == event["d_hidden"]
    assert event["perturb_norm"] == pytest.approx(1e-2 * math.sqrt(result.summary["d"]), rel=0.05)
    s = result.summary
    assert s["m_H"] == 6 and s["tau_step"] == 6 and s["total_steps"] == 12 and s["d_hidden"] == 1 * 6 * 9  # m_y = 1 (binary), m_H = 6, m_{H−1} = 8 + 1
    assert s["final_train_error"] == steps.train_error.iloc[-1]
    exploit = steps[steps.phase == "exploit"]
    assert exploit.norm_body.nunique() == 1 and exploit.norm_head.nunique() == 1  # frozen
    assert exploit.norm_hidden.nunique() > 1


def test_standard_baseline_runs_through_the_same_loop():
    sink = MemorySink()
    result = run_trial(lenet_cfg(enabled=False), sink)
    assert set(sink.frame("steps").phase) == {"explore"} and sink.rows["events"] == []
    assert result.summary["tau_step"] is None and "m_H" not in result.summary
    assert result.summary["d"] == 208 + 1608 + (8 * 128 + 128) + (128 + 1)  # the unmodified LeNet (avg2), m_y = 1


def test_divergence_is_an_error_naming_the_step_and_learning_rate():
    cfg = TrialConfig(data=DataConfig(name="moons"), optim=OptimConfig(lr=1e12, momentum=0.9),
                      ee=EEConfig(enabled=False), train=TrainConfig(epochs=50, batch_size=100))
    with pytest.raises(TrialDiverged, match=r"training loss is (nan|inf) at step \d+ .*lr 1e\+12"):
        run_trial(cfg)


def exploitation_gram_rank(model, x) -> tuple[int, int]:
    """Numerical rank of the Lemma-5 Gram (ZZᵀ)∘(S D² Sᵀ) (docs/paper-choices.md (D2)) for head 0, from scratch."""
    with torch.no_grad():
        z = model.features(x).double()
        zc = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)  # (n, m_{H−1})
        w_out = model.head.out_weight[0].double()  # D = diag(W^(H)_{0*})
        m_H = model.head.m_H
        r = model.head.gate_weight[:m_H].double(), model.head.gate_bias[:m_H].double()  # R^(0), frozen at θ^τ
        s = torch.sigmoid(model.head.gate_scale * (z @ r[0].T + r[1]))  # (n, m_H): σ̃(R z)
        gram = (zc @ zc.T) * ((s * w_out ** 2) @ s.T)  # (n, n)
        ev = torch.linalg.eigvalsh(gram)
        return int((ev > ev.max() * len(ev) * torch.finfo(torch.float64).eps).sum()), len(ev)


def test_full_rank_exploitation_features_let_lbfgs_reach_zero_training_error():
    """The theory (Lemma 5 / Thm 5): where the exploitation features at θ^τ have rank n, the convex
    exploitation problem reaches any output, so full-batch L-BFGS drives the training error to 0."""
    cfg = TrialConfig(
        data=DataConfig(name="sine", n_train=50),
        model=ModelConfig(fc_first_layer_std=1.0),  # kinks inside [−1, 1]: numerically full-rank features
        optim=OptimConfig(lr=0.1, momentum=0.98),
        ee=EEConfig(tau=50, tau_unit="steps", epsilon=0.01, gate_scale=10.0,
                    exploit_optim=OptimConfig(name="lbfgs", lbfgs_iters=50)),
        train=TrainConfig(epochs=100, batch_size=100, eval_every=10))
    sink = MemorySink(keep_checkpoints=("post_switch",))
    result = run_trial(cfg, sink)
    from eeray.trial import Trial

    at_tau = Trial(cfg, MemorySink())
    at_tau.load_state_dict(sink.checkpoints[0].state)
    assert exploitation_gram_rank(at_tau.model, at_tau.data.x_train) == (50, 50)
    steps = sink.frame("steps")
    assert steps[steps.phase == "explore"].train_error.iloc[-1] > 0.2  # exploration alone did not fit the data
    assert result.summary["final_train_error"] == 0.0


def test_gd_at_inverse_lipschitz_never_increases_the_exploitation_loss():
    """Theorem 5(i): with the gate frozen the exploitation problem is convex and L̂-smooth (Lemma 8), so GD with
    α = 1/L̂ (docs/paper-choices.md (D4)) decreases L̂ at every step."""
    cfg = TrialConfig(
        data=DataConfig(name="sine", n_train=50),
        model=ModelConfig(fc_first_layer_std=1.0),
        optim=OptimConfig(lr=0.1, momentum=0.98),
        ee=EEConfig(tau=50, tau_unit="steps", epsilon=0.01, gate_scale=10.0,
                    exploit_optim=OptimConfig(name="sgd", lr_rule="inverse_lipschitz")),
        train=TrainConfig(epochs=150, batch_size=100, eval_every=1, eval_unit="steps"))  # full batch: GD
    sink = MemorySink()
    result = run_trial(cfg, sink)
    exploit = sink.frame("steps")
    exploit = exploit[exploit.phase == "exploit"]
    losses = exploit.train_loss.to_numpy()
    assert len(losses) == 101 and losses[-1] < losses[0] - 0.01  # it makes progress (1/L̂ is a cautious step) ...
    increases = losses[1:] - losses[:-1]
    assert (increases <= 1e-12 * losses[:-1]).all(), increases.max()  # ... and never goes up
    from eeray.diagnostics import lipschitz_hat

    lr = exploit.lr.iloc[0]
    # L̂ depends only on what exploitation freezes (z, the gate, W^(H)): the same at θ^τ and at the end
    assert lr == pytest.approx(1 / lipschitz_hat(result.model, result.data.x_train, "bce"), rel=1e-9)


def test_assumption4_recalibrates_bn_on_a_copy_and_trains_exactly_as_without():
    base = dict(data=DataConfig(name="digits16", n_train=128, n_test=32),
                model=ModelConfig(arch="preact_resnet18"), optim=OptimConfig(lr=0.05, momentum=0.9),
                ee=EEConfig(m_H_factor=2.0, tau=0.5), train=TrainConfig(epochs=2, batch_size=64))
    sink = MemorySink()
    with_cert = run_trial(TrialConfig(**base, diag=DiagConfig(assumption4=True, lemma5=False)), sink)
    plain = run_trial(TrialConfig(**base, diag=DiagConfig(lemma5=False)))
    a, b = with_cert.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # BN running statistics included: diagnostics use a copy
    (row,) = sink.rows["safety"]
    assert row["kind"] == "assumption4" and row["note"].startswith("BN statistics: recalibrate")
    assert row["n"] == 128 and isinstance(with_cert.summary["assumption4_certified"], bool)


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_exploitation_reads_the_features_cached_at_the_switch(monkeypatch, augment):
    """With the backbone frozen in eval mode, z̄(x) is fixed from the switch on: the backbone runs once over the
    training and test sets there, and exploitation steps (unless the inputs are augmented) and evaluations run
    the head alone. The trajectory is the one the backbone path gives, to rounding."""
    from eeray import trial as trial_mod

    cfg = lenet_cfg(tau=0.5).replace(**{"data.name": "digits16", "data.augment": augment,
                                          "diag.lemma5": False})  # Lemma 5 runs it too
    calls = {"explore": 0, "exploit": 0}
    real_init = trial_mod.Trial.__init__

    def counting_init(self, *a, **k):
        real_init(self, *a, **k)
        self.model.body.register_forward_hook(lambda *_: calls.__setitem__(
            self.wrapper.phase.value, calls[self.wrapper.phase.value] + 1))

    monkeypatch.setattr(trial_mod.Trial, "__init__", counting_init)
    cached = run_trial(cfg, MemorySink())
    spe, chunks = 3, 2  # 48 / 16 steps per epoch; one eval-batch chunk each for train (48) and test (16)
    exploit_steps = cached.summary["total_steps"] - cached.summary["tau_step"]
    assert exploit_steps == 2 * spe
    assert calls["exploit"] == chunks + (exploit_steps if augment else 0)

    monkeypatch.setattr(trial_mod.Trial, "_frozen_features", lambda self: None)  # the backbone path
    plain = run_trial(cfg, MemorySink())
    for k in ("final_train_loss", "final_test_loss"):
        assert cached.summary[k] == pytest.approx(plain.summary[k], rel=1e-5, abs=1e-7)
    assert cached.summary["final_train_error"] == plain.summary["final_train_error"]
    a, b = _final_params(cached), _final_params(plain)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
