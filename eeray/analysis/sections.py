"""The report's sections. Each takes the :class:`Context` and returns its HTML body, or raises :class:`Omit` with
the reason when the study's data cannot support it (e.g. no alignment diagnostics): the report lists what it
left out and why, instead of drawing empty panels."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from eeray.analysis import markup as h
from eeray.analysis import plots, stats, tables
from eeray.analysis.measures import q_t_sensitivity, setting_columns
from eeray.results import Results


class Omit(Exception):
    """This section does not apply to the study's data; the message says why."""


def _or_omit(build, *args):
    """``build(*args)``, a plot or table builder that raises ValueError when the data cannot support it."""
    try:
        return build(*args)
    except ValueError as exc:
        raise Omit(str(exc)) from None


@dataclass
class Context:
    results: Results
    measures: pd.DataFrame
    out_dir: Path
    n_boot: int = 1000
    seed: int = 0
    figures: list[Path] = field(default_factory=list)

    @cached_property
    def associations(self) -> pd.DataFrame:
        """Per dataset and model family (standard and EE parameter counts are not comparable)."""
        return stats.association_table(self.measures, n_boot=self.n_boot, seed=self.seed)

    @cached_property
    def stability(self) -> pd.DataFrame:
        return stats.verdict_stability(self.measures, n_boot=self.n_boot, seed=self.seed)

    def figure(self, fig, name: str, caption: str, alt: str) -> str:
        paths = plots.save_figure(fig, self.out_dir / "figures", name)
        self.figures.append(paths["png"])
        return h.figure(paths, self.out_dir, caption, alt)

    def completed(self) -> pd.DataFrame:
        return self.measures[self.measures["status"] == "completed"]


def _needs_diagnostics(ctx: Context) -> None:
    if ctx.results.diagnostics.empty:
        raise Omit("no alignment diagnostics were logged (diag.alignment = False)")


def _row_facets(ctx: Context) -> list[str]:
    """Config columns that split the settings apart other than the dataset and the EE knobs (rows of the mean (std)
    tables; e.g. m_c in the width sweep, the learning rate in the optimizer sweep)."""
    cols = [c for c in setting_columns(ctx.results.trials) if not c.startswith("cfg.ee.") and c != "cfg.data.name"]
    return ["m_c" if c == "cfg.model.lenet_mc" else c for c in cols]


# --------------------------------------------------------------------------- size versus alignment
def _with_interval(estimate: float, lo: float, hi: float) -> str:
    if not np.isfinite(estimate):
        return "undefined"
    return f"{estimate:+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else f"{estimate:+.3f} [–]"


