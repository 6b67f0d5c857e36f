"""Branching on Ray Tune through the real CLI (``python tests/studies/branching_study.py``) on a real local Ray:
a branched study records exactly what the same study run with ``--no-branching`` records, each prefix stored
once; a branch's MLflow run shows its whole curve; a driver killed mid-tree resumes without re-running the trunk;
a trunk that fails before its branch points fails its branches with its reason.
"""
import json
import os
import subprocess

import pandas as pd
import pytest
from conftest import ROOT, assert_mlflow_mirrors_parquet, reap_killed, rows_of, run_study, same_rows, study_argv

from eeray.results import load

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STUDY = "tests/studies/branching_study.py"
TREE = {"ee eps=0.01 tau0=0.75": None,  # the trunk: the larger τ0, the first ε
        "ee eps=0.0001 tau0=0.75": 20, "ee eps=0.01 tau0=0.5": 12, "ee eps=0.0001 tau0=0.5": 12,
        "standard": None}  # the baseline trains the base model: not in the tree


def named(results_dir):
    """The tables as load() returns them, trial ids replaced by names; dropped: timings and what says how the run
    went rather than what it computed (attempts, nodes, the branch links, the rows each trial stored itself: a
    branch stores only its rows from its branch step), which the tests check by themselves."""
    res = load(results_dir, "branching")
    stored = load(results_dir, "branching", expand_branches=False)
    for table in ("steps", "diagnostics", "safety"):  # each trial's count is the rows it stored, prefix or not
        held = getattr(stored, table).groupby("trial_id").size()
        assert [held.get(t, 0) for t in res.trials.trial_id] == res.trials[f"{table}_rows"].tolist(), table
    names = res.trials.set_index("trial_id").trial_name
    trials = res.trials.drop(columns=[c for c in res.trials.columns if c.endswith("_seconds") or c in (
        "trial_id", "trunk_trial_id", "branch_step", "attempts", "attempt_nodes", "attempt_node_ids",
        "diag_actor_nodes", "attempt_errors", "git_commit", "node", "study", "steps_rows", "diagnostics_rows",
        "safety_rows")]).set_index("trial_name").sort_index()
    out = {"trials": trials}
    for table in ("steps", "diagnostics"):
        frame = getattr(res, table)
        frame = frame.drop(columns=[c for c in frame.columns if "seconds" in c or c == "study"])  # timings
        frame = frame.assign(trial_id=frame.trial_id.map(names))
        out[table] = frame.sort_values(["trial_id", "step", "phase"], kind="stable").reset_index(drop=True)
    return out


def assert_same_tables(got_dir, want_dir):
    got, want = named(got_dir), named(want_dir)
    for table in ("trials", "steps", "diagnostics"):
        g, w = got[table], want[table]
        assert list(g.columns) == list(w.columns), table
        assert len(g) == len(w) and len(g), (table, len(g), len(w))
        assert g.equals(w), (table, g.compare(w) if g.shape == w.shape else (g.shape, w.shape))


@pytest.fixture(scope="module")
def runs(smoke, tmp_path_factory):
    """The branching study's --smoke run (shared with tests/test_outside_readers.py: read only) and the same study
    run --no-branching."""
    branched, stdout = smoke(STUDY)
    scratch = tmp_path_factory.mktemp("scratch")
    assert "5 trials (5 completed, 0 failed)" in stdout
    assert "branching: 1 trunk(s) explore once for 3 branch(es)" in stdout
    out = run_study(STUDY, scratch, "--smoke", "--no-branching")
    assert "5 trials (5 completed, 0 failed)" in out.stdout and "explore once" not in out.stdout
    return branched, scratch


def test_a_branched_study_records_what_the_study_records_from_scratch(runs):
    branched, scratch = runs
    assert_same_tables(branched, scratch)
    trials = load(branched, "branching").trials.set_index("trial_name")
    trunk = trials.loc["ee eps=0.01 tau0=0.75", "trial_id"]
    for name, step in TREE.items():
        if step is None:
            assert pd.isna(trials.loc[name, "trunk_trial_id"]) and pd.isna(trials.loc[name, "branch_step"]), name
        else:
            assert trials.loc[name, "trunk_trial_id"] == trunk and trials.loc[name, "branch_step"] == step, name
    assert load(scratch, "branching").trials.trunk_trial_id.isna().all()
    # stored once: a branch's own files start at its branch step, the prefix is the trunk's alone
    stored = load(branched, "branching", expand_branches=False)
    ids = trials.trial_id
    for table in ("steps", "diagnostics"):
        frame = getattr(stored, table)
        for name, step in TREE.items():
            rows = frame[frame.trial_id == ids[name]]
            assert len(rows), (table, name)
            if step is not None:
                assert rows.step.min() >= step, (table, name)
        assert len(getattr(load(branched, "branching"), table)) > len(frame)  # the prefixes, expanded
    assert not stored.steps.duplicated(["trial_id", "step", "phase"]).any()
    # the states are deleted once every branch at their step has its row
    states = branched / "branching" / "_tune" / "branch_states"
    assert states.is_dir() and not list(states.rglob("*.pt"))


