"""Studies end to end through the real CLI on a real Ray (the test session's head): Parquet, MLflow (client and a real
server's REST API), the other studies' smoke runs, a failing trial, and kill-and-resume with exactly-once rows."""
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_study, study_argv
from mlflow.tracking import MlflowClient

from eeray.results import load

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TIMING = ("explore_seconds", "exploit_seconds", "eval_seconds", "diag_seconds", "seconds_gram", "seconds_decision",
          "seconds_second_test", "seconds_total")


def mlflow_runs(results_dir: Path, experiment: str):
    client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, exp, client.search_runs([exp.experiment_id], max_results=1000)


def test_width_sweep_smoke_writes_every_table(width_smoke):
    results_dir, stdout = width_smoke
    assert "profile smoke (--smoke)" in stdout and "12 trials (12 completed, 0 failed)" in stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{results_dir / 'mlflow.db'} --host 127.0.0.1" in stdout
    res = load(results_dir, "width_sweep")
    assert len(res.trials) == 12 and set(res.trials.status) == {"completed"}
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    per_trial = res.steps.groupby("trial_id").step.max()
    assert (per_trial == res.trials.set_index("trial_id").total_steps).all()  # every trial reached its last step
    diag = res.diagnostics
    assert set(diag.trial_id) == set(res.trials.trial_id)
    assert (diag.groupby("trial_id").size() == 4).all()  # per epoch, 3 epochs: steps 0, e1, e2, e3
    last = diag.sort_values("step").groupby("trial_id").last()
    assert (last.q_t == res.trials.set_index("trial_id").final_Q_T).all()
    assert set(res.safety.kind) == {"lemma5"}  # one row per head at θ^τ for each EE trial
    ee = res.trials[res.trials["cfg.ee.enabled"]]
    assert set(res.safety.trial_id) == set(ee.trial_id)
    import math

    expected = [math.ceil(c * 600 / m) for c, m in zip(ee["cfg.ee.m_H_factor"], ee.m_H_minus_1)]  # ⌈c·n/m_{H−1}⌉
    assert list(ee.m_H) == expected and set(ee.m_H_minus_1) == {513, 1025}


def test_mlflow_parent_and_child_runs_through_the_client(width_smoke):
    results_dir, _ = width_smoke
    client, exp, runs = mlflow_runs(results_dir, "width_sweep")
    parents = [r for r in runs if r.data.tags.get("eeray.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 12
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    # every run names its study, its execution and its role (the UI's filters and eeray's view select by them)
    execution = json.loads((results_dir / "width_sweep" / "execution.json").read_text())["execution"]
    assert {(r.data.tags["eeray.study"], r.data.tags["eeray.execution"]) for r in runs} == {("width_sweep", execution)}
    assert sorted(r.data.tags["eeray.role"] for r in runs) == ["parent"] + ["trial"] * 12
    assert {r.info.status for r in runs} == {"FINISHED"}
    names = sorted(c.info.run_name for c in children)
    assert "standard data=random16 m_c=1 seed=0" in names and len(set(names)) == 12
    child = next(c for c in children if c.info.run_name == "ee c=2 data=digits16 m_c=2 seed=0")
    assert child.data.params["model.lenet_mc"] == "2" and child.data.params["ee.m_H_factor"] == "2.0"
    assert child.data.tags["eeray.dataset"] == "digits16" and "eeray.phase_switch_step" in child.data.tags
    assert child.data.tags["mlflow.source.git.commit"]
    history = client.get_metric_history(child.info.run_id, "train_error")
    steps = sorted(m.step for m in history)
    res = load(results_dir, "width_sweep")
    trial = res.trials[res.trials.trial_name == child.info.run_name].iloc[0]
    expected = res.steps[res.steps.trial_id == trial.trial_id].step.tolist()
    assert steps == sorted(set(expected))  # step = optimizer step; one point per step (τ: the exploration row)
    diag_steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "diag_q_t"))
    assert diag_steps == sorted(res.diagnostics[res.diagnostics.trial_id == trial.trial_id].step)
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"config.json", "summary.json"} <= artifacts


