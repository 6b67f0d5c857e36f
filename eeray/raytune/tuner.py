"""Study → Ray Tune: the Tuner (grid, Optuna, scheduler, placement groups, storage, failures, checkpoints),
``--resume`` / ``--extend`` through ``Tuner.restore``, the outcome and the end-of-study summary. Imported only
after validation.

An execution is recorded in ``<results>/<study>/execution.json``: its id, profile, git commit, the expanded
definition (:mod:`eeray.identity`) and its segments. A segment is one Tune experiment over a list of trials: the
first holds the study as started, each ``--extend`` adds one with exactly the added trials. Paths in the file
are relative to the study directory (a copied results directory resumes where it is), except a ``--storage``
the user passed. One driver at a time holds the directory (:mod:`eeray.run_lock`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune

from eeray import commands, destinations, faults, identity, record_check
from eeray.errors import chain
from eeray.mlflow_sync import finish_ended_runs
from eeray.mlflow_mirror import (Mirror, MlflowTracker, classic_view_url,
                                 default_tracking_uri, definition_view, ui_command, view_key)
from eeray.raytune.atomic_storage import local_path, tune_storage, unreadable_state
from eeray.raytune.search_state import (apply_record, drop_staged_state, reconcile, relocate,
                                        unsafe_searcher_state)
from eeray.raytune.callback import StudyCallback, StudyRecorder
from eeray.raytune.connect import ClusterError, RayCluster, connect
from eeray.raytune.trainable import tune_trial
from eeray.identity import EXECUTION_FILE
from eeray.results import RecordWriteError, load, write_whole
from eeray.run_lock import LOCK_FILE, StudyLock, StudyLocked
from eeray.study import Study, trial_name

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


MARKER_FILE = ".eeray-study"  # written into every study directory eeray creates: --fresh deletes only those
TUNE_DIR = "_tune"
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_TRIALS_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
class _Refused(Exception):
    """A refusal before any work: printed as one 'error:' line, exit status 2."""


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
        _check_study_dir(results_dir, study_dir)
        _check_destination(args.results_dir, study_dir, default_tracking_uri(results_dir))
        continuing = bool(args.resume or getattr(args, "extend", False))
        nothing = _Refused(f"{'--extend' if getattr(args, 'extend', False) else '--resume'}: no execution of "
                           f"'{study.name}' to continue under {study_dir}")
        if continuing and not study_dir.exists():
            raise nothing
        _make_study_dir(study_dir, study.name)
        lock = StudyLock(study_dir).acquire()  # first: a live driver is named before anything else is judged
    except (_Refused, StudyLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        try:
            if continuing and not (study_dir / EXECUTION_FILE).exists():
                raise nothing
            meta, write = _execution(study, profile, args, study_dir, continuing)
            # before the execution is written: a cluster that refuses the driver or the storage leaves no trace
            address = ray_choice.address if ray_choice else (args.address or "local")
            cluster = connect(address, _storage(study_dir, meta), ray_choice.why if ray_choice else "")
            print(f"Ray: {cluster.description}", flush=True)
            if not cluster.started:  # a local Ray was checked against this machine before Ray started
                _check_capacity(study, cluster)
        except (_Refused, ClusterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        if write:
            _write_execution(study_dir, meta)
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
    storage = _storage(study_dir, meta)
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
        _unless_full(lambda: _write_execution(study_dir, meta), "adding this run's costs to execution.json")
    _print_summary(study, results_dir, uri, wall, recorder, unfinished, cluster.description, args)
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


# --------------------------------------------------------------------------- the results directory
def _check_study_dir(results_dir: Path, study_dir: Path) -> None:
    name = study_dir.name
    if study_dir.parent != results_dir or name in ("", ".", "..") or "/" in name:
        raise _Refused(f"study name {name!r} must be one path component (letters, digits, '-', '_', '.')")


def _check_destination(given: str, study_dir: Path, tracking_uri: str) -> None:
    """The study directory takes files (its lock is the first), and the paths below it fit: refused here, naming
    it, rather than a traceback from the lock or MLflow retrying a SQLite file it cannot open."""
    why = destinations.unwritable(study_dir)
    if why:
        raise _Refused(f"--results-dir {given}: {why}; the study's lock, Parquet record, Tune state and MLflow store "
                       "are written there: make it writable or choose another --results-dir")
    why = destinations.too_long(study_dir, tracking_uri)
    if why:
        raise _Refused(f"--results-dir {given}: {why}")


def _make_study_dir(study_dir: Path, name: str) -> None:
    marker = study_dir / MARKER_FILE
    if not study_dir.exists():
        study_dir.mkdir(parents=True)
        marker.write_text(json.dumps({"study": name}) + "\n")
    elif not marker.exists() and any(study_dir.iterdir()):
        raise _Refused(f"{study_dir} exists and was not created by eeray (no {MARKER_FILE}): choose another "
                       f"--results-dir; nothing there is touched")


def _execution(study: Study, profile: str, args, study_dir: Path, continuing: bool) -> tuple[dict, bool]:
    """The execution this run continues (checked against the study as it is now), or a new one; and whether it
    must be written (new, or extended) once Ray has accepted the driver."""
    exec_file = study_dir / EXECUTION_FILE
    _preflight(args.storage or (json.loads(exec_file.read_text())["storage"] if continuing else None))
    current = identity.definition(study, profile)
    if args.fresh:
        _delete_study_contents(study_dir, study.name)
    elif exec_file.exists() and not continuing:
        meta = json.loads(exec_file.read_text())
        raise _Refused(f"{study_dir} holds an execution of '{study.name}' ({meta.get('execution')}, profile "
                       f"{meta.get('profile')}). Continue it with --resume, add new trials to it with --extend, or "
                       f"start over with --fresh (deletes it) or another --results-dir")
    if continuing:
        meta = json.loads(exec_file.read_text())
        diff = identity.compare(meta["definition"], current)
        if args.storage and args.storage != meta["storage"]:
            raise _Refused(f"--storage {args.storage} differs from the execution's {meta['storage']}")
        if diff.only_added and args.extend:
            seg = {"name": f"tune-ext{len(meta['segments'])}", "trials": diff.added}
            meta["segments"].append(seg)
            meta["definition"], meta["fingerprint"] = current, identity.fingerprint(current)
            print(f"--extend: {len(diff.added)} trial(s) added to execution {meta['execution']}; the "
                  f"{len(meta['definition']['trials']) - len(diff.added)} recorded ones are kept as they are", flush=True)
        elif not diff.empty:
            choices = ("run it with the recorded definition (undo the edit), " +
                       ("add the new trials with --extend, " if diff.only_added else "") +
                       "or start a new execution with --fresh (deletes this one) or another --results-dir")
            raise _Refused(f"the study differs from the execution recorded in {exec_file} "
                           f"({meta['execution']}):\n" + "\n".join(diff.lines()) + f"\nChoices: {choices}")
        # the record is what a resume trusts (a trial it holds as ended never runs again): a file of it unreadable
        # or gone would be rows silently missing at the end, so it refuses here, naming it (eeray.record_check)
        try:
            record_check.check(study_dir.parent, study.name)
        except record_check.IncompleteRecord as exc:
            raise _Refused(f"{'--extend' if args.extend else '--resume'}: {exc}") from None
        # eeray writes Tune's state atomically (atomic_storage); one cut short by anything else (a full disk) refuses;
        # so does a searcher state naming anything a searcher's state never holds (crafted: it would run code)
        for seg in meta["segments"]:
            experiment = os.path.join(_storage(study_dir, meta), seg["name"])
            why = unreadable_state(experiment) or unsafe_searcher_state(*tune_storage(experiment))
            if why:
                raise _Refused(f"Tune's state of segment '{seg['name']}' cannot be restored: {why}. The Parquet "
                               f"record of the trials that ended is intact ({study_dir}); this execution cannot be "
                               "continued: start it again with --fresh (deletes it) or use another --results-dir")
        return meta, diff.only_added and args.extend
    meta = {"study": study.name, "execution": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            "profile": profile, "git_commit": git_commit(),
            "storage": args.storage or TUNE_DIR,  # relative to the study directory unless the user named one
            "fingerprint": identity.fingerprint(current), "definition": current,
            "segments": [{"name": "tune", "trials": list(current["trials"])}], "runs": []}
    return meta, True


def _preflight(storage: str | None) -> None:
    """An ``s3://`` storage must take an object before anything is deleted (--fresh), written or started: a
    missing bucket, refused credentials or an unreachable endpoint is one refusal, not every trial failing. A
    path (NFS, a local directory) must take a file: a read-only one is one refusal, not Tune's traceback."""
    from eeray.raytune import s3

    if storage and s3.is_s3(storage):
        try:
            s3.check(storage)
        except s3.StorageError as exc:
            raise _Refused(str(exc)) from None
    elif storage and storage != TUNE_DIR and local_path(storage) is not None:  # _tune: the study directory's
        why = destinations.unwritable(local_path(storage))
        if why:
            raise _Refused(f"--storage {storage}: {why}; Tune's checkpoints and state are written there: make it "
                           "writable or choose another --storage")


