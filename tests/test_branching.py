"""Branching: every config field has a declared role, trees form from configs, and a branch run from its trunk's
branch-point state is bitwise the run of its config from scratch (rows, summary, final parameters; CPU)."""
import dataclasses

import pytest
import torch

from eeray import branch_runner, branching
from eeray.branch_states import BranchStateStore
from eeray.branching import BRANCH_POINT, FIELD_ROLES, Tree, plan_trees, prefix_rows
from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig, to_flat
from eeray.records import RECORD_STREAMS as TABLES, MemorySink
from eeray.results import load
from eeray.trial import run_trial

STEPS_PER_EPOCH = 3  # n_train 48, batch 16


def cfg(diag: DiagConfig | None = None, seed: int = 5, **ee) -> TrialConfig:
    return TrialConfig(
        data=DataConfig(name="random16", n_train=48, n_test=16),
        model=ModelConfig(arch="lenet", lenet_mc=1, lenet_pool="avg2"),
        optim=OptimConfig(lr=0.05, momentum=0.9, weight_decay=1e-4),
        ee=EEConfig(**{"tau": 0.75, "epsilon": 1e-2, "m_H": 6, **ee}),
        # evaluation per epoch: a branch whose τ is mid-epoch evaluates at τ, its trunk does not
        train=TrainConfig(epochs=4, batch_size=16, eval_every=1, eval_unit="epochs"),
        diag=diag or DiagConfig(), seed=seed)


BRANCHES = {  # the trunk: τ0 = 0.75 (step 9), ε = 1e-2, G̃ = G
    "epsilon": dict(epsilon=1e-5),
    "tau0_0.5": dict(tau=0.5),
    "tau0_0.25_eps": dict(tau=0.25, epsilon=1e-3, perturb_seed=11),
    "sgd_lr": dict(tau=0.5, exploit_optim=OptimConfig(lr=0.2, momentum=0.5)),
    "lbfgs_fullbatch": dict(tau=0.5, exploit_optim=OptimConfig(name="lbfgs", lbfgs_iters=3)),
    "mid_epoch_tau": dict(tau=7, tau_unit="steps"),
    "literal_tau_minus_1": dict(tau=7, tau_unit="steps", perturb_base="tau_minus_1"),
    "literal_tau_minus_1_at_trunk_tau": dict(perturb_base="tau_minus_1", epsilon=1e-3),
    "train_backbone_no_reset": dict(tau=0.5, exploit_backbone_mode="train", reset_optimizer_state=False),
    "inverse_lipschitz_lr": dict(tau=0.5, exploit_optim=OptimConfig(lr_rule="inverse_lipschitz")),  # L̂ at θ^τ
}

DIAG = DiagConfig(alignment=True, every=1, unit="epochs", max_samples=16, assumption4=True)


def _strip(rows):
    """Wall-clock fields are the only ones allowed to differ."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def _params(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def _assert_same_run(rows_a, params_a, rows_b, params_b, what):
    for table in TABLES:
        assert _strip(rows_a[table]) == _strip(rows_b[table]), f"{what}: table {table}"
    assert params_a.keys() == params_b.keys()
    for k in params_a:
        assert torch.equal(params_a[k], params_b[k]), f"{what}: parameter {k}"


def _run_tree(trunk_cfg, branch_cfgs):
    """The trunk once, offering a state at every branch's step; then each branch from its state."""
    steps = {name: branching.branch_step(c, STEPS_PER_EPOCH) for name, c in branch_cfgs.items()}
    trunk_sink = MemorySink(keep_checkpoints=(BRANCH_POINT,))
    trunk = run_trial(trunk_cfg, trunk_sink, branch_points=set(steps.values()))
    states = {c.step: c for c in trunk_sink.checkpoints}
    assert sorted(states) == sorted(set(steps.values())) and all(c.reason == BRANCH_POINT for c in states.values())
    out = {}
    for name, c in branch_cfgs.items():
        kept = states[steps[name]]
        sink = MemorySink()
        result = run_trial(c, sink, branch_from=kept.state)
        prefix = prefix_rows(trunk_sink.rows, steps[name])
        # the prefix by step is exactly what the trunk had emitted when it offered the state
        assert {t: len(r) for t, r in prefix.items()} == {t: n for t, n in kept.emitted.items() if t != "summary"}
        history = {t: prefix.get(t, []) + sink.rows[t] for t in TABLES}
        out[name] = (history, _params(result), result, sink.rows, steps[name])
    return trunk_sink, trunk, out


@pytest.fixture(scope="module", params=[None, DIAG], ids=["plain", "diagnostics"])
def tree(request):
    diag = request.param
    branch_cfgs = {name: cfg(diag, **ee) for name, ee in BRANCHES.items()}
    # Lemma 5 is read at θ^τ only: branches may differ in it
    branch_cfgs["lemma5_off"] = cfg(dataclasses.replace(diag or DiagConfig(), lemma5=False), tau=0.5)
    return cfg(diag), branch_cfgs, _run_tree(cfg(diag), branch_cfgs)


