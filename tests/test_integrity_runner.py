"""The Parquet record is exactly what ran, whatever happens around the study: an edited study file, MLflow
unreachable or lost, kills of the driver at named instants, a second driver, Ctrl-C, a dangerous --fresh.

Every test drives the real CLI (``python tests/studies/integrity_study.py``) on a real local Ray with a real
MLflow store (SQLite, or a real ``mlflow server``), and compares with one undisturbed reference run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (ROOT, assert_mlflow_mirrors_parquet, free_port, mlflow_server, run_study, smoke_stderr,
                      study_argv, wait_for)
from mlflow.tracking import MlflowClient

from eeray.results import load

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STUDY = "tests/studies/integrity_study.py"
TIMING = ("explore_seconds", "exploit_seconds", "eval_seconds")


def comparable(results_dir, study="integrity"):
    """Trial name -> final metrics; every step row with the trial id replaced by its name, timings dropped."""
    res = load(results_dir, study)
    names = res.trials.set_index("trial_id").trial_name
    steps = res.steps.drop(columns=[*TIMING, "study"])
    steps = steps.assign(trial_id=steps.trial_id.map(names)).sort_values(["trial_id", "step", "phase"])
    finals = res.trials.set_index("trial_name")[["status", "attempts", "final_train_loss", "final_train_error"]]
    return finals.drop(columns="attempts").sort_index(), steps.reset_index(drop=True)


def assert_same_record(results_dir, reference):
    res = load(results_dir, "integrity")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    assert not res.trials.trial_name.duplicated().any()
    got, want = comparable(results_dir), comparable(reference)
    assert got[0].equals(want[0]), (got[0], want[0])
    assert got[1].equals(want[1])


@pytest.fixture(scope="module")
def reference(smoke):
    """The integrity study's --smoke run, undisturbed (shared with tests/test_faults.py: read only, copied before
    anything is done to it)."""
    path, stdout = smoke(STUDY)
    assert "2 trials (2 completed, 0 failed)" in stdout  # exit 0: every trial completed
    return path


def test_progress_counts_trials_by_state_with_an_eta_and_names_only_eerays_locations(reference, smoke):
    printed = smoke(STUDY)[1] + smoke_stderr(reference)
    line = next(l for l in printed.splitlines() if l.startswith("[integrity]") and "pending" in l)
    assert all(w in line for w in ("completed,", "running,", "pending,", "failed of 2;", "elapsed", "ETA")), line
    assert "ray_results" not in printed and "Result logdir" not in printed and "Tuner.restore" not in printed
    assert "Failed to fetch metrics" not in printed  # Tune's warning about the result files eeray turns off
    assert f"Parquet: {reference / 'integrity'}" in printed


def _popen(results_dir, *args, env=None):
    cmd = study_argv(STUDY, results_dir, "--smoke", *args)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def _has_chunks(results_dir):
    steps = Path(results_dir) / "integrity" / "steps"
    return lambda: steps.exists() and any(steps.rglob("*.parquet"))


def _end_group(proc):
    """End what a driver left (its local Ray) by its process group: the processes this test started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


# --------------------------------------------------------------------------- the recorded config
def test_every_trial_records_the_learning_rate_it_trained_with(reference):
    res = load(reference, "integrity")
    client = MlflowClient(f"sqlite:///{reference / 'mlflow.db'}")
    exp = client.get_experiment_by_name("integrity")
    runs = {r.data.tags["eeray.trial_id"]: r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("mlflow.parentRunId")}
    for trial in res.trials.itertuples():
        lrs = set(res.steps[res.steps.trial_id == trial.trial_id].lr.dropna())
        cfg_lr = res.trials.set_index("trial_id").loc[trial.trial_id, "cfg.optim.lr"]
        assert lrs == {cfg_lr} == {float(runs[trial.trial_id].data.params["optim.lr"])}
    assert_mlflow_mirrors_parquet(reference, "integrity")