def _delete_study_contents(study_dir: Path, name: str) -> None:
    """--fresh: only a directory eeray created for this very study, and never the lock this driver holds."""
    marker = study_dir / MARKER_FILE
    try:
        owner = json.loads(marker.read_text()).get("study")
    except (OSError, ValueError):
        owner = None
    if owner != name:
        raise _Refused(f"--fresh: {study_dir} was not created by eeray for study '{name}' (no {MARKER_FILE} naming "
                       f"it); nothing deleted")
    for entry in study_dir.iterdir():
        if entry.name in (MARKER_FILE, LOCK_FILE):
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _storage(study_dir: Path, meta: dict) -> str:
    """Where this execution's Tune experiments live: ``_tune`` inside the study directory, or, under a storage the
    user named (which other studies and executions may share), ``<storage>/<study>/<execution>``."""
    s = meta["storage"]
    if s == TUNE_DIR:
        return str(study_dir / s)
    return f"{s.rstrip('/')}/{meta['study']}/{meta['execution']}"


def _write_execution(study_dir: Path, meta: dict) -> None:
    text = json.dumps(meta, indent=2, default=str)
    write_whole(study_dir / EXECUTION_FILE, lambda tmp: tmp.write_text(text))


class _NoTuneRestoreHint(logging.Filter):
    """Tune's "interrupted ... Tuner.restore(path=...)" hint points at Tune's API; eeray prints its own command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


# --------------------------------------------------------------------------- the summary
def _print_summary(study: Study, results_dir: Path, uri: str, wall: float, recorder: StudyRecorder,
                   unfinished: int, cluster: str, args) -> None:
    import pandas as pd

    res = load(results_dir, study.name)
    trials = res.trials
    cols = ["trial_name", "status", *study.summary_columns, "train_seconds"]  # validated before Ray started
    interrupted = len(set(recorder.attempts) - set(trials.trial_id))  # started in this run, did not end
    with pd.option_context("display.max_rows", 200, "display.width", 160, "display.max_colwidth", 60):
        counts = [f"{(trials.status == s).sum()} {s}" for s in ("completed", "failed")]
        if (trials.status == "stopped").any():
            counts.append(f"{(trials.status == 'stopped').sum()} stopped early")
        if unfinished:  # both counts, zeros included: what a resume will continue and what it will start
            counts += [f"{interrupted} interrupted", f"{unfinished - interrupted} never ran"]
        total = len(trials) + unfinished
        print(f"\n{study.name}: {total} trials ({', '.join(counts)}) in {wall:.0f} s on {cluster}")
        if len(trials):
            print(trials.sort_values("trial_name")[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for _, r in trials[trials.status == "failed"].iterrows():
            print(f"  failed: {r.trial_name}: {str(r.failure_reason).splitlines()[0]}")
        for name, why in study.skipped_datasets.items():  # absent, skipped at the user's request
            print(f"  skipped dataset {name} (--present-datasets-only): {why}")
    if len(trials) and not unfinished and (trials.status == "failed").all():
        # the summary's tables below come out empty: said here, so an empty table does not read as "no answer yet"
        print(f"\nEvery trial failed ({len(trials)} of {total}; each one's reason is above): no completed trial "
              "to summarize")
    if study.summarize is not None and not unfinished:
        table = study.summarize(res)
        if len(table):
            table.to_csv(results_dir / study.name / "summary.csv", index=False)
            with pd.option_context("display.width", 160):
                print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    # every command below is printed on a line of its own, as it is to be pasted: it names this interpreter by
    # absolute path, so it works in a fresh shell without an activated environment (eeray.commands)
    print(f"\nParquet: {results_dir / study.name}   (eeray.results.load({str(results_dir)!r}, {study.name!r}))")
    if recorder.mirror.offline:
        print(f"MLflow:  INCOMPLETE — {recorder.mirror.offline}. Complete it from Parquet with:\n"
              f"    {recorder.mirror.sync_command}")
    else:
        # the address of the study's runs in the Model-training view, its own line to paste (MLflow's front page
        # opens on the GenAI overview in a browser that never chose otherwise): the printed UI command's port
        server = "http://127.0.0.1:5000" if ui_command(uri) else uri
        view = recorder.mirror.call("reading the experiment's id", lambda t: classic_view_url(
            server, t.experiment_id, view_key(t.execution))) or server
        if ui_command(uri):
            print("MLflow:  serve the UI with the command below, then open the address under it (the study's runs; "
                  "its chart view plots what the study varies against final_train_error):\n"
                  f"    {ui_command(uri)}\n    {view}")
        else:
            print(f"MLflow:  open this address in a browser (on a cluster through an SSH tunnel: docs/cluster.md):"
                  f"\n    {view}")
    if not unfinished and len(trials):
        print(f"Report:  {results_dir / study.name / 'report' / 'index.html'}, written by:\n"
              f"    {commands.report(results_dir, study.name)}")
    if unfinished:
        print(f"\nInterrupted: {unfinished} of {total} trials did not finish. Continue with:\n    "
              f"{resume_command()}")


def resume_command() -> str:
    return commands.resume()