def verdict(ctx: Context) -> str:
    _needs_diagnostics(ctx)
    assoc = ctx.associations
    if assoc.empty:
        raise Omit("no completed trial has an outcome, an alignment measure and a size")
    survival = stats.survival_table(assoc, ctx.stability).set_index(list(stats.BY))
    survival["stability"] = [f"{v:.0%} of {n}" if np.isfinite(v) else "–"
                             for v, n in zip(survival["stability"], survival["resamples"])]
    survival = survival.drop(columns=["resamples", "stable"])
    detail = assoc.assign(
        spearman=[_with_interval(r.spearman, r.spearman_lo, r.spearman_hi) for r in assoc.itertuples()],
        kendall=[_with_interval(r.kendall, r.kendall_lo, r.kendall_hi) if r.association not in stats.PARTIALS
                 else "–" for r in assoc.itertuples()])
    detail = detail[[*stats.BY, "association", "n_trials", "n_seeds", "spearman", "spearman_p", "kendall",
                     "kendall_p", "excludes_zero"]].set_index([*stats.BY, "association"])
    detail = detail.rename(columns={
        "n_trials": "trials", "n_seeds": "seeds", "spearman": "Spearman ρ [95% interval]", "spearman_p": "p (Spearman)",
        "kendall": "Kendall τ-b [95% interval]", "kendall_p": "p (Kendall)",
        "excludes_zero": "Spearman interval excludes 0"})
    units = set(assoc["unit"])
    warn = ""
    if "trials" in units or assoc["n_seeds"].min() < 5:
        warn = h.paragraph("Few seeds: " + ("with a single seed the intervals resample trials, not seeds, and "
                           "understate the uncertainty. " if "trials" in units else "") +
                           f"At least 5 seeds per setting are needed for intervals to mean much "
                           f"(this study has {int(assoc['n_seeds'].min())}).", "note")
    resamples = int(ctx.stability["resamples"].max()) if len(ctx.stability) else 0
    return "".join([
        h.paragraph("Does the final training error follow network <b>size</b> (d) directly, or only through the "
                    "<b>data-architecture alignment</b> condition (aligned fraction 1 − Q_T/evaluations)? "
                    "Per dataset and per model family (standard and EE models separately: the EE heads make their "
                    "parameter counts incomparable with the standard models', so pooled, size would partly encode "
                    "the family): rank partial correlations (partial Spearman) with 95% percentile "
                    f"intervals from a cluster bootstrap that resamples seeds ({ctx.n_boot} resamples, "
                    f"seed {ctx.seed}). An association <i>survives</i> when its interval excludes 0."), warn,
        h.paragraph(f"<b>Stability</b>: the share of {resamples} simulated reruns — the seeds drawn with "
                    "replacement, each rerun judged by its own seed bootstrap — that reach the same verdict (a "
                    f"double cluster bootstrap). Below {stats.STABLE_SHARE:.0%} the verdict is reported as not "
                    "stable instead of being stated."),
        h.table(survival, "survival", "Which association survives controlling for the other, and how stable "
                "that answer is", row_ids=[", ".join(map(str, k)) for k in survival.index]),
        ctx.figure(plots.plot_partial_intervals(assoc, by=stats.BY),
                   "partial_intervals", "Partial rank correlations with their bootstrap intervals, per dataset and "
                   "model family; an interval across the zero line does not survive.", "forest plot"),
        h.table(detail, "associations", "All associations: Spearman ρ and Kendall τ-b with 95% intervals and "
                "p-values (partial Spearman: t on n − 3 df; Kendall's partial τ is not a test of conditional "
                "independence and is not shown)")])


def associations(ctx: Context) -> str:
    _needs_diagnostics(ctx)
    if ctx.associations.empty:
        raise Omit("no completed trial has an outcome, an alignment measure and a size")
    return ctx.figure(plots.plot_associations(ctx.measures, ctx.associations, by=stats.BY), "associations",
                      "Final training error against alignment (aligned fraction) and against size (d), per dataset "
                      "and model family (standard and EE sizes are not comparable, so they are never pooled); "
                      "titles give Spearman ρ with its bootstrap interval.", "correlation scatter plots")


def q_t_sensitivity_section(ctx: Context) -> str:
    _needs_diagnostics(ctx)
    sens = q_t_sensitivity(ctx.results.diagnostics)
    tol = float(ctx.results.diagnostics["tol"].dropna().iloc[0])
    sens.insert(0, "trial", ctx.measures["trial_name"].reindex(sens.index))
    sens.insert(2, "Q_T (logged)", ctx.measures["Q_T"].reindex(sens.index))
    sens = sens.sort_values("trial", kind="stable")
    text = ("Q_T recomputed from the logged residuals ρ at other membership tolerances (columns <i>ρ≤tol</i>), "
            "and with the rank cut moved to κ·λ_max through the spectral energy e(κ) at the stored tolerance "
            f"(columns <i>e(κ)≤{tol:.0e}</i>). A count that moves with the tolerance is a numerical, not a "
            "structural, verdict.")
    return h.paragraph(text) + h.table(sens.set_index("trial"), "q-t-sensitivity",
                                       "Q_T per trial under a tolerance sweep", row_ids=sens.index)