def test_every_config_field_has_a_declared_branching_role():
    assert branching.undeclared_fields() == ([], [])
    assert set(FIELD_ROLES.values()) == {branching.EXPLORATION, branching.SWITCH}


def test_a_new_config_field_without_a_role_is_reported(monkeypatch):
    flat = to_flat(TrialConfig())
    monkeypatch.setattr(branching, "to_flat", lambda c: {**flat, "train.new_knob": 1})
    assert branching.undeclared_fields() == (["train.new_knob"], [])


def test_offering_branch_points_leaves_the_trunk_unchanged(tree):
    trunk_cfg, branch_cfgs, (trunk_sink, trunk, _) = tree
    alone = MemorySink()
    ref = run_trial(trunk_cfg, alone)
    _assert_same_run(trunk_sink.rows, _params(trunk), alone.rows, _params(ref), "trunk")


@pytest.mark.parametrize("name", [*BRANCHES, "lemma5_off"])
def test_a_branch_is_bitwise_its_config_run_from_scratch(tree, name):
    trunk_cfg, branch_cfgs, (_, _, branches) = tree
    history, params, result, own, step = branches[name]
    # the shared prefix (its evaluations, the alignment reports and Q_T before τ, Assumption 4 at step 0) was
    # computed by the trunk alone: the branch itself emitted nothing before its branch step
    assert all(r["step"] >= step for t in ("steps", "diagnostics", "safety") for r in own[t])
    assert not any(r["kind"] == "assumption4" for r in own["safety"])
    scratch = MemorySink()
    ref = run_trial(branch_cfgs[name], scratch)
    _assert_same_run(history, params, scratch.rows, _params(ref), name)
    strip = lambda s: {k: v for k, v in s.items() if "seconds" not in k}  # noqa: E731
    assert strip(result.summary) == strip(ref.summary)
    if trunk_cfg.diag.alignment:
        assert history["diagnostics"] and history["safety"]  # the diagnostics really ran, in prefix and branch


def test_branch_steps_and_trees():
    spe = STEPS_PER_EPOCH
    assert branching.branch_step(cfg(), spe) == 9
    assert branching.branch_step(cfg(perturb_base="tau_minus_1"), spe) == 8
    assert branching.branch_step(cfg(enabled=False), spe) is None
    grid = [cfg(enabled=False)] + [cfg(tau=t, epsilon=e) for e in (1e-3, 1e-5) for t in (0.25, 0.5, 0.75)] + \
        [cfg(seed=6), cfg(tau=0.0), cfg(DIAG, tau=0.5), cfg(DIAG)]
    trees = plan_trees(grid, [spe] * len(grid))
    assert trees == [Tree(0), Tree(3, {1: 3, 2: 6, 4: 3, 5: 6, 6: 9}), Tree(7), Tree(8), Tree(10, {9: 6})]
    assert trees[1].branch_points == (3, 6, 9) and sorted(m for t in trees for m in t.members) == list(range(11))


def test_a_branch_refuses_a_state_it_cannot_continue_from(tree):
    trunk_cfg, _, _ = tree
    sink = MemorySink(keep_checkpoints=(BRANCH_POINT, "pre_switch"))
    run_trial(trunk_cfg, sink, branch_points={6})
    point = next(c for c in sink.checkpoints if c.reason == BRANCH_POINT).state
    pre_switch = next(c for c in sink.checkpoints if c.reason == "pre_switch").state
    with pytest.raises(ValueError, match=r"exploration fields.*optim\.lr"):
        run_trial(dataclasses.replace(trunk_cfg.replace(**{"ee.tau": 0.5}), optim=OptimConfig(lr=0.1)),
                  branch_from=point)
    with pytest.raises(ValueError, match="state is at step 6, this branch leaves its trunk at step 3"):
        run_trial(trunk_cfg.replace(**{"ee.tau": 0.25}), branch_from=point)
    with pytest.raises(ValueError, match="not a branch point"):
        run_trial(trunk_cfg.replace(**{"ee.tau": 0.75, "ee.epsilon": 1e-5}), branch_from=pre_switch)
    with pytest.raises(ValueError, match=r"branch points \[10\] are invalid.*1\.\.9"):
        run_trial(trunk_cfg, branch_points={10})
    with pytest.raises(ValueError, match="Standard baseline has none"):
        run_trial(cfg(enabled=False), branch_points={3})


def test_a_trunk_resumes_from_its_own_branch_point(tree):
    """A branch-point state is also a resume point of the trunk itself (a driver killed mid-tree)."""
    trunk_cfg, _, (trunk_sink, trunk, _) = tree
    kept = next(c for c in trunk_sink.checkpoints if c.step == 6)
    sink = MemorySink()
    resumed = run_trial(trunk_cfg, sink, checkpoint=kept.state)
    rows = {t: trunk_sink.rows[t][:kept.emitted[t]] + sink.rows[t] for t in TABLES}
    _assert_same_run(rows, _params(resumed), trunk_sink.rows, _params(trunk), "trunk resumed")


