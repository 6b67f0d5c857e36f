"""Does training error follow size, or alignment? Rank correlations, rank partial correlations and
cluster-bootstrap intervals over seeds (docs/paper-choices.md (F41)).

* Spearman ρ and Kendall τ-b (scipy.stats) between error, alignment and size.
* Partial correlations error ~ alignment | size and error ~ size | alignment are **rank-based**: the partial
  Spearman ρ_xy·z = (ρ_xy − ρ_xz ρ_yz) / √((1 − ρ_xz²)(1 − ρ_yz²)) (= Pearson's partial correlation of the ranks),
  with a t-test on n − 3 degrees of freedom. Kendall's partial τ is not reported: it is not zero under conditional
  independence in general (on planted data where error depends on size only, its interval excluded 0 while the
  partial Spearman's covered it), so it would answer the question wrongly.
* Intervals: percentile intervals of a cluster bootstrap that resamples **seeds** with replacement and keeps all
  trials of a drawn seed (trials of one seed share initialisation and data order, so they are not independent).
  With a single seed there is nothing to resample, so the bootstrap resamples trials and says so (``unit``).
  The generator is ``numpy.random.default_rng(seed)``: the same inputs give the same intervals.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

OUTCOME, ALIGNMENT, SIZE = "final_train_error", "aligned_fraction", "d"
ASSOCIATIONS = ("error ~ alignment", "error ~ size", "alignment ~ size", "error ~ alignment | size",
                "error ~ size | alignment")
PARTIALS = ASSOCIATIONS[3:]


def _varies(a: np.ndarray) -> bool:
    return a.size > 2 and np.nanmax(a) > np.nanmin(a)


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    if not (_varies(a) and _varies(b)):
        return np.nan  # a constant column has no rank correlation (scipy would warn and return NaN)
    return float(np.corrcoef(stats.rankdata(a), stats.rankdata(b))[0, 1])


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    if not (_varies(a) and _varies(b)):
        return np.nan
    return float(stats.kendalltau(a, b).statistic)  # τ-b: corrects for ties (many trials share Q_T = 0)


def partial_from(r_xy: float, r_xz: float, r_yz: float) -> float:
    """First-order partial correlation of x and y given z from the three pairwise correlations."""
    denom = (1 - r_xz ** 2) * (1 - r_yz ** 2)
    return float((r_xy - r_xz * r_yz) / np.sqrt(denom)) if denom > 0 else np.nan


def estimates(error: np.ndarray, alignment: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The five associations (``ASSOCIATIONS`` order) for Spearman, then for Kendall τ-b (NaN for the two partial
    ones): an array of 10 numbers."""
    cols = (error, alignment, size)
    ok = [_varies(c) for c in cols]
    if sum(ok) < 2:
        return np.full(10, np.nan)  # no pair varies (also: fewer than 3 trials): nothing to correlate
    ranks = np.array([stats.rankdata(c) if v else np.zeros(len(c)) for c, v in zip(cols, ok)])
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.corrcoef(ranks)  # (3, 3): Spearman = Pearson on ranks, ranked once per column
    ea, es, as_ = (rho[i, j] if ok[i] and ok[j] else np.nan for i, j in ((0, 1), (0, 2), (1, 2)))
    kendall = [_kendall(cols[i], cols[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    # Spearman: the pairs and both partials; Kendall: the pairs only (see the module docstring)
    return np.array([ea, es, as_, partial_from(ea, es, as_), partial_from(es, ea, as_), *kendall, np.nan, np.nan],
                    dtype=float)


def partial_spearman(frame: pd.DataFrame, x: str, y: str, given: str) -> tuple[float, float]:
    """Rank partial correlation of ``x`` and ``y`` given ``given`` and its two-sided p-value (t on n − 3 df)."""
    data = frame[[x, y, given]].astype(float).dropna().to_numpy()
    r = partial_from(_rank_corr(data[:, 0], data[:, 1]), _rank_corr(data[:, 0], data[:, 2]),
                     _rank_corr(data[:, 1], data[:, 2]))
    return r, _partial_p(r, len(data))


def _partial_p(r: float, n: int) -> float:
    if not np.isfinite(r) or n < 4:
        return np.nan
    if abs(r) >= 1:
        return 0.0
    t = r * np.sqrt((n - 3) / (1 - r ** 2))
    return float(2 * stats.t.sf(abs(t), n - 3))


def _pair_p(a: np.ndarray, b: np.ndarray, method: str) -> float:
    if not (_varies(a) and _varies(b)):
        return np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # perfect correlation on tiny samples: p is 0, fine
        res = stats.spearmanr(a, b) if method == "spearman" else stats.kendalltau(a, b)
    return float(res.pvalue)


def cluster_bootstrap(data: np.ndarray, clusters: np.ndarray, statistic: Callable[..., np.ndarray], *,
                      n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n_boot`` replicates of ``statistic(*columns)`` on resampled rows of ``data`` (n, k): whole clusters (the
    distinct values of ``clusters`` (n,)) drawn with replacement; single trials when there is one cluster only.
    Returns (replicates (n_boot, m), the unit resampled: 'seeds' or 'trials')."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot!r}")
    rng = np.random.default_rng(seed)
    _, codes = np.unique(clusters, return_inverse=True)
    groups = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)] if len(codes) else []
    unit = "seeds" if len(groups) >= 2 else "trials"
    reps = []
    for _ in range(n_boot):
        if unit == "seeds":
            rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        else:
            rows = rng.integers(0, len(data), len(data))
        reps.append(statistic(*data[rows].T))
    return np.asarray(reps, dtype=float), unit


def _interval(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column; NaN when fewer than half of the replicates are defined (e.g. a column that
    is constant in most resamples)."""
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ok = np.isfinite(reps).sum(axis=0) >= max(1, reps.shape[0] // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: masked below
        lo, hi = np.nanpercentile(reps, lo_q, axis=0), np.nanpercentile(reps, hi_q, axis=0)
    return np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)


def association_table(measures: pd.DataFrame, *, outcome: str = OUTCOME, alignment: str = ALIGNMENT,
                      size: str = SIZE, by: Sequence[str] = ("dataset",), cluster: str = "seed", n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95, completed_only: bool = True) -> pd.DataFrame:
    """One row per (group, association): Spearman and Kendall estimates, their bootstrap intervals and p-values,
    the number of trials and seeds, whether the Spearman interval excludes 0, and why the correlations are undefined
    when they are (``undefined_because``: a column constant in the group, or fewer than 3 trials).

    ``measures`` is :func:`eeray.analysis.trial_measures`' table (or any frame with these columns); ``by`` splits
    it (docs/paper-choices.md (F41): per dataset); rows missing one of the three columns are dropped (failed trials)."""
    for arg, col in (("outcome", outcome), ("alignment", alignment), ("size", size), ("cluster", cluster),
                     *(("by", b) for b in by)):
        if col not in measures.columns:
            raise ValueError(f"{arg}={col!r} is not a column of measures; "
                             f"columns: {sorted(map(str, measures.columns))}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    data = measures[measures["status"] == "completed"] if completed_only and "status" in measures else measures
    data = data.dropna(subset=[outcome, alignment, size])
    rows = []
    for key, g in (data.groupby(list(by), sort=True) if by else [((), data)]):
        key = key if isinstance(key, tuple) else (key,)
        arr = g[[outcome, alignment, size]].astype(float).to_numpy()  # (trials, 3)
        cols = list(arr.T)
        point = estimates(*cols)
        reps, unit = cluster_bootstrap(arr, g[cluster].to_numpy(), estimates, n_boot=n_boot, seed=seed)
        lo, hi = _interval(reps, level)
        pairs = [(cols[0], cols[1]), (cols[0], cols[2]), (cols[1], cols[2])]
        flat = ", ".join(c for c, a in zip((outcome, alignment, size), cols) if not _varies(a))
        undefined = "fewer than 3 trials" if len(g) < 3 else (f"{flat} is constant in this group" if flat else "")
        for i, name in enumerate(ASSOCIATIONS):
            j = i + len(ASSOCIATIONS)
            p_s = _pair_p(*pairs[i], "spearman") if i < 3 else _partial_p(point[i], len(g))
            p_k = _pair_p(*pairs[i], "kendall") if i < 3 else np.nan
            rows.append({**dict(zip(by, key)), "association": name, "n_trials": len(g), "n_seeds": g[cluster].nunique(),
                         "unit": unit, "spearman": point[i], "spearman_lo": lo[i], "spearman_hi": hi[i],
                         "spearman_p": p_s, "kendall": point[j], "kendall_lo": lo[j], "kendall_hi": hi[j],
                         "kendall_p": p_k, "excludes_zero": bool(lo[i] > 0 or hi[i] < 0),
                         "undefined_because": undefined})
    return pd.DataFrame(rows)


def _fmt(row: pd.Series) -> str:
    if not np.isfinite(row["spearman"]):
        return "undefined"
    ci = f"[{row['spearman_lo']:+.2f}, {row['spearman_hi']:+.2f}]" if np.isfinite(row["spearman_lo"]) else "[–]"
    return f"{row['spearman']:+.2f} {ci}"


def verdict(align_survives: bool, size_survives: bool, undefined_because: str = "") -> str:
    """One line per outcome of the two partial correlations (an interval that covers 0 is no evidence of an effect,
    not evidence of none), or why there is no answer."""
    if undefined_because:
        return f"undefined: {undefined_because}"
    return {(True, False): "error follows alignment; no evidence of a size effect beyond alignment",
            (False, True): "error follows size; no evidence of an alignment effect beyond size",
            (True, True): "both associations survive controlling for the other",
            (False, False): "neither survives controlling for the other (no association, or too few seeds)"}[
        (align_survives, size_survives)]


def survival_table(associations: pd.DataFrame) -> pd.DataFrame:
    """The compact answer per group: both partial correlations with their intervals, whether each survives
    (its interval excludes 0) and a one-line verdict."""
    cols = list(associations.columns)
    by = cols[:cols.index("association")]  # the grouping columns come first
    out = []
    for key, g in (associations.groupby(by, sort=True) if by else [((), associations)]):
        key = key if isinstance(key, tuple) else (key,)
        a = g[g["association"] == "error ~ alignment | size"].iloc[0]
        s = g[g["association"] == "error ~ size | alignment"].iloc[0]
        why = a.get("undefined_because", "") or ("" if np.isfinite(a["spearman"]) and np.isfinite(s["spearman"])
                                                 else "a column is constant in this group")
        out.append({**dict(zip(by, key)), "trials": int(a["n_trials"]), "seeds": int(a["n_seeds"]),
                    "error ~ alignment | size": _fmt(a), "alignment survives": "yes" if a["excludes_zero"] else "no",
                    "error ~ size | alignment": _fmt(s), "size survives": "yes" if s["excludes_zero"] else "no",
                    "verdict": verdict(bool(a["excludes_zero"]), bool(s["excludes_zero"]), why),
                    "intervals resample": a["unit"]})
    return pd.DataFrame(out)
