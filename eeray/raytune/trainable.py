"""What runs inside a Tune trial: ``run_trial`` with a sink that turns checkpoints into ``tune.report`` calls.

Rows are buffered and reported only together with a checkpoint, so every report closes a chunk whose name is
the checkpoint's (step, reason). A trial restarted from a checkpoint re-emits exactly the chunks after it, with
the same names: the driver's Parquet writes replace, never duplicate. Trials only report; all MLflow and
Parquet writing happens in the driver (:mod:`eeray.raytune.callback`). Every report carries the flat config the
trial built and trains with: the one source of the config recorded in ``trials`` and MLflow.

Retries are for what a retry can fix. An exception raised by the trial's own code (a config, data or surgery
error, a divergence, a bug) would fail again identically: it is reported as the trial's final failure and the
trial ends, so Tune does not retry it. What reaches Tune as an error is what a retry can fix: a lost worker or
node (Tune sees the actor die), Ray's own errors inside the trial (a lost object or diagnostics actor), CUDA
running out of memory beside packed trials, and transient I/O.
"""
from __future__ import annotations

import errno
import logging
import os
import tempfile
from typing import Any, Callable, Mapping

import torch
import ray
from ray import tune

from eeray import cpu_kernels
from eeray.config import to_flat
from eeray.records import RECORD_STREAMS
from eeray.results import FAILED_CHUNK
from eeray.trial import run_trial

STATE_FILE = "trial.pt"
REPORT_KEYS = ("step", "epoch", "phase", "train_loss", "train_error", "test_error")
COUNTED = ("steps", "diagnostics", "safety")  # the Parquet tables a trial writes rows to (the trials row aside)
# a checkpoint's state also carries how many rows the trial had reported up to it, so a trial restored from it
# counts on from there (popped before the state reaches run_trial)
ROWS_KEY = "eeray_record_rows"


