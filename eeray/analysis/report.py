"""The study report: one static HTML page with the figures (PNG beside it, SVG linked) and tables a researcher
opens first, from the Parquet results alone.

    python -m eeray.analysis report results --study width_sweep      # -> results/width_sweep/report/index.html

The page is deterministic for given results (no timestamps; the bootstrap is seeded), so two reports of the same
results are byte-identical and a diff shows what changed.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

from eeray.analysis import markup as h
from eeray.analysis.measures import RESULTS_ENV, load_results, trial_measures
from eeray.analysis.sections import DEFAULT_SECTIONS, SECTIONS, STUDY_SECTIONS, Context, Omit
from eeray.identity import EXECUTION_FILE


def available_studies(results_dir: str | os.PathLike) -> list[str]:
    """Studies with a Parquet ``trials`` table under ``results_dir``."""
    root = Path(results_dir)
    return sorted(p.parent.name for p in root.glob("*/trials") if p.is_dir()) if root.is_dir() else []


def check_study(results_dir: str | os.PathLike, study: str) -> None:
    """Raise ValueError naming the argument and the valid choices when ``study`` has no results there."""
    if not Path(results_dir).is_dir():
        raise ValueError(f"results_dir {str(results_dir)!r} is not a directory (pass the --results-dir a study "
                         f"wrote to; default ./results)")
    have = available_studies(results_dir)
    if study not in have:
        raise ValueError(f"study {study!r} has no results under {str(results_dir)!r}; studies there: {have or 'none'} "
                         f"(pass the --results-dir the study wrote to, or set {RESULTS_ENV})")


def recorded_profile(results_dir: Path, study: str) -> str | None:
    """The profile the study ran with (``--smoke``, ``--profile``), from its execution.json; None when the study has
    none (rows written without the CLI, e.g. by ``eeray.branching``'s Ray-free runner)."""
    path = results_dir / study / EXECUTION_FILE
    return json.loads(path.read_text())["profile"] if path.is_file() else None


def _meta(ctx: Context, results_dir: Path, study: str, profile: str | None) -> str:
    m = ctx.measures
    done = int((m["status"] == "completed").sum())
    seeds = sorted(m["seed"].dropna().astype(int).unique().tolist())
    commits = sorted(ctx.results.trials["git_commit"].dropna().astype(str).str[:10].unique().tolist())
    parts = [f"results <code>{html.escape(str(results_dir / study))}</code>",
             f"profile: {html.escape(profile or 'not recorded')}",
             f"{len(m)} trials ({done} completed, {len(m) - done} failed)",
             f"datasets: {html.escape(', '.join(sorted(m['dataset'].astype(str).unique())))}",
             f"seeds: {html.escape(', '.join(map(str, seeds)))}",
             f"eeray commit: {html.escape(', '.join(commits) or 'unknown')}"]
    return " · ".join(parts)


def write_report(results_dir: str | os.PathLike, study: str, out_dir: str | os.PathLike | None = None, *,
                 n_boot: int = 1000, seed: int = 0) -> Path:
    """Write ``<out_dir>/index.html`` (default ``<results_dir>/<study>/report``) and its figures; return the page.

    Raises ValueError for a missing results directory, a study without results (naming the studies that have
    some) or a study without trials."""
    check_study(results_dir, study)
    results_dir = Path(results_dir).resolve()
    out = Path(out_dir) if out_dir is not None else results_dir / study / "report"
    out.mkdir(parents=True, exist_ok=True)
    res = load_results(results_dir, study)
    ctx = Context(res, trial_measures(res), out.resolve(), n_boot=n_boot, seed=seed)
    sections, notes = [], []
    for sid in STUDY_SECTIONS.get(study, DEFAULT_SECTIONS):
        heading, build = SECTIONS[sid]
        try:
            sections.append((sid, heading, build(ctx)))
        except Omit as why:
            if study in STUDY_SECTIONS:  # a section this study is expected to have: say why it is missing
                notes.append(f"Left out “{html.escape(heading)}”: {html.escape(str(why))}.")
    failed = ctx.measures[ctx.measures["status"] != "completed"]
    if len(failed):
        notes.insert(0, f"{len(failed)} trial(s) failed: " + html.escape(", ".join(failed["trial_name"])) +
                     " (see the Trials table for the reasons; statistics use completed trials only).")
    profile = recorded_profile(results_dir, study)
    if profile == "smoke":  # first: every number below is from the pipeline check, not from the study
        notes.insert(0, "<strong>Smoke profile</strong>: a few epochs and seeds that check the pipeline end to end. "
                        "The tables and verdicts below come from that tiny run and say nothing about the question; "
                        "run the study without <code>--smoke</code> for results.")
    page = h.page(f"{study}: eeray study report", _meta(ctx, results_dir, study, profile), sections, notes)
    keep = {p.resolve() for p in ctx.figures} | {p.with_suffix(".svg").resolve() for p in ctx.figures}
    for stale in (out / "figures").glob("*.*"):  # figures of an earlier report that this one no longer has
        if stale.suffix in (".png", ".svg") and stale.resolve() not in keep:
            stale.unlink()
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
