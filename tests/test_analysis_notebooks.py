"""The notebooks in analysis/ run top to bottom on the smoke studies' Parquet results (a fresh kernel, the results
directory passed as a user would, through EERAY_RESULTS_DIR, or found from analysis/ as the repository's results),
and are committed without outputs."""
import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOKS = {"width_vs_alignment": "width_sweep", "sine_wave": "sine_wave", "optimizer_sweep": "optimizer_sweep"}


def test_every_notebook_is_listed_and_committed_without_outputs():
    assert sorted(p.stem for p in (ROOT / "analysis").glob("*.ipynb")) == sorted(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "analysis" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: clear the outputs"
        assert "RESULTS_DIR = analysis.default_results_dir()" in code[0].source  # found from analysis/ too
        assert all("eeray.results" not in c.source and "read_parquet" not in c.source for c in code)  # thin


def test_results_dir_is_found_from_analysis_or_given(tmp_path, monkeypatch):
    from eeray import analysis

    repo = tmp_path / "repo"
    (repo / "analysis").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'eeray'\n")
    monkeypatch.delenv("EERAY_RESULTS_DIR", raising=False)
    # no results yet: the repository root's results, not analysis/results
    assert analysis.default_results_dir(repo / "analysis") == repo / "results"
    (repo / "results" / "width_sweep" / "trials").mkdir(parents=True)
    assert analysis.default_results_dir(repo / "analysis") == repo / "results"
    assert analysis.default_results_dir(repo) == repo / "results"
    monkeypatch.setenv("EERAY_RESULTS_DIR", str(tmp_path / "elsewhere"))
    assert analysis.default_results_dir(repo / "analysis") == tmp_path / "elsewhere"


@pytest.mark.slow
def test_width_notebook_opened_from_analysis_finds_the_repository_results(width_smoke, monkeypatch, tmp_path):
    """A user opens analysis/width_vs_alignment.ipynb in Jupyter (working directory analysis/) after running the
    study from the repository root: no environment variable, the results are ../results."""
    import shutil

    results_dir, _ = width_smoke
    repo = tmp_path / "repo"
    (repo / "analysis").mkdir(parents=True)
    shutil.copytree(results_dir / "width_sweep", repo / "results" / "width_sweep")
    monkeypatch.delenv("EERAY_RESULTS_DIR", raising=False)
    nb = nbformat.read(ROOT / "analysis" / "width_vs_alignment.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(repo / "analysis")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in code[0].outputs if o.output_type == "stream")
    assert f"results: {(repo / 'results').resolve()}" in printed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_on_the_smoke_results(name, smoke, monkeypatch, tmp_path):
    results_dir, _ = smoke(NOTEBOOKS[name])
    monkeypatch.setenv("EERAY_RESULTS_DIR", str(results_dir))  # the kernel inherits this process's environment
    nb = nbformat.read(ROOT / "analysis" / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figure_cells = [c for c in code if "analysis.plot_" in c.source]
    assert figure_cells and all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in figure_cells)
    first = code[0].outputs[-1]["data"]["text/html"]  # the per-trial table of this study's trials
    from eeray.results import load

    assert all(n in first for n in load(results_dir, NOTEBOOKS[name]).trials["trial_name"])