SINE = TrialConfig(data=DataConfig(name="sine", n_train=40, n_test=20), model=ModelConfig(fc_width=32),
                  optim=OptimConfig(lr=0.1, momentum=0.9), ee=EEConfig(m_H=4, epsilon=1e-3),
                  train=TrainConfig(epochs=6, batch_size=10),  # 4 steps per epoch, 24 in all
                  diag=DiagConfig(alignment=True, every=1, unit="epochs", max_samples=20))


def test_parquet_stores_each_prefix_once_and_load_gives_every_history_whole(tmp_path):
    base = SINE
    configs = [base.replace(**{"ee.enabled": False})] + \
        [base.replace(**{"ee.tau": t, "ee.epsilon": e}) for t in (0.5, 0.75) for e in (1e-3, 1e-5)]
    names = ["Standard"] + [f"A tau0={t} eps={e:g}" for t in (0.5, 0.75) for e in (1e-3, 1e-5)]
    loaded = {}
    for way in ("scratch", "branched"):
        sinks = [MemorySink() for _ in configs]
        store = BranchStateStore(str(tmp_path / "states"))
        ran = branch_runner.run_branched(configs, lambda i: sinks[i], store=store, branched=way == "branched")
        assert not any(p.is_file() for p in (tmp_path / "states").rglob("*"))  # each state dropped once used
        branch_runner.write_results(str(tmp_path / way), "s", names, configs, ran, sinks)
        loaded[way] = (load(tmp_path / way, "s"), load(tmp_path / way, "s", expand_branches=False))
    (scratch, _), (branched, stored) = loaded["scratch"], loaded["branched"]
    t = branched.trials.set_index("trial_name")
    assert t["trunk_trial_id"].isna().sum() == 2  # the Standard baseline and the trunk
    assert t.loc["A tau0=0.5 eps=0.001", "trunk_trial_id"] == t.loc["A tau0=0.75 eps=0.001", "trial_id"]
    assert t.loc["A tau0=0.5 eps=0.001", "branch_step"] == 12 and t.loc["A tau0=0.75 eps=1e-05", "branch_step"] == 20  # round(4.5) = 5 epochs
    assert scratch.trials["trunk_trial_id"].isna().all()
    for table in ("steps", "diagnostics", "safety"):
        a, b = getattr(scratch, table), getattr(branched, table)
        keep = [c for c in a.columns if "seconds" not in c]
        assert len(b) == len(a) and len(a) > 0, table
        assert a[keep].equals(b[keep]), table
        # stored: no branch has a row before its branch step; each prefix is its trunk's alone
        s = getattr(stored, table).merge(stored.trials[["trial_id", "branch_step"]], on="trial_id")
        assert not (s["step"] < s["branch_step"]).any(), table
        assert len(s) < len(a) or table == "safety", table
    keep = [c for c in scratch.trials.columns if "seconds" not in c and c not in ("trunk_trial_id", "branch_step")]
    assert scratch.trials[keep].equals(branched.trials[keep])


def test_a_failed_trunk_fails_only_its_waiting_branches_and_a_failed_branch_only_itself(monkeypatch):
    from eeray.trial import Trial

    real = Trial._train_step

    def flaky(self):
        cell = (self.cfg.ee.tau, self.cfg.ee.epsilon)
        if (cell == (0.75, 1e-3) and self.step == 15) or (cell == (0.5, 1e-5) and self.step == 14):
            raise RuntimeError(f"lost at step {self.step}")
        return real(self)

    monkeypatch.setattr(Trial, "_train_step", flaky)
    configs = [SINE.replace(**{"ee.tau": t, "ee.epsilon": e}) for t in (0.5, 0.75) for e in (1e-3, 1e-5)]
    sinks = [MemorySink() for _ in configs]
    ran = branch_runner.run_branched(configs, lambda i: sinks[i])
    assert [r.trunk for r in ran] == [2, 2, None, 2] and [r.branch_step for r in ran] == [12, 12, None, 20]
    assert ran[2].error == "RuntimeError: lost at step 15" and ran[2].result is None  # the trunk, after step 12
    assert ran[1].error == "RuntimeError: lost at step 14"  # a branch of its own
    assert ran[3].error == "trunk (trial 2) failed before branch step 20: RuntimeError: lost at step 15"
    assert ran[3].steps_run == 0 and not any(sinks[3].rows.values())
    assert ran[0].error is None  # its state was offered before the trunk failed: it ran, and exactly
    monkeypatch.setattr(Trial, "_train_step", real)
    alone = MemorySink()
    ref = run_trial(configs[0], alone)
    history = {t: prefix_rows(sinks[2].rows, 12).get(t, []) + sinks[0].rows[t] for t in TABLES}
    _assert_same_run(history, _params(ran[0].result), alone.rows, _params(ref), "branch of a failed trunk")