# --------------------------------------------------------------------------- curves
def training_curves(ctx: Context) -> str:
    fig = _or_omit(plots.plot_training_curves, ctx.results, ctx.measures)
    return ctx.figure(fig, "training_curves", "Fig. 1 style: full-training-set error (left of each pair) and Q_T "
                      "(right) against the optimizer step, per variant and dataset; colour = m_c (or setting), line "
                      "style = seed; dotted lines mark the switch τ (the error is shown before and after it).",
                      "training error and Q_T against step")


def delta_m(ctx: Context) -> str:
    fig = _or_omit(plots.plot_delta_m, ctx.results, ctx.measures)
    return ctx.figure(fig, "delta_m", "Fig. 3 style: ‖M(θ_t) − M(θ_0)‖_F² (change of the gradient representation) "
                      "against the step, log scale; dotted lines mark τ.", "delta M against step")


def loss_curves(ctx: Context) -> str:
    col = "cfg.optim.lr" if ctx.measures["cfg.optim.lr"].nunique() > 1 else None
    fig = plots.plot_mean_curves(ctx.results, ctx.measures, metric="train_loss", hue="variant", col=col)
    return ctx.figure(fig, "loss_curves", "Fig. 4 style: training loss (clean training set, eval mode), mean ± 1 "
                      "sample std over seeds, per variant" + (" and learning rate." if col else "."), "training loss")


# --------------------------------------------------------------------------- tables
def outcome_tables(ctx: Context) -> str:
    index = ["dataset"] + _row_facets(ctx)
    out = []
    for value, tid, name in (("final_train_error", "outcome-train", "Final training error (%)"),
                             ("final_test_error", "outcome-test", "Final test error (%)")):
        t = tables.mean_std_table(ctx.measures, value, index, ["variant"], scale=100)
        out.append(h.table(t, tid, f"{name}: mean (sample std) over seeds"))
    return h.paragraph("Tables 3/4 style: mean (std) over seeds, std with ddof = 1; '(–)' marks a single seed.") + \
        "".join(out)


def learning_rate(ctx: Context) -> str:
    if ctx.measures["cfg.optim.lr"].nunique() < 2:
        raise Omit("a single learning rate")
    t = tables.mean_std_table(ctx.measures, "final_test_error", ["variant"], ["cfg.optim.lr"], scale=100)
    best = tables.mean_std(ctx.completed(), "final_test_error", ["variant", "cfg.optim.lr"])["mean"]
    best = best.groupby(level="variant").idxmin().map(lambda k: k[1]).rename("best lr (lowest mean)")
    return h.paragraph("The learning-rate study: final test error (validation error when the study uses the 80/20 "
                       "split) per variant and learning rate of G.") + \
        h.table(t, "learning-rate", "Test error (%): mean (std) over seeds") + \
        h.table(best.to_frame(), "best-learning-rate", "Best learning rate per variant")


def table6(ctx: Context) -> str:
    parts = [h.table(t, f"table6-{i}", f"{key}: test error (%), rows ε, columns τ0")
             for i, (key, t) in enumerate(tables.table6(ctx.completed()).items())]
    if not parts:
        raise Omit("no EE trials")
    return h.paragraph("Table 6 style: every (ε, τ0) cell, per exploitation optimizer G̃ and learning rate.") + \
        "".join(parts)