# --------------------------------------------------------------------------- edits between runs
def test_resume_after_an_edit_is_refused_with_the_difference_and_extend_runs_only_the_new_trials(reference, tmp_path):
    copy = tmp_path / "copied"  # a results directory copied elsewhere resumes where it is
    shutil.copytree(reference, copy)
    exec_file = copy / "integrity" / "execution.json"
    before = exec_file.read_bytes()

    out = run_study(STUDY, copy, "--resume", env={"EERAY_TEST_SEEDS": "0,1,2"}, expect=2)
    assert "trials added (1): 'ee seed=2'" in out.stderr and "--extend" in out.stderr
    out = run_study(STUDY, copy, "--resume", env={"EERAY_TEST_LR": "0.02"}, expect=2)
    assert "trial 'ee seed=0' changed: optim.lr: 0.05 -> 0.02" in out.stderr
    assert "--extend" not in out.stderr  # only added trials can be extended
    out = run_study(STUDY, copy, "--resume", "--profile", "laptop", expect=2)
    assert "profile: recorded 'smoke', now 'laptop'" in out.stderr
    out = run_study(STUDY, copy, "--extend", env={"EERAY_TEST_SEEDS": "0,1,2", "EERAY_TEST_LR": "0.02"}, expect=2)
    assert "optim.lr: 0.05 -> 0.02" in out.stderr  # a changed trial refuses --extend too
    assert exec_file.read_bytes() == before  # refusals write nothing

    kept = {p: p.read_bytes() for p in (copy / "integrity" / "trials").rglob("*.parquet")}
    out = run_study(STUDY, copy, "--extend", env={"EERAY_TEST_SEEDS": "0,1,2"})
    assert "1 trial(s) added" in out.stdout
    res = load(copy, "integrity")
    assert sorted(res.trials.trial_name) == ["ee seed=0", "ee seed=1", "ee seed=2"]
    assert all(p.read_bytes() == b for p, b in kept.items())  # the recorded trials are kept as they are
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    new = res.trials[res.trials.trial_name == "ee seed=2"].iloc[0]
    assert new.status == "completed" and new.attempts == 1
    meta = json.loads(exec_file.read_text())
    assert meta["storage"] == "_tune" and [s["name"] for s in meta["segments"]] == ["tune", "tune-ext1"]
    assert (copy / "integrity" / "_tune" / "tune-ext1").is_dir()
    assert not (reference / "integrity" / "_tune" / "tune-ext1").exists()  # nothing written into the original
    assert_mlflow_mirrors_parquet(copy, "integrity")