def test_the_mlflow_run_of_a_branch_shows_its_whole_curve(runs):
    branched, _ = runs
    client, runs = assert_mlflow_mirrors_parquet(branched, "branching")  # every point of load()'s expanded rows, once
    res = load(branched, "branching")
    run = next(r for r in runs if r.data.tags.get("mlflow.runName") == "ee eps=0.0001 tau0=0.5")
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert min(steps) == 0 and 12 in steps and max(steps) == int(res.trials.total_steps.max())


def test_resume_with_the_other_branching_setting_is_refused(runs):
    branched, _ = runs
    out = run_study(STUDY, branched, "--smoke", "--resume", "--no-branching", expect=2)
    assert "study.branching: recorded True, now False" in out.stderr


def _popen(results_dir, *args, env=None):
    cmd = study_argv(STUDY, results_dir, "--smoke", *args)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def test_a_driver_killed_mid_tree_resumes_without_rerunning_the_trunk(runs, tmp_path):
    _, scratch = runs
    # one trial at a time: the trunk, then the Standard baseline, then a branch — killed once that branch's row
    # is written, the trunk's states for the two branches still waiting on disk
    proc = _popen(tmp_path, "--max-concurrent", "1", env={"EERAY_KILL_AT": "trial_row:3"})
    reap_killed(proc)
    done = load(tmp_path, "branching").trials
    assert len(done) == 3 and "ee eps=0.01 tau0=0.75" in set(done.trial_name)
    trunk = done.set_index("trial_name").loc["ee eps=0.01 tau0=0.75", "trial_id"]
    states = list((tmp_path / "branching" / "_tune" / "branch_states").rglob("*.pt"))
    assert states, "the states the waiting branches need"
    trunk_rows = rows_of(tmp_path, "branching", trunk)
    assert len(trunk_rows["trials"]) == 1 and len(trunk_rows["steps"])
    out = run_study(STUDY, tmp_path, "--smoke", "--max-concurrent", "1", "--resume")
    assert "5 trials (5 completed, 0 failed)" in out.stdout
    # the trunk was not run again: its rows are the ones the first driver wrote, timings included (the resume
    # compacts them into partition files, so compare rows, not files)
    assert same_rows(rows_of(tmp_path, "branching", trunk), trunk_rows)
    res = load(tmp_path, "branching")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    assert not res.trials.trial_name.duplicated().any()
    # the trunk ran once; a trial the lost driver had begun counts that attempt (docs/results-schema.md)
    continued = res.trials[res.trials.attempts == 2]
    assert (res.trials.attempts <= 2).all() and trunk not in set(continued.trial_id)
    assert all(json.loads(e) == ["the driver was lost; continued with --resume"] for e in continued.attempt_errors)
    assert_same_tables(tmp_path, scratch)
    assert not list((tmp_path / "branching" / "_tune" / "branch_states").rglob("*.pt"))
    assert_mlflow_mirrors_parquet(tmp_path, "branching")


def test_a_trunk_that_fails_before_its_branch_points_fails_its_branches_with_its_reason(tmp_path):
    out = run_study(STUDY, tmp_path, "--smoke", env={"EERAY_TEST_LR": "1e12"}, expect=3)
    trials = load(tmp_path, "branching").trials.set_index("trial_name")
    assert (trials.status == "failed").all()
    trunk_reason = trials.loc["ee eps=0.01 tau0=0.75", "failure_reason"]
    assert "diverged" in trunk_reason.lower() or "nan" in trunk_reason.lower(), trunk_reason
    for name, step in TREE.items():
        if step is not None:
            reason = trials.loc[name, "failure_reason"]
            assert reason.startswith(f"its trunk 'ee eps=0.01 tau0=0.75' failed before branch step {step}: "), reason
            assert trunk_reason.splitlines()[0] in reason
            assert pd.isna(trials.loc[name, "trunk_trial_id"])
    assert "failed: ee eps=0.0001 tau0=0.5: its trunk" in out.stdout
