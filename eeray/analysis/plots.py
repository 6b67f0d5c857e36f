"""Figures from the Parquet results: Fig.-1 style training error and Q_T against step, ‖M(θ_t) − M(θ_0)‖_F²
against step (Fig. 3), correlation scatter plots and interval (forest) plots, the Lemma-5 plot and mean ± std
curves (Fig. 4).

Every function returns a ``matplotlib.figure.Figure`` built without pyplot, so nothing depends on (or changes) the
active backend: files are written by the Agg/SVG canvases (:func:`save_figure`), and a notebook displays the
returned figure inline.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator, NullFormatter

from eeray.results import Results

STYLES = ("-", "--", ":", "-.")
PHASE_ORDER = {"explore": 0, "exploit": 1}


def save_figure(fig: Figure, directory: str | os.PathLike, name: str, dpi: int = 110) -> dict[str, Path]:
    """Write ``<directory>/<name>.png`` and ``.svg``; returns both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {ext: directory / f"{name}.{ext}" for ext in ("png", "svg")}
    fig.savefig(paths["png"], dpi=dpi)
    fig.set_layout_engine("none")  # the layout is settled by the first save: the SVG reuses it (half the time)
    with rc_context({"svg.hashsalt": name}):  # stable element ids and no date: same results, same bytes
        fig.savefig(paths["svg"], metadata={"Date": None})
    return paths


def _grid(nrows: int, ncols: int, w: float = 3.6, h: float = 2.6):
    fig = Figure(figsize=(max(ncols * w, 5.0), nrows * h + 0.6), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _label(col: str, value) -> str:
    name = col.split(".")[-1] if col.startswith("cfg.") else col
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if col in ("method", "variant", "dataset", "setting") else f"{name}={value}"


def _palette(values) -> dict:
    values = sorted(pd.unique(pd.Series(values).dropna()), key=str)
    cmap = colormaps["tab10" if len(values) <= 10 else "viridis"]
    n = max(len(values) - 1, 1)
    return {v: cmap(i if len(values) <= 10 else i / n) for i, v in enumerate(values)}


def _keys(frame: pd.DataFrame, col: str | None) -> list:
    return [None] if col is None else sorted(pd.unique(frame[col]), key=str)


def _legend(fig: Figure, colors: dict, hue: str, styles: dict, style: str | None) -> None:
    handles = [Line2D([], [], color=c, label=_label(hue, v)) for v, c in colors.items()]
    if style and len(styles) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=s, label=_label(style, v)) for v, s in styles.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")


def _curves(fig, axes, frames: list[tuple[pd.DataFrame, str, str, bool]], measures: pd.DataFrame, row, col, hue,
            style, taus: pd.Series) -> None:
    """Shared body of the per-step figures: ``frames`` = (long frame, y column, y label, log y) per sub-column."""
    rows, cols = _keys(measures, row), _keys(measures, col)
    colors = _palette(measures[hue])
    if style and measures[style].nunique() > len(STYLES):
        style = None  # more seeds than line styles: repeated styles would suggest pairs that are not there
    styles = {v: STYLES[i] for i, v in enumerate(_keys(measures, style))} if style else {}
    for i, rv in enumerate(rows):
        for j, cv in enumerate(cols):
            mask = pd.Series(True, index=measures.index)
            mask &= (measures[row] == rv) if row else True
            mask &= (measures[col] == cv) if col else True
            ids = measures.index[mask]
            for k, (frame, ycol, ylabel, logy) in enumerate(frames):
                ax = axes[i, j * len(frames) + k]
                for tid in ids:
                    f = frame[frame["trial_id"] == tid]
                    f = f[f[ycol] > 0] if logy else f
                    if f.empty:
                        continue
                    m = measures.loc[tid]
                    ax.plot(f["step"], f[ycol], color=colors.get(m[hue], "0.5"),
                            linestyle=styles.get(m[style], "-") if style else "-", linewidth=1.3,
                            drawstyle="steps-post" if ycol == "q_t" else "default")
                for tau in sorted(set(taus.reindex(ids).dropna())):
                    ax.axvline(tau, color="0.6", linestyle=":", linewidth=1)
                if logy:
                    ax.set_yscale("log")
                    ax.yaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels crowd
                if ycol == "q_t":
                    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count
                    ax.set_ylim(-0.2, max(1.2, ax.get_ylim()[1]))  # a flat Q_T = 0 still reads as 0
                title = " · ".join(_label(c, v) for c, v in ((row, rv), (col, cv)) if c)
                ax.set_title(f"{title}\n{ylabel}" if title else ylabel, fontsize="small")
                ax.set_xlabel("step", fontsize="small")
                ax.tick_params(labelsize="x-small")
    _legend(fig, colors, hue, styles, style)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    order = frame["phase"].map(PHASE_ORDER).fillna(2)  # at τ: the explore row, then the exploit row
    return frame.assign(_p=order).sort_values(["trial_id", "step", "_p"], kind="stable")