def test_mlflow_server_rest_api_lists_parent_and_children(width_mlflow_server):
    base = width_mlflow_server

    def post(path, body):
        req = urllib.request.Request(f"{base}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(req, timeout=10))

    exp = json.load(urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                                           f"experiment_name=width_sweep", timeout=10))["experiment"]
    runs = post("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs["runs"]]
    parent = [t for t in tags if t.get("eeray.role") == "parent"]
    assert len(parent) == 1 and sum("mlflow.parentRunId" in t for t in tags) == 12


@pytest.mark.parametrize("study", ["sine_wave", "optimizer_sweep", "safe_exploration"])
def test_every_study_smoke_runs_end_to_end(study, smoke):
    results_dir, stdout = smoke(study)
    res = load(results_dir, study)
    assert len(res.trials) > 0 and set(res.trials.status) == {"completed"}, stdout[-2000:]
    assert len(res.steps) > 0
    _, _, runs = mlflow_runs(results_dir, study)
    assert {r.info.status for r in runs} == {"FINISHED"}
    if study in ("sine_wave", "safe_exploration"):
        assert (results_dir / study / "summary.csv").is_file()


# --------------------------------------------------------------------------- failure, kill and resume
TINY = "tests/studies/tiny_study.py"


def _comparable(res):
    """Trial name -> final metrics; (trial name, step, phase) -> metrics, timings dropped."""
    names = res.trials.set_index("trial_id").trial_name
    steps = res.steps.drop(columns=[c for c in TIMING if c in res.steps.columns] + ["study"])
    steps = steps.assign(trial_id=steps.trial_id.map(names)).sort_values(["trial_id", "step", "phase"])
    finals = res.trials.set_index("trial_name")[["status", "final_train_loss", "final_train_error"]].sort_index()
    return finals, steps.reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny study run once, uninterrupted (exit 3: its diverging trial fails): (results_dir, stdout). The
    diverging-trial test reads it, and the kill test compares its killed-and-resumed run with it."""
    path = tmp_path_factory.mktemp("tiny_reference")
    return path, run_study(TINY, path, expect=3).stdout


def test_kill_mid_study_then_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    reference, _ = tiny
    ref_finals, ref_steps = _comparable(load(reference, "tiny"))

    killed = tmp_path / "killed"
    cmd = study_argv(TINY, killed)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own session: the driver and the Ray it starts
    steps_dir = killed / "tiny" / "steps"
    deadline = time.time() + 180
    while time.time() < deadline and not (steps_dir.exists() and any(steps_dir.rglob("*.parquet"))):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-study, without any cleanup
    proc.wait(timeout=30)  # dead: what it wrote is on disk (every file whole or absent), nothing to wait for
    partial = load(killed, "tiny")
    assert len(partial.steps) > 0 and (partial.trials.status == "completed").sum() < 3  # really mid-study

    out = run_study(TINY, killed, "--resume", expect=3)
    res = load(killed, "tiny")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()  # each (trial, step) row exactly once
    finals, steps = _comparable(res)
    assert finals.equals(ref_finals), (finals, ref_finals)
    assert steps.equals(ref_steps)
    client, exp, runs = mlflow_runs(killed, "tiny")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(c.info.run_name for c in children) == sorted(ref_finals.index)  # no duplicate child runs
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]
    assert len([r for r in runs if r.data.tags.get("eeray.role") == "parent"]) == 1
    assert "trials (3 completed, 1 failed)" in out.stdout


def test_a_diverging_trial_is_recorded_as_failed_and_the_study_completes(tiny):
    results_dir, stdout = tiny  # exit 3 (checked by the fixture): the study ran to its end, some trials failed
    res = load(results_dir, "tiny")
    failed = res.trials[res.trials.status == "failed"]
    assert list(failed.trial_name) == ["diverge"] and (res.trials.status == "completed").sum() == 3
    assert failed.attempts.iloc[0] == 1  # final at once: a retry would diverge again (max_failures = 1)
    assert "training loss is" in failed.failure_reason.iloc[0] and "lr 1e+12" in failed.failure_reason.iloc[0]
    client, exp, runs = mlflow_runs(results_dir, "tiny")
    run = next(r for r in runs if r.info.run_name == "diverge")
    assert run.info.status == "FAILED" and "training loss is" in run.data.tags["eeray.failure_reason"]
    assert "failed: diverge: training loss is" in stdout


def test_ee_vs_standard_smoke_runs_all_three_stages(smoke):
    results_dir, stdout = smoke("ee_vs_standard")
    certify = load(results_dir, "ee_vs_standard_certify")
    assert set(certify.safety.kind) == {"assumption4"} and certify.safety.certified.all()
    grid = load(results_dir, "ee_vs_standard_grid").trials
    assert (grid["cfg.data.val_fraction"] == 0.2).all() and set(grid.status) == {"completed"}
    final = load(results_dir, "ee_vs_standard").trials
    assert sorted(final.trial_name) == ["digits16 A(Standard) seed=0", "digits16 Standard seed=0"]
    ee = final[final["cfg.ee.enabled"]].iloc[0]
    chosen = grid.sort_values("final_test_error").iloc[0]  # the final stage uses the grid's argmin
    assert (ee["cfg.ee.epsilon"], ee["cfg.ee.tau"]) == (chosen["cfg.ee.epsilon"], chosen["cfg.ee.tau"])
    assert ee.exploit_seconds > 0 and final.explore_seconds.notna().all()  # wall-clock per phase (Table 5)


def test_optuna_tunes_the_learning_rate_within_each_width(tmp_path):
    out = run_study("tests/studies/tuned_study.py", tmp_path)
    trials = load(tmp_path, "tuned").trials
    # ASHA may stop a trial early (it depends on the order results arrive): such a trial is recorded as stopped
    assert len(trials) == 4 and set(trials.status) <= {"completed", "stopped"}, out.stdout[-2000:]
    assert (trials[trials.status == "stopped"].failure_reason == "stopped early by the scheduler").all()
    assert sorted(trials["cfg.model.lenet_mc"].value_counts().tolist()) == [2, 2]
    assert trials["cfg.optim.lr"].between(1e-3, 1e-1).all() and trials["cfg.optim.lr"].nunique() == 4