def lemma5(ctx: Context) -> str:
    t = tables.lemma5_table(ctx.measures)
    if t.empty:
        raise Omit("no Lemma-5 checks were logged (diag.lemma5 = False, or no EE trials)")
    view = t.drop(columns="setting").set_index("trial_name").rename(columns={
        "lemma5_rank": "rank at θ^τ", "lemma5_rank_bound": "rank bound min(n, m_H·m_{H−1})", "lemma5_n": "n",
                                                    "lemma5_certified": "certified",
                                                    "lemma5_lambda_ratio": "λ_min/λ_max", "lemma5_step": "τ step"})
    return "".join([
        h.paragraph("Does A's success follow the Lemma-5 rank at θ^τ? The theory: zero training error is reachable "
                    "in the exploitation phase exactly when the exploitation features at θ^τ have numerical rank n "
                    "(smallest over the heads j; second method's rank, certificate by shifted Cholesky)."),
        ctx.figure(plots.plot_lemma5(t), "lemma5", "Final training error of every A trial against rank/n at θ^τ; "
                   "filled markers: certified full rank.", "training error against Lemma-5 rank"),
        h.table(tables.lemma5_crosstab(t), "lemma5-crosstab", "Trials: rank n at θ^τ × zero final training error"),
        h.table(view, "lemma5", "Every A trial", row_ids=t.index)])


def assumption4(ctx: Context) -> str:
    t = _or_omit(tables.assumption4_table, ctx.results)
    return h.paragraph("Table 2 style: Assumption 4 (safe exploration) at initialisation: the n×n Gram "
                       "(ZZᵀ)∘(SSᵀ) certified positive definite by a shifted Cholesky in float64 and cross-checked "
                       "by a second method.") + h.table(t.set_index("trial"), "assumption4", "Assumption 4 per dataset")


def trials(ctx: Context) -> str:
    m = ctx.measures
    cols = ["trial_name", "status", "dataset", "seed", "d", "m_H", "final_train_error", "final_train_loss",
            "final_test_error", "Q_T", "evaluations", "aligned_fraction", "mean_residual", "last_Q_T_increment_step",
            "Q_T_slope", "lemma5_rank"]
    view = m[cols].sort_values(["trial_name"], kind="stable").dropna(axis=1, how="all")  # e.g. no diagnostics
    failed = ctx.results.trials.set_index("trial_id")["failure_reason"].reindex(view.index)
    if failed.notna().any():
        view = view.assign(failure_reason=failed)
    return h.paragraph("One row per trial, straight from the Parquet results (d: parameters; Q_T: evaluations not "
                       "aligned; Q_T slope: increments per evaluation over the later half of the schedule).") + \
        h.table(view.set_index("trial_name"), "trials", "All trials", row_ids=view.index)


SECTIONS = {  # id: (heading, builder)
    "verdict": ("Size or alignment?", verdict),
    "lemma5": ("A's success and the Lemma-5 rank at θ^τ", lemma5),
    "learning-rate": ("Learning rate", learning_rate),
    "assumption4": ("Safe exploration (Table 2)", assumption4),
    "training-curves": ("Training error and Q_T (Fig. 1)", training_curves),
    "associations": ("Correlation scatter plots", associations),
    "delta-m": ("Change of the gradient representation (Fig. 3)", delta_m),
    "table6": ("Exploitation optimizer, τ0 and ε (Table 6)", table6),
    "loss-curves": ("Training loss (Fig. 4)", loss_curves),
    "outcomes": ("Outcomes over seeds (Tables 3/4)", outcome_tables),
    "q-t-sensitivity": ("Q_T under other tolerances", q_t_sensitivity_section),
    "trials": ("Trials", trials),
}
# what a researcher opens first, per study; other studies get every section their data supports
STUDY_SECTIONS = {
    "width_sweep": ("verdict", "training-curves", "associations", "outcomes", "delta-m", "q-t-sensitivity", "lemma5",
                    "trials"),
    "sine_wave": ("lemma5", "training-curves", "delta-m", "outcomes", "q-t-sensitivity", "trials"),
    "optimizer_sweep": ("learning-rate", "table6", "loss-curves", "outcomes", "lemma5", "trials"),
    "safe_exploration": ("assumption4", "trials"),
}
DEFAULT_SECTIONS = ("verdict", "lemma5", "training-curves", "associations", "delta-m", "outcomes", "learning-rate",
                    "q-t-sensitivity", "assumption4", "trials")