def plot_training_curves(results: Results, measures: pd.DataFrame, *, metric: str = "train_error",
                         row: str | None = "variant", col: str | None = "dataset", hue: str = "m_c",
                         style: str | None = "seed") -> Figure:
    """Fig. 1: ``metric`` and Q_T (eq 7, evaluated steps) against the optimizer step, one pair of panels per
    (``row``, ``col``) value, colour = ``hue``, line style = ``style`` (up to 4 values); dotted lines mark τ.
    Q_T is counted from the logged ``aligned`` decisions, as in :func:`eeray.analysis.trial_measures`."""
    if measures[hue].isna().all():
        hue = "setting"  # e.g. m_c for a non-LeNet study
    frames = []
    if not results.steps.empty:
        frames.append((_ordered(results.steps), metric, metric.replace("_", " "), False))
    if not results.diagnostics.empty:
        diag = _ordered(results.diagnostics)
        failed = ~diag["aligned"].fillna(False).astype(bool)
        frames.append((diag.assign(q_t=failed.groupby(diag["trial_id"]).cumsum()), "q_t",
                       "Q_T (evaluations not aligned)", False))
    if not frames:
        raise ValueError("no steps and no diagnostics were logged: nothing to draw against the step")
    fig, axes = _grid(len(_keys(measures, row)), len(_keys(measures, col)) * len(frames))
    _curves(fig, axes, frames, measures, row, col, hue, style, results.trials.set_index("trial_id")["tau_step"])
    return fig


def plot_delta_m(results: Results, measures: pd.DataFrame, *, row: str | None = "variant", col: str | None = "dataset",
                 hue: str = "m_c", style: str | None = "seed") -> Figure:
    """Fig. 3: ‖M(θ_t) − M(θ_0)‖_F² against the step (log scale; step 0 is 0 by definition and not drawn)."""
    if results.diagnostics.empty or results.diagnostics["delta_m_fro_sq"].isna().all():
        raise ValueError("no ‖ΔM‖ values in diagnostics: the study ran with diag.delta_m = False")
    if measures[hue].isna().all():
        hue = "setting"
    fig, axes = _grid(len(_keys(measures, row)), len(_keys(measures, col)))
    _curves(fig, axes, [(_ordered(results.diagnostics), "delta_m_fro_sq", "‖M(θ_t) − M(θ_0)‖_F²", True)], measures,
            row, col, hue, style, results.trials.set_index("trial_id")["tau_step"])
    return fig


def _group_of(frame: pd.DataFrame, by: str | Sequence[str]) -> pd.Series:
    """The group label of each row: the values of the ``by`` columns joined ('digits16, ee')."""
    cols = [by] if isinstance(by, str) else list(by)
    return frame[cols].astype(str).agg(", ".join, axis=1) if len(frame) else pd.Series([], dtype=str)


