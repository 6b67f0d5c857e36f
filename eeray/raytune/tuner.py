"""Study → Ray Tune: the Tuner (grid, Optuna, scheduler, placement groups, storage, failures, checkpoints),
``--resume`` through ``Tuner.restore``, and the end-of-study summary. Imported only after validation."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from users' studies
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # Parquet is the record: no CSV/TBX copies
# checkpoints are bounded by design (every k epochs + the switch); the snapshot-frequency warning is not actionable
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table: concise, one line per trial
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.logger import JsonLoggerCallback  # noqa: E402

from eeray.raytune.callback import StudyCallback  # noqa: E402
from eeray.raytune.connect import ClusterError, connect  # noqa: E402
from eeray.results import load  # noqa: E402
from eeray.study import ALIASES, Study  # noqa: E402
from eeray.mlflow_mirror import default_tracking_uri, ui_command  # noqa: E402
from eeray.raytune.trainable import tune_trial  # noqa: E402

EXECUTION_FILE = "execution.json"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def make_tuner(study: Study, storage: str, callback: StudyCallback, max_concurrent: int | None) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(tune_trial, study=study),
                                    tune.PlacementGroupFactory(study.resources.bundles()))
    points = study.points()
    if study.search:
        from eeray.raytune.searchers import GridOptunaSearch

        search_alg = GridOptunaSearch(points, study.search, metric=study.metric, mode=study.mode,
                                      samples_per_point=study.samples_per_point, seed=study.base.seed)
        param_space, num_samples = {}, len(points) * study.samples_per_point
    else:  # exactly the study's points, in order; Tune's config is the point itself
        from eeray.raytune.searchers import PointsSearch

        search_alg = PointsSearch(points)
        param_space, num_samples = {}, len(points)
    scheduler = None
    if study.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=2)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            metric=study.metric if (study.search or scheduler) else None,
            mode=study.mode if (study.search or scheduler) else None,
            reuse_actors=True, max_concurrent_trials=max_concurrent,
            trial_name_creator=TrialNamer(study), trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name="tune", storage_path=storage, callbacks=[callback, JsonLoggerCallback()],  # JSON: Tune's own summary
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            verbose=1, progress_reporter=_reporter(study)),
    )


class TrialNamer:
    """Tune's trial names are the study's readable ones ("ee c=0.5 m_c=2 seed=1")."""

    def __init__(self, study: Study):
        self.study = study

    def __call__(self, trial) -> str:
        return self.study.trial_name(trial.config).replace("/", "_")[:120] or "trial"


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _reporter(study: Study):
    from ray.tune import CLIReporter

    # the trial name already spells out its grid values: show only metrics (and Optuna's picks)
    return CLIReporter(metric_columns={"epoch": "epoch", "phase": "phase", "train_error": "train err",
                                       "test_error": "test err", "Q_T": "Q_T"},
                       parameter_columns={k: ALIASES.get(k, k) for k in study.search} or {"variant": "variant"},
                       max_report_frequency=60, max_progress_rows=40, sort_by_metric=False)


def run_study(study: Study, profile: str, args) -> int:
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its schema-migration chatter
    results_dir = Path(args.results_dir).resolve()
    study_dir = results_dir / study.name
    exec_file = study_dir / EXECUTION_FILE
    storage = args.storage or str(study_dir / "_tune")
    if args.fresh and study_dir.exists():
        shutil.rmtree(study_dir)
    if exec_file.exists() and not args.resume:
        print(f"error: {study_dir} holds an earlier execution of '{study.name}'; pass --resume to continue it or "
              f"--fresh to delete it and start over", file=sys.stderr)
        return 2
    if args.resume and not exec_file.exists():
        print(f"error: --resume: nothing to resume under {study_dir}", file=sys.stderr)
        return 2
    try:  # before anything is written: a cluster that refuses the driver or the storage leaves no trace
        cluster = connect(args.address, json.loads(exec_file.read_text())["storage"] if args.resume else storage)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    study_dir.mkdir(parents=True, exist_ok=True)
    if args.resume:
        meta = json.loads(exec_file.read_text())
    else:
        meta = {"execution": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"), "profile": profile,
                "git_commit": git_commit(), "storage": storage}
        exec_file.write_text(json.dumps(meta, indent=2))
    uri = default_tracking_uri(results_dir)
    callback = StudyCallback(study, str(results_dir), uri, meta["execution"], meta["git_commit"], meta["profile"])
    callback.tracker  # the MLflow schema and the parent run exist before any trial starts
    started = cluster.started
    t0 = time.perf_counter()
    try:
        tuner_path = os.path.join(meta["storage"], "tune")
        if args.resume and tune.Tuner.can_restore(tuner_path):
            trainable = tune.with_resources(tune.with_parameters(tune_trial, study=study),
                                            tune.PlacementGroupFactory(study.resources.bundles()))
            tuner = tune.Tuner.restore(tuner_path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = make_tuner(study, meta["storage"], callback, args.max_concurrent)
        tuner.fit()
    finally:
        if started:
            ray.shutdown()
    wall = time.perf_counter() - t0
    meta.setdefault("runs", []).append({"wall_seconds": wall, "write_seconds": dict(callback.write_seconds),
                                        "resumed": bool(args.resume)})
    exec_file.write_text(json.dumps(meta, indent=2))  # what the run cost, for benchmarks/orchestration.py
    _print_summary(study, results_dir, uri, wall, callback)
    print(f"Ray:     {cluster.description}")
    return 0


def _print_summary(study: Study, results_dir: Path, uri: str, wall: float, callback: StudyCallback) -> None:
    import pandas as pd

    res = load(results_dir, study.name)
    trials = res.trials
    cols = ["trial_name", "status"] + [c for c in study.summary_columns if c in trials.columns] + ["train_seconds"]
    with pd.option_context("display.max_rows", 200, "display.width", 160, "display.max_colwidth", 60):
        counts = ", ".join(f"{(trials.status == s).sum()} {s}" for s in ("completed", "failed", "stopped")
                           if s != "stopped" or (trials.status == s).any())
        print(f"\n{study.name}: {len(trials)} trials ({counts}) in {wall:.0f} s")
        if len(trials):
            print(trials.sort_values("trial_name")[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        failed = trials[trials.status == "failed"]
        for _, r in failed.iterrows():
            print(f"  failed: {r.trial_name}: {str(r.failure_reason).splitlines()[0]}")
    if study.summarize is not None:
        table = study.summarize(res)
        if len(table):
            table.to_csv(results_dir / study.name / "summary.csv", index=False)
            with pd.option_context("display.width", 160):
                print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"\nParquet: {results_dir / study.name}   (eeray.results.load({str(results_dir)!r}, {study.name!r}))")
    print(f"MLflow:  {ui_command(uri)}")
