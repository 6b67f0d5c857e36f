"""Re-run one recorded trial outside Ray and compare its rows with the record.

    python -m eeray.rerun <results-dir> --study S --trial <trial_id or trial_name> [--json] [--threads N]

The config comes from the trial's ``trials`` row (:func:`eeray.recorded.trial_config`); the trial runs with
:func:`eeray.trial.run_trial` in this process; every table's rows are compared with what
``eeray.results.load`` returns for it (:mod:`eeray.row_compare`: bitwise, timings and run context excepted). A
branch re-runs from scratch: its whole history, which ``load`` gives as its trunk's rows before ``branch_step``
and its own after. Exit status: 0 equal, 1 different, 2 bad input (no such study or trial, a row that cannot be
rebuilt, a trial the record does not hold as completed, a config that needs Ray).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from eeray.config import TrialConfig, to_flat
from eeray.recorded import RecordError, find_trial, config_from_row
from eeray.records import MemorySink
from eeray.results import load, schema, to_table
from eeray.row_compare import TABLES, Difference, compare, excluded


class RerunRefused(ValueError):
    """The trial cannot be re-run here (bad input: exit status 2); the message says why."""


@dataclass
class Rerun:
    study: str
    trial_id: str
    trial_name: str
    device: str  # what the re-run ran on
    recorded_device: Any  # what the record says the trial ran on
    threads: int
    seconds: float
    rows: dict[str, int]  # table -> rows compared (the record's)
    differences: dict[str, Difference | None]
    hardware: str = ""  # the re-run's trials.hardware: CPU model, instruction set, threads (or the GPU)
    recorded_hardware: Any = None  # the record's

    @property
    def equal(self) -> bool:
        return all(d is None for d in self.differences.values())


def rerun(results_dir: str, study: str, trial: str, *, threads: int | None = None) -> Rerun:
    """Rebuild ``trial`` (trial_id or trial_name) of ``study`` from its record, run it here, compare. ``threads``:
    torch's CPU threads, set for this process (default: the count the record's ``hardware`` column names, which
    the float sums depend on)."""
    import torch

    from eeray.trial import pick_device, run_trial  # torch and the training loop: only once the input is good

    try:
        results = load(results_dir, study)
    except FileNotFoundError as exc:
        raise RerunRefused(str(exc)) from exc
    try:
        row = find_trial(results, trial)
        config = config_from_row(row)
    except RecordError as exc:
        raise RerunRefused(str(exc)) from exc
    if row["status"] != "completed":
        raise RerunRefused(f"trial {row['trial_id']} ({row['trial_name']}) is '{row['status']}' in the record, "
                           "which holds only part of its rows; only completed trials are re-run and compared")
    if config.diag.alignment and config.diag.actors:
        raise RerunRefused(f"trial {row['trial_id']} ran its diagnostics on diag.actors = {config.diag.actors} Ray "
                           "actors; the re-run is outside Ray")
    try:
        device = pick_device(config.train.device)
    except ValueError as exc:
        raise RerunRefused(str(exc)) from exc
    if threads is None:
        threads = recorded_threads(row.get("hardware")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    sink = MemorySink()
    t0 = time.perf_counter()
    result = run_trial(config, sink)
    seconds = time.perf_counter() - t0
    tid = row["trial_id"]
    recorded = {t: getattr(results, t)[getattr(results, t).trial_id == tid] for t in TABLES}
    rerun_rows = {t: _frame(t, study, tid, config, sink.rows[t]) for t in TABLES[:-1]}
    summary = {k: v for k, v in result.summary.items() if k != "status"}
    rerun_rows["trials"] = _frame("trials", study, tid, config, [
        {**summary, "trial_name": row["trial_name"], **{f"cfg.{k}": v for k, v in to_flat(config).items()}}])
    return Rerun(study, tid, row["trial_name"], str(device), row.get("device"), threads, seconds,
                 {t: len(recorded[t]) for t in TABLES}, compare(recorded, rerun_rows),
                 result.summary["hardware"], row.get("hardware"))


def recorded_threads(hardware: Any) -> int | None:
    """The CPU thread count in a ``hardware`` value such as ``'x86_64 (1 threads)'`` (None: a GPU, or absent)."""
    m = re.search(r"\((\d+) threads\)$", hardware) if isinstance(hardware, str) else None
    return int(m.group(1)) if m else None


def _frame(table: str, study: str, trial_id: str, config: TrialConfig, rows: list[dict]):
    """The re-run's rows as the record would hold them: through the table's Arrow schema, read back as pandas."""
    full = [{"study": study, "trial_id": trial_id, "dataset": config.data.name, **r} for r in rows]
    return to_table(table, full).to_pandas()


def report(r: Rerun) -> str:
    lines = [f"re-ran trial {r.trial_id} ({r.trial_name}) of study '{r.study}' from its record: {r.device}, "
             f"{r.threads} thread(s), {r.seconds:.1f} s",
             "not compared (timings; in trials also where and as what it ran): " + "; ".join(
                 f"{t}: {', '.join(excluded(t, schema(t).names))}" for t in TABLES)]
    if r.recorded_device != r.device:  # e.g. recorded on cuda:0, re-run on a CPU-only machine
        lines.append(f"note: the record ran on {r.recorded_device}, this re-run on {r.device}: other kernels, so "
                     "bitwise equality is not expected")
    elif r.recorded_hardware != r.hardware:  # another CPU model or instruction set: other kernels, other sums
        lines.append(f"note: the record ran on {r.recorded_hardware!r}, this re-run on {r.hardware!r}: kernels for "
                     "another CPU, instruction set or thread count sum in another order, so values may differ in the "
                     "last bits and the differences grow over training (a record made without eeray's AVX2 caps "
                     "re-runs with EERAY_CPU_KERNELS=native on a CPU like its own: docs/results-schema.md, \"What "
                     "is bitwise\")")
    if r.equal:
        lines.append("equal: " + ", ".join(_rows(n, t) for t, n in r.rows.items()))
    else:
        lines += ["different: " + d.describe() for d in r.differences.values() if d is not None]
        same = [_rows(r.rows[t], t) for t, d in r.differences.items() if d is None]
        if same:
            lines.append("equal: " + ", ".join(same))
    return "\n".join(lines)


def _rows(n: int, table: str) -> str:
    return f"{n} row{'' if n == 1 else 's'} in {table}"


def as_json(r: Rerun) -> dict[str, Any]:
    out = asdict(r)
    out["equal"] = r.equal
    out["differences"] = {t: None if d is None else {**asdict(d), "recorded": _jsonable(d.recorded),
                                                     "rerun": _jsonable(d.rerun)}
                          for t, d in r.differences.items()}
    out["excluded"] = {t: excluded(t, schema(t).names) for t in TABLES}
    return out


def _jsonable(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)  # 'nan', 'inf': JSON has no such numbers
    return v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eeray.rerun", description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir")
    p.add_argument("--study", required=True)
    p.add_argument("--trial", required=True, help="the trial's trial_id or trial_name")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the record's, from `hardware`)")
    args = p.parse_args(argv)
    try:
        r = rerun(args.results_dir, args.study, args.trial, threads=args.threads)
    except RerunRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(as_json(r), indent=1, allow_nan=False, default=str) if args.json else report(r))
    return 0 if r.equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
