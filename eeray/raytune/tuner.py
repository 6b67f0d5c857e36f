"""Study → Ray Tune: the Tuner (grid, Optuna, scheduler, placement groups, storage, failures, checkpoints),
``--resume`` / ``--extend`` through ``Tuner.restore``, and the outcome. Imported only after validation. The
execution record and the refusals decided from files are :mod:`eeray.execution`; the printed summary is
:mod:`eeray.summary`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune

from eeray import commands, faults
from eeray.errors import chain
from eeray.execution import (Refused, check_destination, check_study_dir, make_study_dir, open_execution,
                             storage_of, write_execution)
from eeray.identity import EXECUTION_FILE
from eeray.mlflow_mirror import Mirror, MlflowTracker, default_tracking_uri, definition_view
from eeray.mlflow_sync import finish_ended_runs
from eeray.raytune.atomic_storage import tune_storage, unreadable_state
from eeray.raytune.callback import StudyCallback, StudyRecorder
from eeray.raytune.connect import ClusterError, RayCluster, connect
from eeray.raytune.search_state import (apply_record, drop_staged_state, reconcile, relocate,
                                        unsafe_searcher_state)
from eeray.raytune.trainable import tune_trial
from eeray.results import RecordWriteError, load
from eeray.run_lock import StudyLock, StudyLocked
from eeray.study import Study, trial_name
from eeray.summary import print_summary

# Tune's experiment state holds every trial, so saving it costs O(trials so far): it is saved every few seconds
# (TUNE_SNAPSHOT_S), not at every step of Tune's loop, and eeray's record (written at every event) is what a
# resume trusts where the two disagree (search_state.apply_record). Tune keeps every checkpoint of a running trial
# (num_to_keep=None, make_tuner), so an older state never names a checkpoint rotated away; the callback deletes a
# trial's checkpoints once the record holds it as completed or stopped.
TUNE_SNAPSHOT_S = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "auto")  # Tune's "auto": >= 10 s, <= 5% of the time


def _tune_settings(environ=os.environ) -> None:
    """The Ray and Tune settings a study runs with, where the user has not set them: environment variables, which
    Ray and Tune read when a run needs them (not at import), so they are set at the start of a run, not on
    importing this module."""
    environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from users' studies
    environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # Parquet is the record: no CSV/TBX copies
    # checkpoints are bounded by design (every k epochs + the switch): the snapshot-frequency warning is not
    # actionable
    environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune keeps each checkpoint with the metrics reported beside it, in the driver's memory and in every saved
    # state: here a chunk's rows and the flat config. Only the score attribute (eeray sets none) is kept with older
    # ones; the callback strips the latest one's rows when the trial ends (callback._forget_reported_rows)
    environ.setdefault("TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE", "1")
    environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic progress table: concise, one line per trial


EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_TRIALS_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def trainable_of(study: Study, branching=None):
    return tune.with_resources(tune.with_parameters(tune_trial, study=study, branching=branching),
                               tune.PlacementGroupFactory(study.resources.bundles()))


def searcher_class(study: Study) -> type:
    from eeray.raytune import searchers  # imports Optuna: only once Ray runs

    return searchers.GridOptunaSearch if study.search else searchers.PointsSearch


def make_tuner(study: Study, points: list[dict[str, Any]], storage: str, name: str, callback: StudyCallback,
               max_concurrent: int | None, branching=None) -> tune.Tuner:
    trainable = trainable_of(study, branching)
    if study.search:
        from eeray.raytune.searchers import GridOptunaSearch

        search_alg = GridOptunaSearch(points, study.search, metric=study.metric, mode=study.mode,
                                      samples_per_point=study.samples_per_point, seed=study.base.seed)
        param_space, num_samples = {}, len(points) * study.samples_per_point
    else:  # exactly the study's points, in order; Tune's config is the point itself
        from eeray.raytune.searchers import PointsSearch

        search_alg = PointsSearch(points, branching, [study.trial_name(p) for p in points])
        param_space, num_samples = {}, len(points)
    scheduler = None
    if study.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # time is the epoch: a trial reports at every checkpoint, and twice more at the switch, so Tune's report
        # count would compare EE trials with Standard ones at different epochs
        scheduler = ASHAScheduler(time_attr="epoch", grace_period=2, max_t=max(2, study.base.train.epochs))
    storage_path, storage_fs = tune_storage(storage)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
            metric=study.metric if (study.search or scheduler) else None,
            mode=study.mode if (study.search or scheduler) else None,
            reuse_actors=True, max_concurrent_trials=max_concurrent,
            trial_name_creator=_tune_trial_name, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,  # every file replaced atomically
            # no Tune loggers (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS above): their per-trial files sit in the
            # driver's staging directory, which Tune copies to storage whole at every snapshot (benchmarks/
            # orchestration.py; at 216 trials 648 of the 651 files of each copy, a snapshot per loop step)
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            # every checkpoint of a running trial stays until the trial ends (then the callback deletes them), so
            # whichever experiment state a kill leaves names checkpoints that exist; num_to_keep would also make Tune
            # save its whole state every num_to_keep checkpoints of any trial: O(trials so far) per trial
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=0),  # progress is eeray's own line (completed/running/pending/failed, ETA) every 30 s
    )


def _tune_trial_name(trial) -> str:
    """Tune's trial names are the study's readable ones ("ee c=0.5 m_c=2 seed=1"). A module function, not an
    object holding the Study: Tune keeps the creator in every trial's saved state, and a pickled Study made 7 of
    the 23 KB per trial of the experiment state that Tune rewrites every 10 s and that fit() reads back whole at
    its end, one Study unpickled per trial (benchmarks/README.md, "Scale on a quiet machine")."""
    return trial_name(trial.config).replace("/", "_")[:120] or "trial"


def _trial_dirname(trial) -> str:
    return trial.trial_id



# --------------------------------------------------------------------------- one execution
def run_study(study: Study, profile: str, args, ray_choice=None) -> int:
    """One execution of ``study``; ``ray_choice`` (:class:`eeray.cli.RayChoice`) says which Ray runs it (default:
    ``args.address`` as given, else a local Ray)."""
    _tune_settings()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its schema-migration chatter
    logging.getLogger("ray.tune.tune").addFilter(_NoTuneRestoreHint())
    # Tune's ResultGrid looks for per-trial result files that eeray turns off (Parquet is the record) and warns
    # once per trial at the end of fit(): 162 lines after the laptop width_sweep
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    results_dir = Path(args.results_dir).resolve()
    study_dir = results_dir / study.name
    try:
        check_study_dir(results_dir, study_dir)
        check_destination(args.results_dir, study_dir, default_tracking_uri(results_dir))
        continuing = bool(args.resume or getattr(args, "extend", False))
        nothing = Refused(f"{'--extend' if getattr(args, 'extend', False) else '--resume'}: no execution of "
                           f"'{study.name}' to continue under {study_dir}")
        if continuing and not study_dir.exists():
            raise nothing
        make_study_dir(study_dir, study.name)
        lock = StudyLock(study_dir).acquire()  # first: a live driver is named before anything else is judged
    except (Refused, StudyLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        try:
            if continuing and not (study_dir / EXECUTION_FILE).exists():
                raise nothing
            meta, write = open_execution(study, profile, args, study_dir, continuing)
            if continuing:
                _check_tune_states(study_dir, meta)
            # before the execution is written: a cluster that refuses the driver or the storage leaves no trace
            address = ray_choice.address if ray_choice else (args.address or "local")
            cluster = connect(address, storage_of(study_dir, meta), ray_choice.why if ray_choice else "")
            print(f"Ray: {cluster.description}", flush=True)
            if not cluster.started:  # a local Ray was checked against this machine before Ray started
                _check_capacity(study, cluster)
        except (Refused, ClusterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if write:
            write_execution(study_dir, meta)
        return _run(study, args, results_dir, study_dir, meta, cluster)
    finally:
        lock.release()


def _check_capacity(study: Study, cluster: RayCluster) -> None:
    """A trial no node and no launchable node type can hold is refused here (nothing written yet); one that waits
    for the autoscaler to launch a node is said so."""
    from eeray.raytune import capacity

    try:
        note = capacity.check(study.resources.bundles(), cluster.address)
    except ClusterError:
        ray.shutdown()
        raise
    if note:
        print(note, flush=True)


def _run(study: Study, args, results_dir: Path, study_dir: Path, meta: dict, cluster: RayCluster) -> int:
    uri = default_tracking_uri(results_dir)
    sync = commands.mlflow_sync(results_dir, study.name)
    mirror = Mirror(lambda: _open_tracker(uri, study, results_dir, meta), sync)
    expected = sum(len(seg["trials"]) for seg in meta["segments"]) * study.samples_per_point
    recorder = StudyRecorder(study, str(results_dir), mirror, meta["git_commit"], meta["profile"], expected)
    recorder.load_record()  # the driver's state: read once, then kept up to date by Tune's events
    callback = StudyCallback(recorder)
    mirror.call("opening the study's run", lambda t: t.parent_id)  # schema + parent exist before any trial
    _interrupt_on_termination()
    storage = storage_of(study_dir, meta)
    # search studies: Optuna learns from each result in the searcher's state, which the record cannot rebuild
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0" if study.search else TUNE_SNAPSHOT_S
    if not study.search and args.max_concurrent is None and "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ:
        # Tune keeps one trial PENDING at a time for a searcher of its own kind (it may learn from each result), so
        # one trial started at a time: trials shorter than the driver's work per trial ran one at a time on two CPUs
        # (benchmarks/concurrency.py: 0% of the time two, 65-74% with more pending), and an autoscaler saw the
        # demand of one trial at a time. A study's points are fixed in advance, as a grid is: they get Tune's rule
        # for its own grid search. Optuna studies keep one; --max-concurrent N keeps Tune's N.
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(max(200, int(ray.cluster_resources().get("CPU", 1) * 1.1)))
    t0 = time.perf_counter()
    outcome, record_error = "failed", None
    try:
        try:
            restorable = _catch_up_with_record(study, storage, meta, recorder, results_dir, mirror)
            through = 0  # trials of the segments up to this one
            for seg in meta["segments"]:
                through += len(seg["trials"]) * study.samples_per_point
                branching = _branching(study, storage, seg)
                recorder.branching.append(branching)
                path, fs = tune_storage(os.path.join(storage, seg["name"]))
                if seg["name"] in restorable:
                    drop_staged_state(path, fs)
                    moved = relocate(path, fs)
                    if moved:
                        print(f"note: resume: Tune's state of segment '{seg['name']}' was written under {moved} (the "
                              f"results directory was copied or moved): its new trials now go under {path}", flush=True)
                    for repair in reconcile(path, fs, searcher_class(study), recorder.ended_names):
                        print(f"note: resume: {repair}", flush=True)
                    tuner = tune.Tuner.restore(path, trainable_of(study, branching), resume_unfinished=True,
                                               resume_errored=True, storage_filesystem=fs)
                else:  # never started, or killed before Tune first saved its state: what the record lacks
                    names = set(seg["trials"]) - recorder.ended_names
                    points = [p for p in study.points() if study.trial_name(p) in names]
                    if not points:
                        continue
                    tuner = make_tuner(study, points, storage, seg["name"], callback, args.max_concurrent, branching)
                tuner.fit()
                if len(recorder.ended) < through:
                    break  # interrupted (Ctrl-C): the later segments wait for --resume
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's own handler
            pass
        except Exception as exc:  # noqa: BLE001 -- only a failed write of the record is handled; the rest re-raised
            record_error = _record_write_error(exc)
            if record_error is None:
                raise
        finished = dict(recorder.ended)
        # a table no trial wrote to reads as empty with its schema, not as a missing folder (outside readers); only
        # after the trials ran (or were interrupted): a driver that fails with an error adds nothing to the record
        if record_error is None:
            recorder.writer.write_empty_tables(study.base.data.name)
        unfinished = expected - len(finished)
        failed = sum(s == "failed" for s in finished.values())
        outcome = "record_failed" if record_error else \
            "interrupted" if unfinished > 0 else ("trials_failed" if failed else "completed")
    finally:
        if cluster.started:
            ray.shutdown()
        # the rest of this run's done trials: the record stays a few files per partition. Tidiness, not the record:
        # on a full disk the next --resume compacts (callback.catch_up_files), and the first error is the one told
        _unless_full(recorder.compact, "compacting this run's files: the next --resume does")
        wall = time.perf_counter() - t0
        faults.reached("study_end")
        status = {"completed": "FINISHED", "trials_failed": "FINISHED", "interrupted": "KILLED"}.get(outcome, "FAILED")
        _close_mirror(mirror, results_dir, study.name, status)
        meta.setdefault("runs", []).append({"wall_seconds": wall, "write_seconds": dict(recorder.write_seconds),
                                            "resumed": bool(args.resume), "outcome": outcome,
                                            "cluster": cluster.description})
        # what the run cost, for benchmarks/orchestration.py
        _unless_full(lambda: write_execution(study_dir, meta), "adding this run's costs to execution.json")
    print_summary(study, results_dir, uri, wall, recorder, unfinished, cluster.description)
    if record_error is not None:
        print(f"\nerror: the study stopped: its record could not be written: {record_error}. The record holds every "
              f"row written before it (a file is written whole or not at all). Free space there (or make it "
              f"writable), then continue with the command above.", file=sys.stderr, flush=True)
    return {"completed": EXIT_OK, "trials_failed": EXIT_TRIALS_FAILED, "interrupted": EXIT_INTERRUPTED,
            "record_failed": EXIT_FAILED}[outcome]


def _record_write_error(exc: BaseException) -> RecordWriteError | None:
    """The failed write of the record behind ``exc``, if that is what it is: raised in the callback, it reaches
    here wrapped (Tune raises a ``TuneError`` while handling it)."""
    return next((e for e in chain(exc) if isinstance(e, RecordWriteError)), None)


def _unless_full(write, what: str) -> None:
    """A write the record does not depend on, at the end of a run: on a full disk, a warning instead of an error
    that would hide the one that stopped the study."""
    try:
        write()
    except RecordWriteError as exc:
        print(f"warning: {what}: {exc}", file=sys.stderr, flush=True)


def _interrupt_on_termination() -> None:
    """SIGTERM (``ray job stop``, ``timeout``, Slurm, Kubernetes, ``docker stop``) and SIGHUP (a closed terminal)
    stop the study as Ctrl-C does: Tune stops the trials and saves its state, the record and the MLflow runs are
    closed, the summary names the command that continues, exit 130. Installed after ``ray.init``, whose own
    SIGTERM handler would end the driver with ``SystemExit(15)`` in whatever it was doing."""
    def as_ctrl_c(signum, frame):
        signal.raise_signal(signal.SIGINT)  # Tune's handler while it runs; KeyboardInterrupt otherwise

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, as_ctrl_c)


def _branching(study: Study, storage: str, seg: dict):
    """The segment's trees (:mod:`eeray.raytune.branches`), or None where every trial runs from scratch: the study
    says so (``Study.branching``, ``--no-branching``), Optuna decides the points, a scheduler may stop a trunk, or
    the storage is not a shared file system path."""
    from eeray.raytune import branches

    if not study.branching or study.search or study.scheduler != "fifo":
        return None
    why = branches.check_storage(storage)
    if why:
        print(f"note: no branching: {why}", flush=True)
        return None
    roles = branches.plan(study, seg["trials"])
    if not any(r.kind == "trunk" for r in roles.values()):
        return None
    trunks = sum(r.kind == "trunk" for r in roles.values())
    print(f"branching: {trunks} trunk(s) explore once for {sum(r.kind == 'branch' for r in roles.values())} "
          f"branch(es) in {seg['name']} (--no-branching runs every trial from scratch)", flush=True)
    return branches.Branching(roles, os.path.join(branches.states_root(storage), seg["name"]), seg["name"])


def _catch_up_with_record(study: Study, storage: str, meta: dict, recorder: StudyRecorder, results_dir: Path,
                          mirror: Mirror) -> set[str]:
    """Before a resume: Tune's saved states are brought up to eeray's record (which is written at every event,
    Tune's state every few seconds), and the partial rows of trials that neither knows as their own — started
    after Tune's last save and not ended, so their points run again under new trial ids — are deleted, from
    Parquet and MLflow. Returns the segments Tune can restore."""
    restorable, known = set(), set(recorder.ended)
    for seg in meta["segments"]:
        path, fs = tune_storage(os.path.join(storage, seg["name"]))
        if not tune.Tuner.can_restore(path, storage_filesystem=fs):
            continue
        restorable.add(seg["name"])
        repairs, ids = apply_record(path, fs, recorder.ended)
        known |= ids
        for repair in repairs:
            print(f"note: resume: {repair}", flush=True)
    recorder.catch_up_files(recorder.ended)  # compaction a killed driver left half done, or not yet done
    mirror.call("finishing the runs of ended trials a killed driver left RUNNING",
                lambda t: finish_ended_runs(t, results_dir, study.name, meta["profile"]))
    lost = recorder.writer.delete_chunks_except(known)
    if lost:
        print(f"note: resume: {sum(lost.values())} chunk file(s) of {len(lost)} trial(s) that started after Tune's "
              "last save and did not end are deleted; those trials run again from their start", flush=True)
        mirror.call("deleting the runs of lost trials", lambda t: t.delete_children(set(lost)))
    return restorable


def _close_mirror(mirror: Mirror, results_dir: Path, study: str, status: str) -> None:
    """Children of trials that did not end are KILLED; the parent takes the run's outcome and summary."""
    res = load(results_dir, study)
    ended = set(res.trials.trial_id)

    def close(t: MlflowTracker) -> None:
        for trial_id, run_id in t.children().items():
            if trial_id not in ended and t.run_status(run_id) == "RUNNING":
                t.client.set_terminated(run_id, status="KILLED")
        counts = {f"trials_{s}": int((res.trials.status == s).sum()) for s in ("completed", "failed", "stopped")}
        table = res.trials.sort_values("trial_name")[["trial_name", "status", "final_train_error",
                                                      "final_test_error"]]
        t.finish_study(status, counts, {"summary.csv": table.to_csv(index=False)})

    mirror.call("closing the study's run", close)


def _open_tracker(uri: str, study: Study, results_dir: Path, meta: dict) -> MlflowTracker:
    origin = int(datetime.strptime(meta["execution"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp() * 1000)
    tracker = MlflowTracker(uri, study.name, results_dir / "mlartifacts", time_origin_ms=origin)
    if tracker.relocated_from:
        print(f"note: MLflow's artifacts were under {tracker.relocated_from} (the results directory was copied or "
              f"moved): they are now under {results_dir / 'mlartifacts'}", flush=True)
    tracker.start_study(meta["execution"], f"{study.name} {meta['execution']}",
                        {"profile": meta["profile"], "trials": len(study.points()) * study.samples_per_point,
                         "fingerprint": meta["fingerprint"],
                         "grid": json.dumps([{k: list(v) for k, v in g.items()} for g in study.grids()]
                                            if isinstance(study.grid, (list, tuple)) else
                                            {k: list(v) for k, v in study.grid.items()}, default=str),
                         "variants": json.dumps(list(study.variants))},
                        {"mlflow.source.git.commit": meta["git_commit"], "eeray.profile": meta["profile"]},
                        **definition_view(meta["definition"]))
    return tracker


def _check_tune_states(study_dir: Path, meta: dict) -> None:
    """eeray writes Tune's state atomically (atomic_storage); one cut short by anything else (a full disk) refuses;
    so does a searcher state naming anything a searcher's state never holds (crafted: it would run code)."""
    for seg in meta["segments"]:
        experiment = os.path.join(storage_of(study_dir, meta), seg["name"])
        why = unreadable_state(experiment) or unsafe_searcher_state(*tune_storage(experiment))
        if why:
            raise Refused(f"Tune's state of segment '{seg['name']}' cannot be restored: {why}. The Parquet "
                          f"record of the trials that ended is intact ({study_dir}); this execution cannot be "
                          "continued: start it again with --fresh (deletes it) or use another --results-dir")


class _NoTuneRestoreHint(logging.Filter):
    """Tune's "interrupted ... Tuner.restore(path=...)" hint points at Tune's API; eeray prints its own command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


