"""Named points where a test can kill the driver, to prove that a kill at any instant leaves a correct record.

``EERAY_KILL_AT=<point>:<n>`` makes the process SIGKILL itself the n-th time it passes ``point`` (no cleanup,
exactly like a machine losing power). Unset, :func:`reached` is a dictionary look-up. The points:

  parquet_chunk   a chunk of rows is in Parquet, not yet in MLflow
  mlflow_batch    one ``log_batch`` of metric points has committed, before eeray notes it
  trial_row       a trial's ``trials`` row is written, its MLflow run not yet closed
  mlflow_finish   a trial's final metrics and artifacts are in MLflow, its run not yet terminated
  study_end       every trial has ended, the parent run is not yet closed
  tune_state      Tune's experiment state (what --resume restores) is half-written to storage
"""
from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("parquet_chunk", "mlflow_batch", "trial_row", "mlflow_finish", "study_end", "tune_state")
_seen: Counter = Counter()


def reached(point: str) -> None:
    target = os.environ.get("EERAY_KILL_AT")
    if not target:
        return
    name, _, n = target.partition(":")
    if name not in POINTS:
        raise ValueError(f"EERAY_KILL_AT={target!r}: the point must be one of {POINTS}")
    if name == point:
        _seen[point] += 1
        if _seen[point] == int(n or 1):
            os.kill(os.getpid(), signal.SIGKILL)
