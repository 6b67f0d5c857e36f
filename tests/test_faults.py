"""Issue 25: faults a user meets in the record, through the real CLI. Each test asserts what must happen instead
of the fault: the documented exit status, one message naming what is wrong and the choices, every (trial, step)
row exactly once against an undisturbed run, and nothing from the results directory executed."""
import shutil

import nbformat
import pytest
from conftest import ROOT, run_study
from nbclient import NotebookClient

from eeray.results import load

ALL_FAILED = "tests/studies/all_failed_study.py"


@pytest.mark.slow
def test_every_trial_failed_exits_3_with_a_summary_that_says_so_and_the_notebook_runs(tmp_path):
    """Item 6: the width sweep with every trial diverging. The study's own summary (width_sweep.summarize: the
    association, stability and survival tables) and analysis/width_vs_alignment.ipynb crashed on a record with no
    completed trial ("'association' is not in list"), turning exit 3 into a traceback and exit 1."""
    out = run_study(ALL_FAILED, tmp_path, "--smoke", expect=3)
    res = load(tmp_path, "all_failed")
    assert len(res.trials) == 3 and set(res.trials.status) == {"failed"}
    assert res.trials.failure_reason.str.contains("training loss is").all()
    assert "all_failed: 3 trials (0 completed, 3 failed)" in out.stdout
    assert "Every trial failed (3 of 3; each one's reason is above): no completed trial to summarize" in out.stdout
    assert "Traceback" not in out.stderr and "Interrupted" not in out.stdout
    assert not (tmp_path / "all_failed" / "summary.csv").exists()  # no table of verdicts from no trials

    # the notebook a user opens next, on the same record (found as the repository's results, as from analysis/)
    repo = tmp_path / "repo"
    (repo / "analysis").mkdir(parents=True)
    shutil.copytree(tmp_path / "all_failed", repo / "results" / "width_sweep")
    nb = nbformat.read(ROOT / "analysis" / "width_vs_alignment.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(repo / "analysis")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, [(o["ename"], o["evalue"]) for o in errors]
    partial = next(c for c in code if "plot_partial_intervals" in c.source)
    assert any("image/png" in o.get("data", {}) for o in partial.outputs)  # a figure saying why, not an error


# --------------------------------------------------------------------------- items 3 and 4: the record on disk
INTEGRITY = "tests/studies/integrity_study.py"


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """The integrity study (two trials) run to its end, untouched: the reference each disturbed copy is compared
    with, and the copy a user damages."""
    path = tmp_path_factory.mktemp("undisturbed")
    run_study(INTEGRITY, path, "--smoke")
    return path


def _damaged_copy(reference, tmp_path, table_dir: str):
    """A copy of the reference results directory and, in it, the one (compacted) file of ``table_dir``."""
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    (victim,) = (copy / "integrity" / table_dir).glob("*.parquet")
    return copy, victim


def _snapshot(results):
    return {p.relative_to(results): p.read_bytes() for p in sorted((results / "integrity").rglob("*"))
            if p.is_file() and "_tune" not in p.parts and p.name != ".eeray.lock"}


def _resumed_equals_reference(copy, reference):
    """--resume, once the damaged file is back, ends with every trial's rows exactly as the undisturbed run's."""
    from conftest import check_mlflow, rows_of, same_rows

    run_study(INTEGRITY, copy, "--smoke", "--resume")
    ref = load(reference, "integrity")
    res = load(copy, "integrity")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    assert sorted(res.trials.trial_id) == sorted(ref.trials.trial_id)
    for trial_id in ref.trials.trial_id:
        assert same_rows(rows_of(copy, "integrity", trial_id), rows_of(reference, "integrity", trial_id)), trial_id
    check_mlflow(copy, "integrity", ref.trials.trial_name)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_record_file_is_an_error_naming_it_and_resume_refuses(undisturbed, tmp_path, damage):
    """Item 3: a truncated or garbage Parquet file. eeray.results.load dropped it silently (fewer trials and rows,
    and the report said so); --resume then waited forever for a trial Tune held as done. Now load fails naming
    the file, and --resume refuses before Ray starts (exit 2), naming it and the choices, touching nothing."""
    from eeray.results import RecordFileError

    copy, victim = _damaged_copy(undisturbed, tmp_path, "steps/dataset=sine/phase=explore")
    good = victim.read_bytes()
    victim.write_bytes(good[:len(good) // 2] if damage == "truncated" else bytes(range(256)) * 8)
    with pytest.raises(RecordFileError, match=str(victim)):
        load(copy, "integrity")
    before = _snapshot(copy)
    out = run_study(INTEGRITY, copy, "--smoke", "--resume", expect=2)
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "unreadable Parquet file(s)" in err[0], out.stderr
    assert f"  {victim}: " in out.stderr and "--fresh" in out.stderr and "restore the file(s)" in out.stderr
    assert "Ray:" not in out.stdout and "Traceback" not in out.stderr  # refused before Ray started
    assert _snapshot(copy) == before  # nothing deleted, rewritten or compacted by the refusal

    victim.write_bytes(good)  # the first choice: the file restored from a copy
    _resumed_equals_reference(copy, undisturbed)


@pytest.mark.slow
def test_a_record_file_deleted_by_hand_is_named_at_resume_and_refused(undisturbed, tmp_path):
    """Item 4: a file of the record deleted by hand, then --resume: it exited 0 with "2 completed" and rows missing.
    The trials row holds how many rows each trial wrote; --resume compares and refuses, naming the trials."""
    copy, victim = _damaged_copy(undisturbed, tmp_path, "steps/dataset=sine/phase=exploit")
    good = victim.read_bytes()
    ref = load(undisturbed, "integrity")
    assert (ref.trials.steps_rows == ref.steps.groupby("trial_id").size()[ref.trials.trial_id].to_numpy()).all()
    exploit = ref.steps[ref.steps.phase == "exploit"].groupby("trial_id").size()
    victim.unlink()
    before = _snapshot(copy)
    out = run_study(INTEGRITY, copy, "--smoke", "--resume", expect=2)
    err = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "lacks rows that its trials wrote" in err[0], out.stderr
    for trial_id, name, wrote in zip(ref.trials.trial_id, ref.trials.trial_name, ref.trials.steps_rows):
        assert (f"trial '{name}' ({trial_id}, completed): steps holds {wrote - exploit[trial_id]} of its {wrote} rows"
                in out.stderr), out.stderr
    assert "--fresh" in out.stderr and "Ray:" not in out.stdout and "Traceback" not in out.stderr
    assert _snapshot(copy) == before

    victim.write_bytes(good)
    _resumed_equals_reference(copy, undisturbed)
