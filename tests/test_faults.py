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