def _no_groups(measures: pd.DataFrame | None, what: str) -> Figure:
    """A figure saying why there is nothing to plot: no group has a completed trial with the measures (every trial
    failed, say), so there is no correlation to show. An empty grid would be an error, and a blank figure would
    read as a plotting bug."""
    fig = Figure(figsize=(6.4, 1.6), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    counts = "" if measures is None or "status" not in measures.columns else " (" + ", ".join(
        f"{n} {s}" for s, n in measures["status"].value_counts().sort_index().items()) + ")"
    ax.text(0.5, 0.5, f"{what}: no completed trial to correlate{counts}", ha="center", va="center",
            fontsize="small", wrap=True)
    return fig


def plot_associations(measures: pd.DataFrame, associations: pd.DataFrame, *, outcome: str = "final_train_error",
                      alignment: str = "aligned_fraction", size: str = "d",
                      by: str | Sequence[str] = ("dataset", "family")) -> Figure:
    """Scatter plots per group (default: per dataset and model family, as :func:`association_table` groups):
    outcome against alignment and against size (log x), colour = method; each title gives Spearman ρ with its
    bootstrap interval."""
    measures = measures.assign(_group=_group_of(measures, by))
    associations = associations.assign(_group=_group_of(associations, by))
    by = "_group"
    groups = sorted(associations[by].unique(), key=str)
    if not groups:
        return _no_groups(measures, "error ~ alignment and error ~ size")
    fig, axes = _grid(len(groups), 2, w=4.2, h=3.0)
    colors = _palette(measures["method"])
    for i, gv in enumerate(groups):
        data = measures[(measures[by] == gv) & (measures["status"] == "completed")]
        for j, (x, name) in enumerate(((alignment, "error ~ alignment"), (size, "error ~ size"))):
            ax = axes[i, j]
            for method, g in data.groupby("method"):
                ax.scatter(g[x], g[outcome], s=22, alpha=0.75, color=colors[method], label=method)
            if j == 1:
                _size_axis(ax, data[x])
            a = associations[(associations[by] == gv) & (associations["association"] == name)].iloc[0]
            ci = f"[{a.spearman_lo:+.2f}, {a.spearman_hi:+.2f}]" if np.isfinite(a.spearman_lo) else "[–]"
            rho = f"{a.spearman:+.2f} {ci}" if np.isfinite(a.spearman) else "undefined"
            ax.set_title(f"{gv}: Spearman ρ = {rho}\n{a.n_trials} trials, {a.n_seeds} seed(s)", fontsize="small")
            ax.set_xlabel(x, fontsize="small")
            ax.set_ylabel(outcome, fontsize="small")
            ax.tick_params(labelsize="x-small")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=m) for m, c in colors.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize="small")
    return fig


def _size_axis(ax, values: pd.Series) -> None:
    """The size axis (parameter counts, 10³–10⁶): log when it spans more than a decade, at most five compact labels
    ("75k", "1M") either way. Matplotlib's defaults wrote nine six-digit labels into one 4-inch axis, overlapping."""
    if len(values) and (values > 0).all() and values.max() > 10 * values.min():
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # log axes label minor ticks too when they span few decades
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def plot_partial_intervals(associations: pd.DataFrame, by: str | Sequence[str] = ("dataset", "family")) -> Figure:
    """Forest plot: both partial rank correlations per group with their bootstrap intervals; an interval that
    crosses the zero line means the association does not survive controlling for the other variable."""
    rows = associations[associations["association"].str.contains("|", regex=False)].reset_index(drop=True)
    if rows.empty:
        return _no_groups(None, "partial rank correlations")
    rows = rows.assign(_group=_group_of(rows, by))
    by = "_group"
    fig = Figure(figsize=(7.0, 0.45 * len(rows) + 1.4), layout="constrained")
    ax = fig.subplots()
    colors = {"error ~ alignment | size": "tab:blue", "error ~ size | alignment": "tab:orange"}
    y = np.arange(len(rows))[::-1]
    for yi, (_, r) in zip(y, rows.iterrows()):
        c = colors[r["association"]]
        if np.isfinite(r["spearman_lo"]):
            ax.plot([r["spearman_lo"], r["spearman_hi"]], [yi, yi], color=c, linewidth=2.5)
        if np.isfinite(r["spearman"]):
            ax.plot(r["spearman"], yi, "o", color=c)
        else:  # a constant column: say so where the interval would be
            ax.text(-0.98, yi, "undefined: a column is constant", va="center", fontsize="x-small", color="0.4")
    ax.axvline(0, color="0.3", linewidth=1)
    ax.set_yticks(y, [f"{r[by]}: {r['association']}" for _, r in rows.iterrows()], fontsize="small")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("partial Spearman ρ with 95% bootstrap interval", fontsize="small")
    return fig


