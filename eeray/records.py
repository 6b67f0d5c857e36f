"""What a trial emits, and where it goes: the one record schema shared by Parquet, MLflow and Tune.

``run_trial`` hands rows to a :class:`Sink` — ``emit(stream, row)`` — and offers checkpoints —
``checkpoint(make_state, step=, epoch=, reason=)``. A sink decides what to keep: :class:`MemorySink` keeps
everything in lists (tests, notebooks); the Tune sink in ``eeray.raytune.trainable`` batches rows into ``tune.report``.

Record streams (``RECORD_STREAMS``). The Parquet tables (``eeray.results.PARQUET_TABLES``) are another set:
steps, diagnostics and safety rows are written as they are, the summary becomes the trial's one ``trials`` row
(with its config), and events become MLflow tags. ``eeray.results`` lists the columns:
  steps        one row per evaluation point: step, epoch, phase, losses, errors, lr, norms, timings
  diagnostics  one row per alignment report (Q_T, residual, rank, spectrum summary, ‖ΔM‖, ...)
  safety       Assumption 4 at initialisation and Lemma 5 per head at θ^τ
  events       the phase switch (τ, the perturbation's seed and measured norm, trainable counts)
  summary      one row at the end of the trial (final metrics, d, m_H, timings, hardware)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

RECORD_STREAMS = ("steps", "diagnostics", "safety", "events", "summary")  # what emit(stream, row) takes


class Sink(Protocol):
    def emit(self, table: str, row: Mapping[str, Any]) -> None: ...

    def checkpoint(self, make_state: Callable[[], dict], *, step: int, epoch: int, reason: str) -> None: ...


class NullSink:
    """Discards everything (a trial run only for its return value)."""

    def emit(self, table: str, row: Mapping[str, Any]) -> None:
        _check_table(table)

    def checkpoint(self, make_state: Callable[[], dict], *, step: int, epoch: int, reason: str) -> None:
        pass


@dataclass
class KeptCheckpoint:
    reason: str
    step: int
    epoch: int
    state: dict
    emitted: dict[str, int]  # rows per table emitted before this checkpoint (what a resume must not repeat)


@dataclass
class MemorySink:
    """Keeps every row, and the checkpoints whose reason is in ``keep_checkpoints`` (states are built only
    for those, so a sink that keeps none costs nothing)."""

    keep_checkpoints: tuple[str, ...] = ()
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in RECORD_STREAMS})
    checkpoints: list[KeptCheckpoint] = field(default_factory=list)

    def emit(self, table: str, row: Mapping[str, Any]) -> None:
        _check_table(table)
        self.rows[table].append(dict(row))

    def checkpoint(self, make_state: Callable[[], dict], *, step: int, epoch: int, reason: str) -> None:
        if reason in self.keep_checkpoints:
            emitted = {t: len(rows) for t, rows in self.rows.items()}
            self.checkpoints.append(KeptCheckpoint(reason, step, epoch, make_state(), emitted))

    def frame(self, table: str):
        import pandas as pd

        return pd.DataFrame(self.rows[table])


def _check_table(table: str) -> None:
    if table not in RECORD_STREAMS:
        raise ValueError(f"unknown record stream {table!r}; valid: {RECORD_STREAMS}")