class TuneSink:
    def __init__(self, config_flat: dict[str, Any], counted: Mapping[str, int] | None = None) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {t: [] for t in RECORD_STREAMS}
        self.latest: dict[str, Any] = {}
        self.config_flat = config_flat
        # rows of each table this trial has reported, all attempts together (its trials row records them, and a
        # --resume checks the record holds them all: eeray.record_check); None: restored from a checkpoint that
        # did not carry them (an older one), so unknown
        self.counted: dict[str, int] | None = {t: 0 for t in COUNTED} if counted is None else dict(counted)

    def emit(self, table: str, row: Mapping[str, Any]) -> None:
        self.rows[table].append(dict(row))
        if table == "steps":
            self.latest.update({k: row[k] for k in REPORT_KEYS if k in row})
        elif table == "diagnostics":  # the tracker puts q_t in every row (Tune's progress table calls it Q_T)
            self.latest["Q_T"] = row["q_t"]

    def checkpoint(self, make_state: Callable[[], dict], *, step: int, epoch: int, reason: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            metrics = self._metrics(f"{step:09d}-{reason}")  # counts this chunk's rows: the state says "up to here"
            state = make_state()
            if metrics["record_rows"] is not None:
                state = {**state, ROWS_KEY: metrics["record_rows"]}  # a new dict: a branch point's state stays as it is
            torch.save(state, os.path.join(d, STATE_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            self._sent(metrics)

    def fail(self, reason: str) -> None:
        """A deterministic failure: report the rows so far and the reason; no retry helps."""
        metrics = self._metrics(FAILED_CHUNK)
        metrics["failure_reason"] = reason
        tune.report(metrics)
        self._sent(metrics)

    def _metrics(self, chunk: str) -> dict[str, Any]:
        """The result that reports the rows emitted since the last report, and the counts including them."""
        # Tune adds node_ip to every result; on one machine (a rehearsal) several nodes share an IP: Ray's node id
        # tells them apart
        counted = None if self.counted is None else {t: n + len(self.rows[t]) for t, n in self.counted.items()}
        return {**self.latest, "chunk": chunk, "rows": self.rows, "config_flat": self.config_flat,
                "node_id": ray.get_runtime_context().get_node_id(), "record_rows": counted}

    def _sent(self, metrics: dict[str, Any]) -> None:
        """Tune took the result: its rows are on their way to the driver. Only then are they counted and let go: a
        report that raised (its checkpoint could not be stored: a full disk) reached no one, and the failure
        reported next carries its rows, where they were dropped while the trial's count kept them ('steps holds 0
        of its 3 rows' at --resume, which then refused)."""
        self.counted = metrics["record_rows"]
        self.rows = {t: [] for t in RECORD_STREAMS}


# I/O errors that another attempt can outlive (a storage hiccup, a stale NFS handle, a dropped connection); a
# corrupt or missing file fails the same way every time
_TRANSIENT_ERRNOS = {errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.EAGAIN,
                     errno.EBUSY}


def retryable(exc: BaseException) -> bool:
    """Whether another attempt (on this or another node) could succeed where this one failed."""
    import ray.exceptions

    if isinstance(exc, (ray.exceptions.RayError, torch.cuda.OutOfMemoryError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


class _BranchPointSink:
    """A trunk's sink: a branch-point state goes to the branch-state store *and* is a Tune checkpoint of the trunk
    itself (reported first, so the rows before the branch step are on their way to Parquet before any branch can
    start; and a retried or resumed trunk continues from there, not from an earlier checkpoint)."""

    def __init__(self, inner: TuneSink, store, tree: str):
        self.inner, self.store, self.tree = inner, store, tree

    def emit(self, table: str, row) -> None:
        self.inner.emit(table, row)

    def checkpoint(self, make_state: Callable[[], dict], *, step: int, epoch: int, reason: str) -> None:
        from eeray.branching import BRANCH_POINT

        if reason != BRANCH_POINT:
            return self.inner.checkpoint(make_state, step=step, epoch=epoch, reason=reason)
        state = make_state()
        self.inner.checkpoint(lambda: state, step=step, epoch=epoch, reason=reason)
        self.store.put(self.tree, step, state)

    def fail(self, reason: str) -> None:
        self.inner.fail(reason)


def tune_trial(config: dict[str, Any], study, branching=None) -> None:
    """The Tune trainable. ``config`` is the grid point (+ Optuna's values); ``study`` comes through
    ``tune.with_parameters`` (a resumed execution refuses a study that differs from the recorded one), and so
    does ``branching`` (:class:`eeray.raytune.branches.Branching`, None: every trial from scratch): a trunk offers
    its branch-point states, a branch starts from its trunk's state — once; its own Tune checkpoints then cover
    its retries and resumes like any trial's."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not one "Checkpoint created" line per epoch
    cpu_kernels.apply()  # before the trial's first kernel on a node started elsewhere (eeray.cpu_kernels)
    torch.set_num_threads(max(1, int(study.resources.cpu)))
    share = study.resources.gpu
    if torch.cuda.is_available() and 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share)  # packed trials: each keeps to its share of memory
    cfg = study.config(config)
    sink = TuneSink(to_flat(cfg))
    role = branching.role(study.trial_name(config)) if branching is not None else None
    try:
        state = None
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:  # tensors, numbers and strings only: no code runs on load
                state = torch.load(os.path.join(d, STATE_FILE), weights_only=True, map_location="cpu")
            sink.counted = state.pop(ROWS_KEY, None)  # the rows reported up to this checkpoint (None: unknown)
        if role is not None and role.kind == "trunk":
            run_trial(cfg, _BranchPointSink(sink, branching.store, role.tree), checkpoint=state,
                      branch_points=role.points)
        elif role is not None and role.kind == "branch" and state is None:
            from eeray.raytune.branches import FAILED_BY_TRUNK

            why = branching.trunk_failure(study.trial_name(config))
            store = branching.store
            if not store.has(role.tree, role.step):
                missing = (f"the state of its trunk '{role.trunk}' at branch step {role.step} is missing from "
                           f"{store.root} (deleted by hand?); rerun with --no-branching or --fresh")
                sink.fail(f"{FAILED_BY_TRUNK}'{role.trunk}' failed before branch step {role.step}: {why}" if why
                          else missing)
                return
            run_trial(cfg, sink, branch_from=store.get(role.tree, role.step))
        else:
            run_trial(cfg, sink, checkpoint=state)
    except Exception as exc:  # noqa: BLE001 — sorted below into final and retryable
        if retryable(exc):
            raise
        own = type(exc).__module__.startswith("eeray.")  # eeray's errors say what happened; others get their type
        sink.fail(str(exc) if own else f"{type(exc).__name__}: {exc}")
