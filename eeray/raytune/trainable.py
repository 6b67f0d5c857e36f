"""What runs inside a Tune trial: ``run_trial`` with a sink that turns checkpoints into ``tune.report`` calls.

Rows are buffered and reported only together with a checkpoint, so every report closes a chunk whose name is
the checkpoint's (step, reason). A trial restarted from a checkpoint re-emits exactly the chunks after it, with
the same names: the driver's Parquet writes replace, never duplicate. Trials only report; all MLflow and
Parquet writing happens in the driver (:mod:`eeray.raytune.callback`).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Callable, Mapping

import torch
from ray import tune

from eeray.records import RECORD_STREAMS
from eeray.trial import TrialDiverged, run_trial

STATE_FILE = "trial.pt"
REPORT_KEYS = ("step", "epoch", "phase", "train_loss", "train_error", "test_error")


class TuneSink:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {t: [] for t in RECORD_STREAMS}
        self.latest: dict[str, Any] = {}

    def emit(self, table: str, row: Mapping[str, Any]) -> None:
        self.rows[table].append(dict(row))
        if table == "steps":
            self.latest.update({k: row[k] for k in REPORT_KEYS if k in row})
        elif table == "diagnostics":  # the tracker puts q_t in every row (Tune's progress table calls it Q_T)
            self.latest["Q_T"] = row["q_t"]

    def checkpoint(self, make_state: Callable[[], dict], *, step: int, epoch: int, reason: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            torch.save(make_state(), os.path.join(d, STATE_FILE))
            tune.report(self._metrics(f"{step:09d}-{reason}"), checkpoint=tune.Checkpoint.from_directory(d))

    def fail(self, reason: str) -> None:
        """A deterministic failure (divergence): report the rows so far and the reason; no retry helps."""
        metrics = self._metrics("999999999-failed")
        metrics["failure_reason"] = reason
        tune.report(metrics)

    def _metrics(self, chunk: str) -> dict[str, Any]:
        metrics = {**self.latest, "chunk": chunk, "rows": self.rows}
        self.rows = {t: [] for t in RECORD_STREAMS}
        return metrics


def tune_trial(config: dict[str, Any], study) -> None:
    """The Tune trainable. ``config`` is the grid point (+ Optuna's values); ``study`` comes through
    ``tune.with_parameters``."""
    cfg = study.config(config)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # not one "Checkpoint created" line per epoch
    torch.set_num_threads(max(1, int(study.resources.cpu)))
    share = study.resources.gpu
    if torch.cuda.is_available() and 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share)  # packed trials: each keeps to its share of memory
    state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), weights_only=False, map_location="cpu")
    sink = TuneSink()
    try:
        run_trial(cfg, sink, checkpoint=state)
    except TrialDiverged as exc:
        sink.fail(str(exc))
