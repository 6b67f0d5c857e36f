"""Rows of one trial, recorded and re-run, compared table by table: equal, or the first differing step and column.

"Equal" is bitwise for every column but the timings (wall-clock time differs between any two runs by nature) and,
in ``trials``, the columns that say where and how the trial ran rather than what it computed (its Tune id and
name, attempts, nodes, the git commit, the CPU's name and thread count). Floats are equal when they are the same
number, sign of zero included, and NaN equals NaN (NaN is how a record says "not computed").
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

TABLES = ("steps", "diagnostics", "safety", "trials")  # compared in this order: the per-step ones first
# the order rows are compared in: eeray.results.ROW_ORDER, then what tells a step's safety rows apart
KEYS = {"trials": ("trial_id",), "steps": ("trial_id", "step", "phase"),
        "diagnostics": ("trial_id", "step", "phase"), "safety": ("trial_id", "step", "phase", "kind", "head")}
# trials: where, when and as what the trial ran, not what it computed (docs/results-schema.md, trials); the row
# counts (steps_rows, ...) are how the driver checks its record on --resume: the re-run's rows themselves are
# compared, table by table, so their counts are too
RUN_CONTEXT = ("trial_id", "trial_name", "status", "failure_reason", "attempts", "attempt_nodes", "attempt_node_ids",
               "diag_actor_nodes", "attempt_errors", "trunk_trial_id", "branch_step", "git_commit", "hardware",
               "torch", "steps_rows", "diagnostics_rows", "safety_rows")


def is_timing(column: str) -> bool:
    """Wall-clock seconds (``explore_seconds``, ``diag_seconds``, ``seconds_gram``, ...): never equal twice."""
    return column.endswith("_seconds") or column.startswith("seconds_")


def excluded(table: str, columns) -> list[str]:
    """The columns of ``table`` that are not compared, in their order."""
    return [c for c in columns if is_timing(c) or (table == "trials" and c in RUN_CONTEXT)]


@dataclass(frozen=True)
class Difference:
    table: str
    row: int  # position in the table's rows of this trial, in key order
    key: dict[str, Any]  # step and phase (and kind, head) of that row
    column: str | None  # None: the tables have different numbers of rows (or columns)
    recorded: Any
    rerun: Any

    def describe(self) -> str:
        where = ", ".join(f"{k} {v}" for k, v in self.key.items() if k != "trial_id") or f"row {self.row}"
        if self.column is None:
            return f"{self.table}: {where}: recorded {self.recorded}, re-run {self.rerun}"
        return (f"{self.table}: {where}, column {self.column}: recorded {self.recorded!r}, "
                f"re-run {self.rerun!r}")


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of two cells: NaN == NaN, null == null, -0.0 != 0.0."""
    if _null(a) or _null(b):
        return _null(a) and _null(b)
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real) and not (_is_bool(a) or _is_bool(b)):
        return bool(a == b) and math.copysign(1.0, a) == math.copysign(1.0, b)
    return _is_bool(a) is _is_bool(b) and bool(a == b)  # True is not 1 here: a bool column is not a number


def first_difference(table: str, recorded, rerun) -> Difference | None:
    """The first row (in key order) and, within it, the first column (in the recorded table's order) where the
    two pandas frames differ; columns of :func:`excluded` are skipped. None when they are equal."""
    keys = [k for k in KEYS[table] if k in recorded.columns]
    recorded = recorded.sort_values(keys, kind="stable").reset_index(drop=True)
    rerun = rerun.sort_values(keys, kind="stable").reset_index(drop=True)
    skip = set(excluded(table, list(recorded.columns) + list(rerun.columns)))
    columns = [c for c in recorded.columns if c not in skip]
    only = sorted((set(rerun.columns) - set(recorded.columns) - skip) | (set(columns) - set(rerun.columns)))
    if only:
        return Difference(table, 0, {}, None, f"columns {sorted(set(columns) - set(rerun.columns))}",
                          f"columns {sorted(set(rerun.columns) - set(recorded.columns) - skip)}")
    n = min(len(recorded), len(rerun))
    first: tuple[int, int] | None = None  # (row, column position)
    for j, col in enumerate(columns):
        a, b = recorded[col].tolist()[:n], rerun[col].tolist()[:n]
        i = next((i for i in range(n) if not same(a[i], b[i])), None)
        if i is not None and (first is None or i < first[0]):
            first = (i, j)
    if first is not None:
        i, j = first
        return Difference(table, i, _key(recorded, keys, i), columns[j], _plain(recorded[columns[j]].iloc[i]),
                          _plain(rerun[columns[j]].iloc[i]))
    if len(recorded) != len(rerun):
        longer = recorded if len(recorded) > len(rerun) else rerun
        return Difference(table, n, _key(longer, keys, n), None, f"{len(recorded)} rows", f"{len(rerun)} rows")
    return None


def compare(recorded: Mapping[str, Any], rerun: Mapping[str, Any]) -> dict[str, Difference | None]:
    """Table -> its first difference (None: equal), for every table of :data:`TABLES`."""
    return {t: first_difference(t, recorded[t], rerun[t]) for t in TABLES}


def _key(frame, keys, i: int) -> dict[str, Any]:
    return {k: _plain(frame[k].iloc[i]) for k in keys}


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _null(v: Any) -> bool:
    if v is None or type(v).__name__ == "NAType":
        return True
    return isinstance(v, numbers.Real) and not _is_bool(v) and v != v


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))  # numpy's is not a subclass of bool
