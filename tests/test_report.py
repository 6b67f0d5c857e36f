"""The study report as a reader gets it: written by ``python -m eeray.analysis report``, rendered by headless
Chromium with every figure loaded, and its tables equal to the numbers in the Parquet results."""
import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT
from test_analysis import planted_results

from eeray.analysis import write_report
from eeray.analysis.__main__ import main
from eeray.results import ResultsWriter, load

pytestmark = pytest.mark.slow


class Tables(HTMLParser):
    """Every <table id=...> of a page: {id: {"head": [...], "rows": [(data-key, [cell texts])]}}."""

    def __init__(self, page: str):
        super().__init__()
        self.tables, self._table, self._row, self._cell = {}, None, None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), {"head": [], "rows": []})
        elif tag == "tr" and self._table is not None:
            self._row = (attrs.get("data-key"), [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._table["head"]:
                self._table["rows"].append(self._row)
            else:
                self._table["head"] = self._row[1]
            self._row = None
        elif tag == "table":
            self._table = None

    def records(self, table_id: str) -> dict[str, dict[str, str]]:
        t = self.tables[table_id]
        return {key or row[0]: dict(zip(t["head"], row)) for key, row in t["rows"]}


@pytest.fixture(scope="module")
def width_report(width_smoke, tmp_path_factory):
    """The width-sweep smoke report, written by the command a user types."""
    results_dir, _ = width_smoke
    out = tmp_path_factory.mktemp("width_report")
    cmd = [sys.executable, "-m", "eeray.analysis", "report", str(results_dir), "--study", "width_sweep",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = out / "index.html"
    assert f"report: {index}" in proc.stdout and index.as_uri() in proc.stdout
    return results_dir, index


def _number(text: str) -> float:
    return math.nan if text == "–" else float(text)


def test_report_tables_match_the_parquet_results(width_report):
    results_dir, index = width_report
    res = load(results_dir, "width_sweep")
    trials = res.trials.set_index("trial_id")
    page = Tables(index.read_text())
    rows = page.records("trials")
    assert set(rows) == set(trials.index)
    for tid, row in rows.items():
        t = trials.loc[tid]
        assert row["trial_name"] == t["trial_name"] and row["status"] == t["status"]
        for col in ("final_train_error", "final_train_loss", "final_test_error"):
            assert _number(row[col]) == pytest.approx(t[col], rel=5e-4)  # 4 significant digits
        assert int(row["Q_T"]) == t["final_Q_T"] and int(row["evaluations"]) == t["diag_evaluations"]
        assert int(row["d"]) == t["d"] and int(row["seed"]) == t["cfg.seed"]
    # Q_T at the logged tolerance, recomputed from the residuals, is the logged Q_T
    for tid, row in page.records("q-t-sensitivity").items():
        assert int(row["ρ≤1e-08"]) == int(row["Q_T (logged)"]) == trials.loc[tid, "final_Q_T"]
    # mean (sample std) over seeds of the final training error, in percent, per dataset × m_c × variant
    t = res.trials.assign(variant=[f"ee c={c:g}" if ee else "standard"  # the trial names' labels
                                   for ee, c in zip(res.trials["cfg.ee.enabled"], res.trials["cfg.ee.m_H_factor"])])
    expected = (t["final_train_error"] * 100).groupby([t["dataset"], t["cfg.model.lenet_mc"], t["variant"]])
    table = Tables(index.read_text()).tables["outcome-train"]
    assert table["head"] == ["dataset", "m_c", "ee c=0.5", "ee c=2", "standard"]
    assert all(name.split(" data=")[0] in table["head"] for name in res.trials["trial_name"])  # one name each
    assert len(table["rows"]) == 4
    for _, cells in table["rows"]:
        for variant, cell in zip(table["head"][2:], cells[2:]):
            values = expected.get_group((cells[0], int(cells[1]), variant))
            std = f"{values.std(ddof=1):.2f}" if len(values) > 1 else "–"
            assert cell == f"{values.mean():.2f} ({std})"
    survival = page.records("survival")  # per dataset and model family: 2 standard and 4 EE trials each
    assert set(survival) == {f"{d}, {f}" for d in ("digits16", "random16") for f in ("ee", "standard")}
    assert all(int(r["trials"]) == (4 if key.endswith("ee") else 2) and int(r["seeds"]) == 1
               for key, r in survival.items())
    assert all(r["verdict"].startswith("not stable: 1 seed(s): too few") and r["stability"] == "–"
               for r in survival.values())
    assert "with a single seed the intervals resample trials, not seeds" in index.read_text()


def test_a_smoke_report_says_so_before_anything_else(width_report):
    page = width_report[1].read_text()
    assert "profile: smoke" in page
    first_note = re.search(r'<p class="note">(.*?)</p>', page).group(1)
    assert first_note.startswith("<strong>Smoke profile</strong>") and "say nothing about the question" in first_note


def _overlapping_labels(ax) -> list[tuple[str, str]]:
    """Pairs of neighbouring x tick labels whose drawn boxes intersect."""
    boxes = [(t.get_text(), t.get_window_extent()) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    boxes.sort(key=lambda b: b[1].x0)
    return [(a[0], b[0]) for a, b in zip(boxes, boxes[1:]) if a[1].x1 > b[1].x0]


@pytest.mark.parametrize("sizes", [(68_770, 271_802), (6_956, 27_352), (2_330, 8_884), (1_000, 2_000_000)])
def test_the_size_axis_labels_do_not_overlap(sizes):
    """The width sweep's 'error ~ size' panels of two sizes each (its smoke run's: 68,770 and 271,802 parameters)
    wrote eleven six-digit labels (50000 ... 300000) into one axis, overlapping."""
    import numpy as np

    from eeray.analysis import plots, stats
    from eeray.analysis.measures import trial_measures

    res = planted_results("size", seeds=range(3), widths=range(1, 5))
    measures = trial_measures(res)
    measures["d"] = np.where(np.arange(len(measures)) % 2, *sizes).astype(float)
    fig = plots.plot_associations(measures, stats.association_table(measures, n_boot=50, seed=0), by=stats.BY)
    fig.canvas.draw()
    size_axes = [ax for ax in fig.axes if ax.get_xlabel() == "d"]
    assert size_axes and all(len(ax.get_xticklabels()) >= 2 for ax in size_axes)
    assert [p for ax in size_axes for p in _overlapping_labels(ax)] == []


def test_report_renders_in_chromium_with_every_figure_loaded(width_report, chromium, tmp_path):
    _, index = width_report
    figures = sorted(p.name for p in (index.parent / "figures").glob("*.png"))
    assert figures == ["associations.png", "delta_m.png", "lemma5.png", "partial_intervals.png",
                       "training_curves.png"]
    assert all((index.parent / "figures" / f.replace(".png", ".svg")).stat().st_size > 0 for f in figures)
    # the page as written plus one script that reports, once everything has loaded, what each <img> became
    probe = index.parent / "_probe.html"
    probe.write_text(index.read_text().replace("</body>", """<script>
      window.addEventListener("load", () => {
        const imgs = [...document.images].map(i => ({src: i.getAttribute("src"), ok: i.complete && i.naturalWidth > 0,
                                                    w: i.naturalWidth}));
        const ids = [...document.querySelectorAll("nav a")].map(a => a.getAttribute("href").slice(1));
        const out = document.createElement("pre"); out.id = "probe";
        out.textContent = JSON.stringify({imgs, missing: ids.filter(id => !document.getElementById(id))});
        document.body.appendChild(out);
      });</script></body>"""))
    dom = chromium(probe.as_uri(), "--dump-dom", "--virtual-time-budget=10000", "--window-size=1400,2400")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run: the page did not finish loading"
    probe_result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert sorted(Path(i["src"]).name for i in probe_result["imgs"]) == figures
    assert all(i["ok"] and i["w"] > 300 for i in probe_result["imgs"]), probe_result["imgs"]
    assert probe_result["missing"] == []  # every table-of-contents link has its section
    assert "Size or alignment?" in dom and "Which association survives controlling for the other" in dom
    shot = tmp_path / "report.png"
    chromium(index.as_uri(), f"--screenshot={shot}", "--window-size=1400,2400", "--virtual-time-budget=10000")
    assert shot.stat().st_size > 50_000  # a rendered page with figures, not a blank one


def test_sine_wave_report_puts_the_lemma5_table_first_and_matches_safety(smoke, tmp_path):
    results_dir, _ = smoke("sine_wave")
    index = write_report(results_dir, "sine_wave", tmp_path / "report", n_boot=50)
    page = index.read_text()
    sections = re.findall(r'<section id="([^"]+)"', page)
    assert sections[:2] == ["lemma5", "training-curves"] and "trials" in sections and "verdict" not in sections
    res = load(results_dir, "sine_wave")
    lemma5 = res.safety[res.safety["kind"] == "lemma5"].set_index("trial_id")
    trials = res.trials.set_index("trial_id")
    rows = Tables(page).records("lemma5")
    ee = set(trials.index[trials["cfg.ee.enabled"]])
    assert set(rows) == ee == set(lemma5.index)  # every A trial, only A trials
    for tid, row in rows.items():
        assert int(row["rank at θ^τ"]) == lemma5.loc[tid, "second_rank"] and int(row["n"]) == 100
        assert _number(row["final_train_error"]) == pytest.approx(trials.loc[tid, "final_train_error"], rel=5e-4)
        full, zero = lemma5.loc[tid, "second_rank"] == 100, trials.loc[tid, "final_train_error"] == 0
        assert row["rank = n"] == ("yes" if full else "no") and row["agrees"] == ("yes" if full == zero else "no")
    assert (tmp_path / "report" / "figures" / "lemma5.svg").exists()


def _write(res, results_dir: Path, study: str) -> None:
    """Store frames shaped like ``load()``'s output as a study's Parquet dataset, as the driver would."""
    writer = ResultsWriter(results_dir, study)

    def plain(row: dict) -> dict:  # the writer adds the keys; a missing value is left out (null)
        return {k: v for k, v in row.items() if k not in ("study", "trial_id", "dataset") and not pd.isna(v)}

    for row in res.trials.to_dict("records"):
        writer.write_trial(row["trial_id"], plain(row), row["dataset"])
    for tid, g in res.diagnostics.groupby("trial_id"):
        writer.write_chunk("diagnostics", tid, "000000390-end", [plain(r) for r in g.to_dict("records")], "random16")


def test_report_of_another_study_with_a_failed_trial(tmp_path):
    res = planted_results("alignment", seeds=range(6), widths=range(1, 5))  # error driven by alignment
    failed = res.trials.index[0]
    res.trials.loc[failed, ["status", "failure_reason", "final_train_error"]] = ["failed", "diverged at step 30", None]
    _write(res, tmp_path / "results", "planted")
    index = write_report(tmp_path / "results", "planted", n_boot=300)
    assert index == tmp_path / "results" / "planted" / "report" / "index.html"  # beside the study's Parquet
    assert len(load(tmp_path / "results", "planted").trials) == 24  # which the report does not disturb
    page = index.read_text()
    sections = re.findall(r'<section id="([^"]+)"', page)
    assert sections == ["verdict", "training-curves", "associations", "outcomes", "q-t-sensitivity", "trials"]
    assert "1 trial(s) failed: m_c=1 seed=0" in page
    assert "profile: not recorded" in page and "Smoke profile" not in page  # written without the CLI
    tables = Tables(page)
    row = tables.records("trials")[res.trials.loc[failed, "trial_id"]]
    assert row["status"] == "failed" and row["failure_reason"] == "diverged at step 30"
    verdict = tables.records("survival")["random16, standard"]
    assert (verdict["trials"], verdict["seeds"], verdict["intervals resample"]) == ("23", "6", "seeds")
    assert verdict["alignment survives"] == "yes" and re.fullmatch(r"\d+% of 200", verdict["stability"])
    share = int(verdict["stability"].split("%")[0]) / 100
    assert verdict["verdict"].startswith("error follows alignment;" if share >= 0.8 else "not stable: only")
    assert "simulated reruns" in page and "per model family" in page


def test_report_command_errors_name_the_argument(tmp_path, capsys):
    (tmp_path / "results" / "width_sweep" / "trials").mkdir(parents=True)
    assert main(["report", str(tmp_path / "results"), "--study", "sine_wave"]) == 2
    err = capsys.readouterr().err
    assert "study 'sine_wave' has no results under" in err and "studies there: ['width_sweep']" in err
    assert main(["report", str(tmp_path / "missing"), "--study", "sine_wave"]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "results"), "--study", "width_sweep"]) == 2
    assert "has no trials for study 'width_sweep'" in capsys.readouterr().err
