"""The Tune callback: the driver side of a study, the one writer of Parquet and of the MLflow mirror.

Tune pickles its callbacks with the experiment and unpickles them on ``Tuner.restore``. Nothing of a run may
come back from such a pickle (a study object from before an edit, clients, counters), so :class:`StudyCallback`
pickles as a reference to "the recorder of the driver that is running now" and delegates every hook to it.

What the ``trials`` table records about a trial's config comes from the trial itself (the trainable reports
the flat config it built and trained with), never from the driver's study object.

The driver's working state lives in memory: which trials ended (and how), trial names and ids, a trunk's points
for its branches' MLflow runs. It is read from the record once when the driver starts (:meth:`StudyRecorder.
load_record`) and updated by Tune's events, so no event costs a read of the study's Parquet files.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray import tune

from eeray import compaction, faults, memory
from eeray.compaction import COMPACT_EVERY
from eeray.mlflow_mirror import STATUS_TO_MLFLOW, Mirror, metric_points
from eeray.raytune.search_state import RECORDED_DONE
from eeray.results import FAILED_CHUNK, ResultsWriter

PROGRESS_EVERY_S = 30.0
_ACTIVE: "StudyRecorder | None" = None  # the recorder of the driver running in this process


class StudyRecorder:
    def __init__(self, study, results_dir: str, mirror: Mirror, git_commit: str, profile: str, expected: int,
                 progress_every_s: float = PROGRESS_EVERY_S):
        self.study, self.results_dir, self.mirror = study, str(results_dir), mirror
        self.git_commit, self.profile, self.expected = git_commit, profile, expected
        self.writer = ResultsWriter(self.results_dir, study.name)
        self.write_seconds = {"parquet": 0.0, "mlflow": 0.0}
        self.attempts: dict[str, int] = {}
        self.configs: dict[str, dict[str, Any]] = {}  # trial id -> the flat config the trial reported
        self.finished: dict[str, str] = {}  # trial id -> completed | failed | stopped (this run)
        self.names: dict[str, str] = {}  # trial id -> readable name
        self._reopened: set[str] = set()  # MLflow runs this driver has created or set RUNNING again
        self.where: dict[str, list[dict[str, Any]]] = {}  # per attempt: node, actor nodes, why it ended
        self.continued: set[str] = set()  # trials this driver continued from a checkpoint a lost driver left
        self.done_before = 0  # trials already finished when this run started (resume)
        self.branching: list = []  # each segment's eeray.raytune.branches.Branching (None: from scratch)
        self.trials_seen: list = []  # every Tune trial of the running experiment (a branch's trunk is among them)
        self._prefixed: set[str] = set()  # branches whose MLflow run got its trunk's prefix in this run
        self.ended: dict[str, str] = {}  # trial id -> status of every trial with a trials row (all drivers)
        self.ended_names: set[str] = set()  # their names
        self.ids_by_name: dict[str, str] = {}  # trial name -> Tune trial id (recorded, or started by this driver)
        self._trunk_points: dict[str, list] = {}  # trunk trial id -> its MLflow points (for its branches' runs)
        self._loose: dict[str, set[Path]] = {}  # trial id -> its files not yet compacted
        self._done_loose: list[str] = []  # trials recorded as done whose files are not compacted yet
        self.t0 = time.time()
        self._last_progress = 0.0
        self._progress_every = progress_every_s

    def load_record(self) -> None:
        """The trials that ended before this driver started, read once from the record (``--resume``)."""
        from eeray.results import load_table

        trials = load_table(self.results_dir, self.study.name, "trials", columns=("trial_id", "trial_name", "status"))
        for trial_id, name, status in zip(trials.trial_id, trials.trial_name, trials.status):
            self.ended[trial_id] = status
            self.ended_names.add(name)
            self.ids_by_name[name] = trial_id
        self.done_before = len(self.ended)

    # ----------------------------------------------------------------------- Tune hooks
    def on_trial_start(self, trial) -> None:
        if trial.trial_id not in self.attempts and trial.checkpoint is not None:  # begun by a driver now lost
            self.continued.add(trial.trial_id)
            last = trial.last_result or {}
            self.where[trial.trial_id] = [{"node": last.get("node_ip"), "node_id": last.get("node_id"), "actors": [],
                                           "error": "the driver was lost; continued with --resume"}]
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1
        self.names[trial.trial_id] = self.study.trial_name(trial.config)
        self.ids_by_name.setdefault(self.names[trial.trial_id], trial.trial_id)
        _, role = self._role(self.names[trial.trial_id])
        if role is not None and role.kind == "trunk" and trial.checkpoint is None \
                and self.attempts[trial.trial_id] == 1:  # every row of it passes through this driver
            self._trunk_points.setdefault(trial.trial_id, [])
        self.where.setdefault(trial.trial_id, []).append(_attempt())

    def on_trial_recover(self, trial) -> None:
        """An attempt failed and Tune will retry the trial (a lost node, a lost actor): keep why."""
        if self.where.get(trial.trial_id):
            self.where[trial.trial_id][-1]["error"] = _error_text(trial).splitlines()[0][:500]

    def on_trial_result(self, trial, result: dict) -> None:
        rows = result.pop("rows", None)  # keep Tune's own experiment state small
        self._record_where(trial, result, rows or {})
        config = result.pop("config_flat", None)
        if config is not None:
            self.configs[trial.trial_id] = config
        chunk = result.get("chunk")
        if rows is None or chunk is None:
            return
        dataset = self._config(trial)["data.name"]
        t0 = time.perf_counter()
        for table in ("steps", "diagnostics", "safety"):
            if rows.get(table):
                self._loose.setdefault(trial.trial_id, set()).update(
                    self.writer.write_chunk(table, trial.trial_id, chunk, rows[table], dataset))
        t1 = time.perf_counter()
        faults.reached("parquet_chunk")
        tags = {}
        for event in rows.get("events", []):
            if event.get("event") == "phase_switch":
                tags = {"eeray.phase_switch_step": event["step"], "eeray.perturb_norm": f"{event['perturb_norm']:.6g}"}
        points = metric_points(rows.get("steps", []), rows.get("diagnostics", []))
        if trial.trial_id in self._trunk_points:
            self._trunk_points[trial.trial_id].extend(points)
        self.mirror.call("logging metrics", lambda t: t.log_points(self._child(t, trial), points, tags))
        self.write_seconds["mlflow"] += time.perf_counter() - t1
        self.write_seconds["parquet"] += t1 - t0
        if rows.get("summary"):
            self._finish(trial, "completed", {**rows["summary"][-1], **_row_counts(result)})
        elif result.get("failure_reason"):
            self._finish(trial, "failed", {"failure_reason": result["failure_reason"], **_row_counts(result)})

    def on_trial_complete(self, trial) -> None:
        """A trial that ends without its summary was stopped early by the scheduler (ASHA)."""
        if trial.trial_id not in self.finished:
            last = trial.last_result or {}
            self._finish(trial, "stopped", {"failure_reason": "stopped early by the scheduler",
                                            **{f"final_{k}": last[k] for k in ("train_loss", "train_error",
                                                                              "test_error") if k in last},
                                            **_row_counts(last)})
        _forget_reported_rows(trial)
        if self.finished.get(trial.trial_id) in RECORDED_DONE:  # never written again: its files can be compacted
            _delete_checkpoints(trial)
            self._done_loose.append(trial.trial_id)
            if len(self._done_loose) >= COMPACT_EVERY:
                self.compact()

    def compact(self) -> None:
        """Compact the files of the trials recorded as done since the last compaction (:mod:`eeray.compaction`)."""
        t0 = time.perf_counter()
        compaction.compact(f for t in self._done_loose for f in self._loose.pop(t, ()))
        self._done_loose = []
        self.write_seconds["parquet"] += time.perf_counter() - t0

    def catch_up_files(self, ended: dict[str, str]) -> None:
        """Resume: delete the files compacted by a driver killed before it deleted them, and compact the files of
        the trials the record holds as done that an earlier driver left uncompacted."""
        compaction.drop_covered(self.writer.root)
        for trial_id, path in self.writer.loose_files():
            if ended.get(trial_id) in RECORDED_DONE:
                self._loose.setdefault(trial_id, set()).add(path)
                if trial_id not in self._done_loose:
                    self._done_loose.append(trial_id)
        self.compact()

    def on_trial_error(self, trial) -> None:
        self._finish(trial, "failed", {"failure_reason": _error_text(trial),
                                       **_row_counts(getattr(trial, "last_result", None) or {})})
        _forget_reported_rows(trial)

    def on_step_end(self, trials) -> None:
        now = time.time()
        if now - self._last_progress >= self._progress_every:
            self._last_progress = now
            print(self.progress_line(trials), flush=True)

    # ----------------------------------------------------------------------- progress
    def progress_line(self, trials) -> str:
        running = sum(t.status == "RUNNING" for t in trials)
        failed = sum(s == "failed" for s in self.finished.values())
        done_now = len(self.finished)
        done = self.done_before + done_now
        pending = max(0, self.expected - done - running)
        elapsed = time.time() - self.t0
        if done_now:
            eta = f"ETA {_duration(elapsed / done_now * (self.expected - done))}"
        else:
            eta = "ETA after the first trial ends"
        return (f"[{self.study.name}] {done - failed} completed, {running} running, {pending} pending, {failed} "
                f"failed of {self.expected}; {_duration(elapsed)} elapsed, {eta}")

    # ----------------------------------------------------------------------- branches
    def _role(self, name: str):
        """(Branching, Role) of a trial, or (None, None) when it runs from scratch."""
        for b in self.branching:
            if b is not None and name in b.roles:
                return b, b.roles[name]
        return None, None

    def _trunk_id(self, trunk_name: str) -> str:
        """The Tune trial id of a trunk: one this driver started or the record holds, else among this experiment's
        trials (restored, not started again yet)."""
        if trunk_name in self.ids_by_name:
            return self.ids_by_name[trunk_name]
        for t in self.trials_seen:
            if self.study.trial_name(t.config) == trunk_name:
                self.ids_by_name[trunk_name] = t.trial_id
                return t.trial_id
        raise RuntimeError(f"the trunk '{trunk_name}' is neither among this execution's Tune trials nor in "
                           "Parquet; its branch cannot name it")

    def _branch_fields(self, name: str, status: str, summary: dict[str, Any]) -> dict[str, Any]:
        """``trunk_trial_id`` / ``branch_step`` of a branch that started from its trunk's state (a branch failed
        because its trunk never offered that state has no prefix: both stay null, the reason says why)."""
        b, role = self._role(name)
        if role is None or role.kind != "branch":
            return {"trunk_trial_id": None, "branch_step": None}
        from eeray.raytune.branches import FAILED_BY_TRUNK

        if status == "failed" and str(summary.get("failure_reason", "")).startswith(FAILED_BY_TRUNK):
            return {"trunk_trial_id": None, "branch_step": None}
        return {"trunk_trial_id": self._trunk_id(role.trunk), "branch_step": role.step}

    def _log_prefix(self, tracker, trial, run_id: str) -> None:
        """A branch's MLflow run shows its whole curve: its trunk's points before the branch step, from Parquet
        (the trunk reported them before its state existed, hence before the branch could start). Once per run
        of the driver; ``log_points`` never logs a (metric, step) twice."""
        name = self._name(trial)
        _, role = self._role(name)
        if role is None or role.kind != "branch" or trial.trial_id in self._prefixed:
            return
        trunk = self._trunk_id(role.trunk)
        if trunk not in self._trunk_points:  # the trunk ran under an earlier driver: its rows, read once
            from eeray.results import load_trial_rows

            self._trunk_points[trunk] = metric_points(
                *(load_trial_rows(self.results_dir, self.study.name, t, trunk).to_dict("records")
                  for t in ("steps", "diagnostics")))
        tracker.log_points(run_id, [p for p in self._trunk_points[trunk] if p[1] < role.step])
        self._prefixed.add(trial.trial_id)

    def _after_end(self, trial, status: str, summary: dict[str, Any]) -> None:
        """A trunk that failed for good fails its waiting branches (the marker the searcher and trainables read);
        a tree's states whose branches have all ended are deleted."""
        name = self._name(trial)
        b, role = self._role(name)
        if role is None or role.kind == "alone":
            return
        if role.kind == "trunk" and status == "failed":
            b.mark_trunk_failed(name, str(summary.get("failure_reason")).splitlines()[0])
        b.discard_done(role.tree, self.ended_names)

    # ----------------------------------------------------------------------- helpers
    def _name(self, trial) -> str:
        """The trial's readable name (kept at its start; computed from its point when it never started here)."""
        return self.names.get(trial.trial_id) or self.study.trial_name(trial.config)

    def _config(self, trial) -> dict[str, Any]:
        """The trial's own report of its config; before its first report (it failed while starting), the config
        it was asked to run — the same one, since a resumed study must match the recorded definition."""
        if trial.trial_id not in self.configs:
            from eeray.config import to_flat

            return to_flat(self.study.config(trial.config))
        return self.configs[trial.trial_id]

    def _child(self, tracker, trial) -> str:
        known = tracker.has_child(trial.trial_id)
        cfg = self._config(trial)
        run_id = tracker.child(trial.trial_id, self._name(trial),
                               cfg, {"eeray.dataset": cfg["data.name"], "mlflow.source.git.commit": self.git_commit,
                                     "eeray.profile": self.profile, "eeray.ee": str(cfg["ee.enabled"])})
        if known and run_id not in self._reopened:
            tracker.reopen(run_id)  # a run of an earlier, interrupted driver: running again
        self._reopened.add(run_id)
        self._log_prefix(tracker, trial, run_id)
        return run_id

    def _finish(self, trial, status: str, summary: dict[str, Any]) -> None:
        if trial.trial_id in self.finished:
            return
        cfg = self._config(trial)
        row = {**{k: v for k, v in summary.items() if k != "status"},
               "trial_name": self._name(trial), "status": status,
               # Tune's own count survives driver restarts: 1 + the failures it retried (node loss, ...), + 1 when
               # this driver continued the trial from a checkpoint that a lost driver's attempt left
               "attempts": 1 + int(getattr(trial, "num_failures", 0)) + (trial.trial_id in self.continued),
               "git_commit": self.git_commit,
               **self._where_fields(trial.trial_id),
               **self._branch_fields(self._name(trial), status,
                                     summary),
               **{f"cfg.{k}": v for k, v in cfg.items()}}
        t0 = time.perf_counter()
        if status != "failed" and self.ended.get(trial.trial_id) == "failed":
            # recorded as failed (its storage was full, ...), continued from its last checkpoint by --resume, and now
            # ended otherwise: its re-emitted chunks hold every row of the failure's chunk, which goes before the new
            # trials row (a kill between the two leaves the old row's rows all there, once)
            for path in self.writer.drop_chunk(trial.trial_id, FAILED_CHUNK):
                self._loose.get(trial.trial_id, set()).discard(path)
        self._loose.setdefault(trial.trial_id, set()).add(self.writer.write_trial(trial.trial_id, row, cfg["data.name"]))
        t1 = time.perf_counter()
        faults.reached("trial_row")
        self.finished[trial.trial_id] = status
        self.ended[trial.trial_id] = status
        self.ended_names.add(row["trial_name"])
        self._after_end(trial, status, summary)
        if len(self.ended) % memory.RELEASE_EVERY == 0:  # the driver's RSS stays what it holds (eeray.memory)
            memory.release()

        def mirror(t):
            run_id = self._child(t, trial)
            t.finish_trial(run_id, STATUS_TO_MLFLOW[status], summary,
                           {"config.json": cfg, "summary.json": _jsonable(summary)},
                           {"eeray.failure_reason": str(summary.get("failure_reason"))} if status == "failed" else {})

        self.mirror.call("closing a trial's run", mirror)
        self.write_seconds["mlflow"] += time.perf_counter() - t1
        self.write_seconds["parquet"] += t1 - t0
        print(f"[{self.study.name}] {status}: {row['trial_name']}" +
              (f": {str(summary.get('failure_reason')).splitlines()[0]}" if status != "completed" else
               f" (train error {summary.get('final_train_error', float('nan')):.4g})"), flush=True)


    def _record_where(self, trial, result: dict, rows: dict) -> None:
        """The node of this attempt (Tune puts ``node_ip`` in every result) and where its diagnostic actors run."""
        attempts = self.where.setdefault(trial.trial_id, [_attempt()])
        if attempts[-1]["node"] is None and result.get("node_ip"):
            attempts[-1]["node"] = result["node_ip"]
        if attempts[-1]["node_id"] is None and result.get("node_id"):
            attempts[-1]["node_id"] = result["node_id"]
        for event in rows.get("events", []):
            if event.get("event") == "diag_actors":
                attempts[-1]["actors"] += [n for n in event["nodes"] if n not in attempts[-1]["actors"]]

    def _where_fields(self, trial_id: str) -> dict[str, str]:
        """JSON lists, one entry per attempt this driver saw (a driver restart starts a new list)."""
        attempts = self.where.get(trial_id, [])
        return {"attempt_nodes": json.dumps([a["node"] for a in attempts]),
                "attempt_node_ids": json.dumps([a["node_id"] for a in attempts]),
                "diag_actor_nodes": json.dumps([a["actors"] for a in attempts]),
                "attempt_errors": json.dumps([a["error"] for a in attempts[:-1]])}


