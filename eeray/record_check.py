"""Is the Parquet record whole? Checked before a ``--resume`` or ``--extend`` continues an execution, before Ray.

A resume trusts the record: a trial it holds as ended never runs again. So a record file that cannot be read
(truncated, overwritten) or is gone (deleted or moved by hand) would make the continued study finish "complete"
with rows silently missing, or wait forever for a trial that Tune holds as done. Both are refused here, naming
what is wrong:

* every file of every table is read whole (:func:`eeray.results.read_whole`): a file whose footer is intact but
  whose pages are not is found too;
* every trial's ``trials`` row says how many rows it wrote to ``steps``, ``diagnostics`` and ``safety``
  (``<table>_rows``, counted by the trial itself over all its attempts); the record must hold exactly that many
  for a trial that ended for good, and at least that many for a failed one (which Tune may run again from a
  checkpoint, rewriting its chunks and adding later ones). Trials whose counts are null (the trial could not count)
  are not checked.

Imports no Ray: it runs in the driver before Ray starts.
"""
from __future__ import annotations

import os

from eeray.results import PARQUET_TABLES, RecordFileError, read_whole

COUNTED = PARQUET_TABLES[1:]  # steps, diagnostics, safety: the tables whose rows a trial counts
ENDED_FOR_GOOD = ("completed", "stopped")  # never run again by a resume (eeray.raytune.search_state.RECORDED_DONE)
CHOICES = ("restore the file(s) from a copy of the results directory and continue again; or start the execution "
           "over with --fresh (deletes it) or in another --results-dir")


class IncompleteRecord(Exception):
    """The record cannot be continued as it is: the message names every file or trial concerned and the choices."""


def check(results_dir: str | os.PathLike, study: str) -> None:
    """Raise :class:`IncompleteRecord` unless every record file reads whole and every counted trial's rows are
    all there."""
    tables, unreadable = {}, []
    for table in PARQUET_TABLES:
        try:
            tables[table] = read_whole(results_dir, study, table)
        except RecordFileError as exc:
            unreadable += [f"  {path}: {why}" for path, why in exc.bad.items()]
    if unreadable:
        raise IncompleteRecord(f"the record of study '{study}' under {results_dir} has {len(unreadable)} "
                               "unreadable Parquet file(s) (truncated or overwritten?); its rows would be silently "
                               "missing:\n" + "\n".join(unreadable) + f"\nChoices: {CHOICES}")
    short = missing_rows(tables)
    if short:
        raise IncompleteRecord(f"the record of study '{study}' under {results_dir} lacks rows that its trials "
                               f"wrote (a file deleted or moved by hand?):\n" + "\n".join(short) +
                               f"\nChoices: {CHOICES}")


def missing_rows(tables) -> list[str]:
    """One line per trial whose rows in the record differ from the counts its ``trials`` row holds (``tables``:
    table name -> the Arrow table as stored)."""
    trials = tables["trials"].select(["trial_id", "trial_name", "status", *(f"{t}_rows" for t in COUNTED)])
    found = {t: _per_trial(tables[t]) for t in COUNTED}
    lines = []
    for row in trials.to_pylist():
        wrong = []
        for t in COUNTED:
            wrote, holds = row[f"{t}_rows"], found[t].get(row["trial_id"], 0)
            if wrote is None:
                continue  # the trial could not count (see the module docstring)
            if holds < wrote or (holds > wrote and row["status"] in ENDED_FOR_GOOD):
                wrong.append(f"{t} holds {holds} of its {wrote} rows")
        if wrong:
            lines.append(f"  trial '{row['trial_name']}' ({row['trial_id']}, {row['status']}): {'; '.join(wrong)}")
    return lines


def _per_trial(table) -> dict[str, int]:
    counts = table.group_by("trial_id").aggregate([("trial_id", "count")])
    return dict(zip(counts["trial_id"].to_pylist(), counts["trial_id_count"].to_pylist()))
