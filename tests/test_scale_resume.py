"""Tune saves its experiment state every few seconds, eeray's record is written at every event: a driver killed
in between leaves a Tune state that lags the record, and ``--resume`` must follow the record (every row exactly
once, no trial that completed runs again). The study is ``benchmarks/studies/trivial.py``; the killed run saves
Tune's state only when it starts (a save period of an hour), so the whole catch-up comes from the record."""
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, assert_mlflow_mirrors_parquet, run_study, study_argv

from eeray.results import load

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STUDY = "benchmarks/studies/trivial.py"
N = 30
ENV = {"EERAY_SCALE_TRIALS": str(N)}


def record(results_dir):
    """Trial name -> status; steps keyed by trial name (timings dropped)."""
    res = load(results_dir, "trivial")
    names = res.trials.set_index("trial_id").trial_name
    steps = res.steps.drop(columns=["explore_seconds", "exploit_seconds", "eval_seconds", "study"])
    steps = steps.assign(trial_id=steps.trial_id.map(names)).sort_values(["trial_id", "step", "phase"])
    return res.trials.set_index("trial_name").status.sort_index(), steps.reset_index(drop=True)


def test_a_kill_with_tunes_state_behind_the_record_then_resume_runs_each_trial_once(tmp_path):
    reference = tmp_path / "reference"
    run_study(STUDY, reference, "--smoke", env=ENV)

    killed = tmp_path / "killed"
    cmd = study_argv(STUDY, killed, "--smoke")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV, "EERAY_KILL_AT": "trial_row:12",
                                 "TUNE_GLOBAL_CHECKPOINT_S": "3600"}, start_new_session=True)
    proc.communicate(timeout=600)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the driver left (its local Ray)
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL
    before = set(load(killed, "trivial").trials.trial_name)
    assert len(before) == 12

    out = run_study(STUDY, killed, "--smoke", "--resume", env=ENV)
    assert "note: resume:" in out.stdout  # the record, not Tune's state, said what had ended
    again = set(re.findall(r"^\[trivial\] completed: (.+) \(train error", out.stdout, re.M))
    assert again and not again & before, sorted(again & before)  # nothing that had completed ran again
    assert f"{N} trials ({N} completed, 0 failed)" in out.stdout
    res = load(killed, "trivial")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    assert set(res.steps.trial_id) == set(res.trials.trial_id)  # no rows of a trial that ran again under a new id
    got, want = record(killed), record(reference)
    assert got[0].equals(want[0]) and got[1].equals(want[1])
    # the kill came between the 12th trial's row and its MLflow run's end: the sync completes the mirror
    sync = subprocess.run([sys.executable, "-m", "eeray.mlflow_sync", str(killed), "--study", "trivial"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert sync.returncode == 0, sync.stderr
    assert_mlflow_mirrors_parquet(killed, "trivial")
    assert_tune_keeps_no_rows(killed / "trivial" / "_tune" / "tune")


def assert_tune_keeps_no_rows(experiment):
    """Tune keeps every checkpoint of a trial with the metrics reported beside it, in its saved state (and the
    driver's memory): none of them may hold a chunk's rows or the flat config, which are in Parquet. An ended
    trial keeps no running statistics of its metrics either (callback._forget_reported_rows)."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    state = _loads_with_cloudpickle(max(experiment.glob("experiment_state-*.json")).read_text())
    checked = 0
    for trial, run_metadata in state["trial_data"]:
        metadata = _TrainingRunMetadata.from_json_state(run_metadata)
        assert _loads_with_cloudpickle(trial)["status"] == "TERMINATED"
        assert metadata.metric_analysis == {} and metadata.metric_n_steps == {}, sorted(metadata.metric_analysis)
        manager = metadata.checkpoint_manager
        for result in [*manager._checkpoint_results, manager._latest_checkpoint_result]:
            if result is not None:
                assert not {"rows", "config_flat"} & set(result.metrics), sorted(result.metrics)
                checked += 1
    assert checked >= N
