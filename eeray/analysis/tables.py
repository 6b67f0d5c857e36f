"""The paper's tables from per-trial measures: mean (std) over seeds (Tables 3, 4, 6 and the learning-rate study),
the Lemma-5 table of the sine-wave study and the safe-exploration table (Table 2).

Standard deviations are sample ones (ddof = 1, docs/paper-choices.md (E35)); with a single seed there is none,
and the cell says so ("0.30 (–)") instead of printing 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from eeray.analysis.measures import ALIASES
from eeray.results import Results


def _check(frame: pd.DataFrame, arg: str, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{arg}={list(cols)!r}: no column(s) {missing}; columns: {sorted(map(str, frame.columns))}")


def short_name(column: str) -> str:
    """'cfg.optim.lr' -> 'lr', 'cfg.ee.epsilon' -> 'eps' (the trial-name aliases); other columns unchanged."""
    return ALIASES.get(column[4:], column.rsplit(".", 1)[-1]) if column.startswith("cfg.") else column


def _value_label(column: str, value) -> str:
    if not column.startswith("cfg."):
        return str(value)
    return f"{short_name(column)}={value:g}" if isinstance(value, float) else f"{short_name(column)}={value}"


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """'0.30 (0.05)' as in the paper; '0.30 (–)' when there is no std (one seed); '–' without a mean."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ({std:.{digits}f})" if np.isfinite(std) else f"{mean:.{digits}f} (–)"


def mean_std(measures: pd.DataFrame, value: str, by: Sequence[str], *, scale: float = 1.0,
             completed_only: bool = True) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and number of seeds of ``value`` × ``scale`` per group of ``by``."""
    _check(measures, "by", list(by))
    _check(measures, "value", [value])
    data = measures[measures["status"] == "completed"] if completed_only and "status" in measures else measures
    g = (data[value].astype(float) * scale).groupby([data[b] for b in by], sort=True, dropna=False)
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "seeds": g.count()})


def mean_std_table(measures: pd.DataFrame, value: str, index: Sequence[str], columns: Sequence[str] = (), *,
                   scale: float = 1.0, digits: int = 2) -> pd.DataFrame:
    """A table of 'mean (std)' strings: rows ``index``, columns ``columns`` (e.g. Table 3: index dataset, columns
    method, value final_test_error, scale 100 for percent)."""
    stats = mean_std(measures, value, list(index) + list(columns), scale=scale)
    cells = pd.Series([format_mean_std(m, s, digits) for m, s in zip(stats["mean"], stats["std"])], index=stats.index)
    cells.index = cells.index.set_names([short_name(c) for c in cells.index.names])
    if not columns:
        out = cells.to_frame(f"{value} mean (std)")
        out["seeds"] = stats["seeds"].to_numpy()
        return out
    table = cells.unstack(list(range(len(index), len(index) + len(columns)))).fillna("")
    if len(columns) == 1:  # 'lr=0.01' rather than a bare 0.01 under an unnamed header
        table.columns = [_value_label(columns[0], v) for v in table.columns]
    return table


def table6(measures: pd.DataFrame, value: str = "final_test_error", *, scale: float = 100.0) -> dict[str, pd.DataFrame]:
    """Table-6 style: for every EE variant (exploitation optimizer G̃) and learning rate of G, rows ε and columns τ0,
    'mean (std)' over seeds of ``value`` (in percent with the default ``scale``). Keyed '<variant> · lr=<lr>', the
    variant named as in the trial names."""
    _check(measures, "measures", ["family", "variant", "cfg.optim.lr", "cfg.ee.epsilon", "cfg.ee.tau"])
    ee = measures[measures["family"] == "ee"]
    return {f"{v} · lr={lr:g}": mean_std_table(g, value, ["cfg.ee.epsilon"], ["cfg.ee.tau"], scale=scale)
            for (v, lr), g in ee.groupby(["variant", "cfg.optim.lr"], sort=True)}


# --------------------------------------------------------------------------- Lemma 5 (sine-wave sensitivity)
def lemma5_table(measures: pd.DataFrame) -> pd.DataFrame:
    """Every EE trial with a Lemma-5 check: final training error against the numerical rank of its exploitation
    features at θ^τ (smallest over heads), n, the certificate and λ_min/λ_max. ``rank = n`` is the theory's condition
    for zero training error to be reachable in the exploitation phase; it is also decided (False) without a rank
    when m_H·m_{H−1} < n. ``agrees`` says whether the trial's outcome matches it (zero error ⟺ rank n)."""
    _check(measures, "measures", ["lemma5_rank", "lemma5_rank_bound", "final_train_error"])
    t = measures[measures["lemma5_n"].notna()].copy()
    full = [r == n if r == r else (False if b < n else None)  # r == r: the rank is known (not NaN)
            for r, b, n in zip(t["lemma5_rank"], t["lemma5_rank_bound"], t["lemma5_n"])]
    t["rank = n"] = pd.array(full, dtype="boolean")
    t["zero error"] = pd.array(t["final_train_error"] == 0, dtype="boolean")
    t["agrees"] = t["rank = n"] == t["zero error"]
    cols = ["trial_name", "setting", "seed", "final_train_error", "lemma5_rank", "lemma5_rank_bound", "lemma5_n",
            "lemma5_certified", "lemma5_lambda_ratio", "lemma5_step", "rank = n", "zero error", "agrees"]
    return t[cols].sort_values(["setting", "seed"], kind="stable")


def lemma5_crosstab(table: pd.DataFrame) -> pd.DataFrame:
    """2×2 counts: rank n at θ^τ (rows) × zero final training error (columns); trials whose rank is unknown are
    left out."""
    known = table.dropna(subset=["rank = n"])
    counts = pd.crosstab(known["rank = n"].astype(bool), known["zero error"].astype(bool))
    counts = counts.reindex(index=[True, False], columns=[True, False], fill_value=0)
    counts.index = pd.Index(["rank n", "rank < n"], name="at θ^τ")
    counts.columns = ["zero training error", "training error > 0"]
    return counts


# --------------------------------------------------------------------------- Table 2 (safe exploration)
def assumption4_table(results: Results) -> pd.DataFrame:
    """Table-2 style: per trial (dataset), n, m_{H−1}, m_H, whether the Cholesky certificate holds, the second
    method's rank and whether both agree."""
    s = results.safety
    s = s[s["kind"] == "assumption4"] if not s.empty else s
    if s.empty:
        raise ValueError("no Assumption-4 rows in safety: the study ran without diag.assumption4")
    names = results.trials.set_index("trial_id")["trial_name"]
    out = s.assign(trial=s["trial_id"].map(names))
    cols = ["trial", "dataset", "n", "m_H_minus_1", "m_H", "certified", "second_method", "second_rank",
            "lambda_min", "lambda_max", "agree"]
    return out[cols].sort_values("dataset", kind="stable").reset_index(drop=True)