def plot_lemma5(table: pd.DataFrame) -> Figure:
    """Final training error of every A trial against the Lemma-5 numerical rank of its exploitation features at
    θ^τ, relative to n (the theory: zero error is reachable exactly at rank/n = 1); filled = certified; a triangle
    marks a rank that was not computed but is bounded by m_H·m_{H−1} < n."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    colors = _palette(table["setting"])
    for _, r in table.iterrows():
        known = np.isfinite(r["lemma5_rank"])
        x = (r["lemma5_rank"] if known else r["lemma5_rank_bound"]) / r["lemma5_n"]
        c = colors[r["setting"]]
        ax.scatter(x, r["final_train_error"], s=40, marker="o" if known else "<",
                   color=c if bool(r["lemma5_certified"]) else "none", edgecolors=c)
    ax.axvline(1.0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlabel("numerical rank at θ^τ / n  (smallest over heads)", fontsize="small")
    ax.set_ylabel("final training error", fontsize="small")
    ax.set_xlim(-0.02, 1.05)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=s) for s, c in colors.items()]
    handles += [Line2D([], [], marker="o", linestyle="", color="0.3", markerfacecolor="none",
                       label="hollow: not certified"),
                Line2D([], [], marker="<", linestyle="", color="0.3", markerfacecolor="none",
                       label="rank ≤ m_H·m_{H−1} < n (bound)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="x-small")
    return fig


def plot_mean_curves(results: Results, measures: pd.DataFrame, *, metric: str = "train_loss", hue: str = "setting",
                     col: str | None = None, logy: bool = False) -> Figure:
    """Fig. 4: mean ± 1 sample std over seeds of ``metric`` against the step, one line per ``hue`` value."""
    steps = _ordered(results.steps).drop_duplicates(["trial_id", "step"], keep="last")  # after the switch at τ
    steps = steps.join(measures[[hue] + ([col] if col else [])], on="trial_id")
    cols = _keys(measures, col)
    fig, axes = _grid(1, len(cols), w=5.0, h=3.6)
    colors = _palette(measures[hue])
    for j, cv in enumerate(cols):
        ax = axes[0, j]
        data = steps if col is None else steps[steps[col] == cv]
        for hv, g in data.groupby(hue, sort=True):
            s = g.groupby("step")[metric].agg(["mean", "std", "count"])
            ax.plot(s.index, s["mean"], color=colors[hv], linewidth=1.3)
            band = s["std"].fillna(0)
            ax.fill_between(s.index, s["mean"] - band, s["mean"] + band, color=colors[hv], alpha=0.2, linewidth=0)
        if logy and (data[metric] > 0).all():
            ax.set_yscale("log")
        ax.set_title(_label(col, cv) if col else metric.replace("_", " "), fontsize="small")
        ax.set_xlabel("step", fontsize="small")
        ax.set_ylabel(f"{metric} (mean ± std over seeds)", fontsize="small")
    _legend(fig, colors, hue, {}, None)
    return fig
