"""Compaction turns the small files of ended trials into one partition file per partition directory; the record
reads the same before, after, and at every instant in between (a kill between the partition file's rename and
the deletion of the files it covers), and a corrupt file is an error naming it."""
import shutil
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from eeray import compaction
from eeray.results import ResultsWriter, load, load_table

STUDY = "s"


def record(results_dir, trials=6, chunks=3):
    w = ResultsWriter(results_dir, STUDY)
    for t in range(trials):
        tid = f"{t:08x}"
        for c in range(chunks):
            w.write_chunk("steps", tid, f"{c:09d}-epoch", [
                {"step": c * 10 + k, "phase": "explore" if c < 2 else "exploit", "train_loss": t + c + k / 10}
                for k in range(4)], "sine")
        w.write_trial(tid, {"trial_name": f"seed={t}", "status": "completed", "final_train_error": t / 10}, "sine")
    return w


def every_file(root):
    return [f for f in Path(root).rglob("*.parquet") if not f.name.startswith(".")]


def test_compaction_keeps_every_row_once_and_leaves_one_file_per_partition(tmp_path):
    w = record(tmp_path)
    before = load(tmp_path, STUDY)
    assert compaction.compact(every_file(w.root)) == 6 + 6 * 3  # a trials file and 3 chunk files per trial
    after = load(tmp_path, STUDY)
    assert after.trials.equals(before.trials) and after.steps.equals(before.steps)
    assert sorted(str(f.relative_to(w.root).parent) for f in every_file(w.root)) == \
        ["steps/dataset=sine/phase=exploit", "steps/dataset=sine/phase=explore", "trials/dataset=sine"]
    generic = pads.dataset(str(w.root / "steps"), format="parquet", partitioning="hive").to_table()
    assert generic.num_rows == len(before.steps)  # any Parquet reader: each row once


def test_a_kill_between_the_rename_and_the_deletions_never_shows_a_row_twice(tmp_path, monkeypatch):
    w = record(tmp_path)
    before = load(tmp_path, STUDY)
    killed = tmp_path / "killed"

    def die(self, *a, **k):
        raise KeyboardInterrupt("killed after the partition file was renamed into place")

    monkeypatch.setattr(Path, "unlink", die)
    with pytest.raises(KeyboardInterrupt):
        compaction.compact(every_file(w.root))
    monkeypatch.undo()
    shutil.copytree(tmp_path / STUDY, killed / STUDY)
    parts = [f for f in every_file(killed) if f.name.startswith("part-")]
    assert len(parts) == 1 and len(every_file(killed)) == 1 + len(every_file(w.root)) - 1  # covered files remain
    mid = load(killed, STUDY)
    assert mid.trials.equals(before.trials) and mid.steps.equals(before.steps)  # load skips the covered files
    assert compaction.drop_covered(killed / STUDY) > 0  # what the next driver does first
    after = load(killed, STUDY)
    assert after.trials.equals(before.trials) and after.steps.equals(before.steps)


def test_a_corrupt_file_is_an_error_naming_it(tmp_path):
    w = record(tmp_path, trials=2)
    bad = sorted((w.root / "steps").rglob("*.parquet"))[0]
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=bad.name):
        load_table(tmp_path, STUDY, "steps")


def test_files_written_before_a_column_existed_compact_with_newer_ones(tmp_path):
    """A --resume of an execution begun by an older eeray: its trials files lack the row counts (steps_rows, ...)
    that newer ones carry. Compacted together, the older rows read the new columns as null, nothing is lost."""
    import pyarrow.parquet as pq

    w = record(tmp_path, trials=2)
    old = w.root / "trials" / "dataset=sine" / "00000000.parquet"
    pq.write_table(pq.read_table(old).drop_columns(["steps_rows", "diagnostics_rows", "safety_rows"]), old)
    w.write_trial("00000001", {"trial_name": "seed=1", "status": "completed", "final_train_error": 0.1,
                               "steps_rows": 12}, "sine")
    before = load(tmp_path, STUDY)
    compaction.compact(every_file(w.root))
    after = load(tmp_path, STUDY)
    assert after.trials.equals(before.trials) and after.steps.equals(before.steps)
    assert after.trials.steps_rows.isna().tolist() == [True, False] and after.trials.steps_rows.iloc[1] == 12