def _row_counts(result: dict) -> dict[str, int]:
    """``<table>_rows``: the rows of each table the trial reported up to ``result`` (its last report), all attempts
    together; none where the trial could not count them (it continued from a checkpoint without the counts)."""
    counted = result.get("record_rows")
    return {} if counted is None else {f"{t}_rows": n for t, n in counted.items()}


def _attempt() -> dict[str, Any]:
    """Where one attempt ran (filled in by its first result) and why it ended (before the last attempt)."""
    return {"node": None, "node_id": None, "actors": [], "error": None}


class StudyCallback(tune.Callback):
    def __init__(self, recorder: StudyRecorder):
        global _ACTIVE
        _ACTIVE = recorder
        self.recorder = recorder

    def __reduce__(self):  # restored by Tuner.restore as the current driver's callback, not a stale copy
        return _active_callback, ()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.recorder.trials_seen = trials
        self.recorder.on_trial_start(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.recorder.trials_seen = trials
        self.recorder.on_trial_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.recorder.on_trial_complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.recorder.trials_seen = trials
        self.recorder.on_trial_error(trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recorder.on_trial_recover(trial)

    def on_step_end(self, iteration, trials, **info):
        self.recorder.on_step_end(trials)


def _active_callback() -> StudyCallback:
    if _ACTIVE is None:
        raise RuntimeError("a StudyCallback is restored only inside a running eeray driver")
    return StudyCallback(_ACTIVE)


def _forget_reported_rows(trial) -> None:
    """Slim an ended trial to what Tune still needs of it. Tune keeps every trial it ran, in memory and in every
    experiment state it saves, so what a trial holds is paid once per trial for the rest of the study:

    - its latest checkpoint with the metrics reported beside it (older ones keep only the score attribute:
      TUNE_ONLY_STORE_CHECKPOINT_SCORE_ATTRIBUTE, tuner.py): here the chunk's rows and the flat config, which are
      in Parquet;
    - running statistics of every numeric metric (min, max, mean, last-5 and last-10 windows as deques: 15
      metrics, ~7 of the ~17 KB a trial adds to Tune's state, ~25 KB of Python objects in memory). Only
      ``ExperimentAnalysis.get_best_trial`` reads them, which eeray does not call; a trial that reports again
      (restarted by ``--resume``) starts them afresh (Tune builds a metric's entry when it first sees it).

    Both go once the trial has ended, so the driver's memory and Tune's state grow by as little as Tune allows per
    trial (benchmarks/README.md, scale). ``last_result`` stays: the callback and Tune's own summary read it."""
    metadata = getattr(trial, "run_metadata", None)
    if metadata is None:
        return
    latest = getattr(getattr(metadata, "checkpoint_manager", None), "_latest_checkpoint_result", None)
    metrics = getattr(latest, "metrics", None)
    if isinstance(metrics, dict):
        metrics.pop("rows", None)
        metrics.pop("config_flat", None)
    metadata.metric_analysis = {}
    metadata.metric_n_steps = {}
    metadata.invalidate_cache()
    trial.invalidate_json_state()


def _delete_checkpoints(trial) -> None:
    """A trial recorded as completed or stopped is never restored again (``--resume`` marks it TERMINATED even in
    an older Tune state: search_state.apply_record), so its checkpoints go: Tune keeps every checkpoint of a trial
    (``num_to_keep=None``, make_tuner) so that any state it saved names checkpoints that still exist."""
    import pyarrow.fs as pafs

    storage = getattr(trial, "storage", None)
    if storage is None:
        return
    fs, path = storage.storage_filesystem, storage.trial_fs_path
    try:
        entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        for info in entries:
            if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
                fs.delete_dir(info.path)
    except OSError as exc:  # storage only: the record is complete; the checkpoints cost space, not correctness
        print(f"warning: could not delete the checkpoints of {trial.trial_id} under {path}: {exc}", flush=True)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _error_text(trial) -> str:
    text = getattr(trial, "error_msg", None)
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if not text and path and Path(str(path)).is_file():
        text = Path(str(path)).read_text(errors="replace")
    text = (text or "trial errored (no message)").strip()
    last = [line for line in text.splitlines() if line.strip()][-1:]  # the exception line, then the traceback
    return (last[0] + "\n" + text)[:4000] if last else text[:4000]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