# --------------------------------------------------------------------------- MLflow is a mirror
def test_mlflow_unreachable_from_the_start_then_sync_builds_the_mirror(reference, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = run_study(STUDY, tmp_path, "--smoke", env={"MLFLOW_TRACKING_URI": uri})
    assert out.stderr.count("MLflow mirror off") == 1 and "python -m eeray.mlflow_sync" in out.stderr
    assert "MLflow:  INCOMPLETE" in out.stdout
    assert_same_record(tmp_path, reference)
    db = f"sqlite:///{tmp_path / 'synced.db'}"
    sync = [sys.executable, "-m", "eeray.mlflow_sync", str(tmp_path), "--study", "integrity", "--tracking-uri", db]
    first = subprocess.run(sync, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr
    assert_mlflow_mirrors_parquet(tmp_path, "integrity", db)
    again = subprocess.run(sync, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "0 metric points added" in again.stdout  # idempotent


def test_mlflow_server_killed_mid_study_then_sync_completes_the_mirror(reference, tmp_path):
    db = tmp_path / "server.db"
    with mlflow_server(f"sqlite:///{db}", tmp_path) as server:
        results = tmp_path / "results"
        proc = _popen(results, env={"MLFLOW_TRACKING_URI": server.url})
        wait_for(_has_chunks(results), 240, "the first Parquet chunk")
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server dies mid-study
        server.proc.wait(timeout=30)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        assert stderr.count("MLflow mirror off") == 1
    assert_same_record(results, reference)
    sync = subprocess.run([sys.executable, "-m", "eeray.mlflow_sync", str(results), "--study", "integrity",
                           "--tracking-uri", f"sqlite:///{db}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert sync.returncode == 0, sync.stderr
    assert_mlflow_mirrors_parquet(results, "integrity", f"sqlite:///{db}")


# --------------------------------------------------------------------------- kills at named instants
# one execution killed six times, at six different instants, each followed by --resume; tune_state:40 falls
# mid-study when Tune saves its experiment state at every step of its loop (TUNE_GLOBAL_CHECKPOINT_S=0: about a
# hundred uploads in a smoke run; eeray's default saves every >= 10 s, which this short study never reaches before
# its final save; tests/test_scale_resume.py kills a study whose Tune state lags the record)
KILL_PLAN = ("tune_state:40", "parquet_chunk:3", "mlflow_batch:5", "trial_row:1", "mlflow_finish:1", "study_end:1")


def test_kills_at_six_instants_each_followed_by_resume_and_sync(reference, tmp_path):
    for i, point in enumerate(KILL_PLAN):
        every_step = {"TUNE_GLOBAL_CHECKPOINT_S": "0"} if point.startswith("tune_state") else {}
        proc = _popen(tmp_path, *(["--resume"] if i else []), env={"EERAY_KILL_AT": point, **every_step})
        stdout, stderr = proc.communicate(timeout=600)
        _end_group(proc)
        assert proc.returncode == -signal.SIGKILL, \
            f"{point}: the driver was not killed there (exit {proc.returncode})\n{stdout[-2000:]}\n{stderr[-3000:]}"
    out = run_study(STUDY, tmp_path, "--smoke", "--resume")
    assert "2 trials (2 completed, 0 failed)" in out.stdout
    assert_same_record(tmp_path, reference)
    sync = subprocess.run([sys.executable, "-m", "eeray.mlflow_sync", str(tmp_path), "--study", "integrity"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert sync.returncode == 0, sync.stderr
    assert_mlflow_mirrors_parquet(tmp_path, "integrity")


def test_a_tune_state_cut_short_by_something_else_is_refused_before_ray_starts_and_changes_nothing(reference, tmp_path):
    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    state = max((tmp_path / "integrity" / "_tune" / "tune").glob("experiment_state-*.json"))
    state.write_text(state.read_text()[:100])  # as a full disk would leave it
    before = {p: p.read_bytes() for p in (tmp_path / "integrity").rglob("*.parquet")}
    out = run_study(STUDY, tmp_path, "--smoke", "--resume", expect=2)
    assert f"{state.name} is unreadable" in out.stderr and "--fresh" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "Ray" not in out.stdout
    assert {p: p.read_bytes() for p in (tmp_path / "integrity").rglob("*.parquet")} == before


# --------------------------------------------------------------------------- one driver per directory
def test_a_second_driver_is_refused_while_the_first_is_live_and_accepted_after_it_was_killed(reference, tmp_path):
    first = _popen(tmp_path)
    try:
        lock = tmp_path / "integrity" / ".eeray.lock"
        wait_for(lambda: lock.exists() and str(first.pid) in lock.read_text(), 240, "the first driver's lock")
        wait_for(_has_chunks(tmp_path), 240, "the first Parquet chunk")  # mid-study: it leaves work to resume
        os.kill(first.pid, signal.SIGSTOP)  # live, its lock held, however long the three refusals take
        for flags in (["--resume"], ["--fresh"], []):
            out = run_study(STUDY, tmp_path, "--smoke", *flags, expect=2)
            assert "is live" in out.stderr and f"pid {first.pid}" in out.stderr, out.stderr
            assert "--fresh" not in out.stderr  # never suggested while a run is live
        assert (tmp_path / "integrity" / "execution.json").is_file()  # --fresh deleted nothing
    finally:
        _end_group(first)  # SIGKILL: the lock is released by the kernel
    out = run_study(STUDY, tmp_path, "--smoke", "--resume")
    assert "2 trials (2 completed, 0 failed)" in out.stdout
    assert_same_record(tmp_path, reference)


# --------------------------------------------------------------------------- outcomes
# Ctrl-C; what `timeout`, Slurm, Kubernetes, `docker stop` and `ray job stop` send; a closed terminal
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_or_a_termination_signal_exits_130_closes_every_run_and_prints_eerays_resume_command(reference,
                                                                                                    tmp_path, sig):
    proc = _popen(tmp_path, "--max-concurrent", "1")
    wait_for(_has_chunks(tmp_path), 240, "the first Parquet chunk")
    os.kill(proc.pid, sig)  # reaches the driver
    stdout, stderr = proc.communicate(timeout=300)
    _end_group(proc)
    assert proc.returncode == 130, (stdout[-3000:], stderr[-3000:])
    counts = next(l for l in stdout.splitlines() if l.startswith("integrity: 2 trials ("))
    assert "interrupted, " in counts and "never ran)" in counts, stdout[-3000:]
    assert "Continue with:" in stdout and "--max-concurrent 1 --resume" in stdout, stdout[-3000:]
    assert "Tuner.restore" not in stdout + stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("integrity").experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    assert next(r for r in runs if r.data.tags.get("eeray.role") == "parent").info.status == "KILLED"
    out = run_study(STUDY, tmp_path, "--smoke", "--max-concurrent", "1", "--resume")
    assert "2 trials (2 completed, 0 failed)" in out.stdout
    assert_same_record(tmp_path, reference)
    assert_mlflow_mirrors_parquet(tmp_path, "integrity")


@pytest.mark.parametrize("name", ["", "..", "a/b", "/tmp"])
def test_fresh_with_an_unsafe_study_name_is_refused_and_deletes_nothing(tmp_path, name):
    other = tmp_path / "other_study"
    other.mkdir()
    (other / "keep.parquet").write_bytes(b"x")
    (tmp_path / "mlflow.db").write_bytes(b"y")
    out = run_study(STUDY, tmp_path, "--smoke", "--fresh", env={"EERAY_TEST_STUDY": name}, expect=2)
    assert "error:" in out.stderr and "Traceback" not in out.stderr
    assert (other / "keep.parquet").read_bytes() == b"x" and (tmp_path / "mlflow.db").read_bytes() == b"y"
    assert tmp_path.is_dir() and tmp_path.parent.is_dir()


def test_fresh_refuses_a_directory_eeray_did_not_create(tmp_path):
    mine = tmp_path / "integrity"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    out = run_study(STUDY, tmp_path, "--smoke", "--fresh", expect=2)
    assert "not created by eeray" in out.stderr and (mine / "thesis.tex").read_text() == "years of work"
