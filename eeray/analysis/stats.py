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
BY = ("dataset", "family")  # per dataset, and per model family: standard and EE sizes d are not comparable
STABLE_SHARE = 0.8  # a verdict is stated when at least this share of seed resamples reaches it
# the columns after the grouping ones of each table: a table with no group (every trial failed, so no completed
# trial has the three measures) still has them, and the tables built on it stay empty instead of failing
ASSOCIATION_FIELDS = ("association", "n_trials", "n_seeds", "unit", "spearman", "spearman_lo", "spearman_hi",
                      "spearman_p", "kendall", "kendall_lo", "kendall_hi", "kendall_p", "excludes_zero",
                      "undefined_because", "constant")
SURVIVAL_FIELDS = ("trials", "seeds", "error ~ alignment | size", "alignment survives", "error ~ size | alignment",
                   "size survives", "verdict", "intervals resample")
STABILITY_FIELDS = ("verdict", "seeds", "resamples", "stability", "stable", "other_verdicts", "why_unstable")


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
    # x·x, not x ** 2: numpy's scalar power can differ from the product in the last bit, and batch_estimates
    # multiplies arrays; the same operations give the same floats
    denom = (1 - r_xz * r_xz) * (1 - r_yz * r_yz)
    return float((r_xy - r_xz * r_yz) / np.sqrt(denom)) if denom > 0 else np.nan


PAIRS = ((0, 1), (0, 2), (1, 2))  # (error, alignment), (error, size), (alignment, size): ASSOCIATIONS' first three
PAIRWISE_KENDALL_MAX = 256  # above this many trials per resample, Kendall's O(N log N) count beats the N² signs


def _signs(x: np.ndarray) -> np.ndarray:
    """sign(x_i − x_j) for every pair of one resample's values: (B, N) -> (B, N, N) int8."""
    return ((x[:, :, None] > x[:, None, :]).astype(np.int8) - (x[:, :, None] < x[:, None, :]).astype(np.int8))


def _batch_kendall(x: np.ndarray) -> np.ndarray:
    """Kendall τ-b of the three pairs of every resample in ``x`` (B, N, 3): (B, 3), NaN where a column of the pair
    is constant. The same integers and the same operations as scipy.stats.kendalltau (concordant minus discordant
    pairs over √(pairs not tied in x) · √(pairs not tied in y), clipped to [−1, 1]), so the same floats; counted
    from pair signs for small N (all resamples at once, in memory-bounded chunks), through scipy for large N."""
    b, n, _ = x.shape
    if n > PAIRWISE_KENDALL_MAX:
        return np.array([[_kendall(xi[:, i], xi[:, j]) for i, j in PAIRS] for xi in x], dtype=float).reshape(b, 3)
    out = np.full((b, 3), np.nan)
    tot = n * (n - 1) // 2
    chunk = max(1, 2 ** 22 // max(1, n * n))  # ≤ 4 Mi int8 signs per column at once
    for lo in range(0, b, chunk):
        signs = [_signs(x[lo:lo + chunk, :, c]) for c in range(3)]  # 3 × (chunk, N, N)
        ties = [(n * n - np.count_nonzero(s, axis=(1, 2)) - n) // 2 for s in signs]  # tied pairs i < j, (chunk,)
        for k, (i, j) in enumerate(PAIRS):
            con_minus_dis = np.einsum("bij,bij->b", signs[i], signs[j], dtype=np.int64) // 2
            ok = (ties[i] < tot) & (ties[j] < tot) & (n > 2)  # a constant column: no τ (as _kendall)
            with np.errstate(invalid="ignore", divide="ignore"):
                tau = con_minus_dis / np.sqrt(tot - ties[i]) / np.sqrt(tot - ties[j])
            out[lo:lo + chunk, k] = np.where(ok, np.clip(tau, -1.0, 1.0), np.nan)
    return out


def _batch_spearman(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman ρ of the three pairs of every resample in ``x`` (B, N, 3), computed as ``np.corrcoef`` of the
    ranks computes it (so the same floats: centred ranks are multiples of ½, their products sum exactly): (B, 3),
    and which columns vary (B, 3). NaN where a column of the pair is constant."""
    b, n, _ = x.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: does not vary
        varies = (n > 2) & (np.nanmax(x, axis=1) > np.nanmin(x, axis=1))  # (B, 3): _varies per column
    ranks = np.where(varies[:, None, :], stats.rankdata(x, axis=1), 0.0)  # (B, N, 3), ties averaged
    centred = ranks - ranks.mean(axis=1, keepdims=True)
    cov = np.einsum("bni,bnj->bij", centred, centred)  # (B, 3, 3), exact
    with np.errstate(invalid="ignore", divide="ignore"):
        cov *= np.true_divide(1, n - 1)
        sd = np.sqrt(np.einsum("bii->bi", cov))  # (B, 3)
        cov /= sd[:, :, None]
        cov /= sd[:, None, :]
    rho = np.clip(cov, -1, 1)
    pairs = np.stack([rho[:, i, j] for i, j in PAIRS], axis=1)
    both = np.stack([varies[:, i] & varies[:, j] for i, j in PAIRS], axis=1)
    return np.where(both, pairs, np.nan), varies


def batch_estimates(x: np.ndarray) -> np.ndarray:
    """:func:`estimates` of every resample in ``x`` (B, N, 3) of (error, alignment, size) rows: (B, 10). The
    bootstrap's inner loop, computed for all resamples at once."""
    rho, varies = _batch_spearman(x)  # (B, 3), (B, 3)
    ea, es, as_ = rho.T
    with np.errstate(invalid="ignore", divide="ignore"):
        # partial_from per resample; given a constant column the partial is the pair's own correlation:
        # conditioning on a constant changes nothing (every trial aligned at every evaluation: error ~ size |
        # alignment is error ~ size)
        d_align, d_size = (1 - es * es) * (1 - as_ * as_), (1 - ea * ea) * (1 - as_ * as_)  # as partial_from
        p_align = np.where(d_align > 0, (ea - es * as_) / np.sqrt(d_align), np.nan)
        p_size = np.where(d_size > 0, (es - ea * as_) / np.sqrt(d_size), np.nan)
    p_align = np.where(varies[:, 2], p_align, ea)
    p_size = np.where(varies[:, 1], p_size, es)
    out = np.column_stack([rho, p_align, p_size, _batch_kendall(x), np.full((len(x), 2), np.nan)])
    return np.where((varies.sum(axis=1) < 2)[:, None], np.nan, out)  # no pair varies: nothing to correlate


def estimates(error: np.ndarray, alignment: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The five associations (``ASSOCIATIONS`` order) for Spearman, then for Kendall τ-b (NaN for the two partial
    ones): an array of 10 numbers. Spearman: the pairs and both partials; Kendall: the pairs only (see the module
    docstring)."""
    return batch_estimates(np.column_stack([error, alignment, size]).astype(float)[None])[0]


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


def _resampled_rows(clusters: np.ndarray, n_boot: int, seed: int) -> tuple[list[np.ndarray], str]:
    """The rows of ``n_boot`` cluster-bootstrap resamples: whole clusters (the distinct values of ``clusters``
    (n,)) drawn with replacement; single rows when there is one cluster only. Returns (row indices per resample,
    the unit resampled: 'seeds' or 'trials')."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot!r}")
    rng = np.random.default_rng(seed)
    _, codes = np.unique(clusters, return_inverse=True)
    groups = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)] if len(codes) else []
    if len(groups) >= 2:
        return [np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
                for _ in range(n_boot)], "seeds"
    return [rng.integers(0, len(clusters), len(clusters)) for _ in range(n_boot)], "trials"


def cluster_bootstrap(data: np.ndarray, clusters: np.ndarray, statistic: Callable[..., np.ndarray], *,
                      n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n_boot`` replicates of ``statistic(*columns)`` on resampled rows of ``data`` (n, k): whole clusters (the
    distinct values of ``clusters`` (n,)) drawn with replacement; single trials when there is one cluster only.
    Returns (replicates (n_boot, m), the unit resampled: 'seeds' or 'trials')."""
    rows, unit = _resampled_rows(clusters, n_boot, seed)
    return np.asarray([statistic(*data[r].T) for r in rows], dtype=float), unit


def _by_length(data: np.ndarray, rows: list[np.ndarray], batch: Callable[[np.ndarray], np.ndarray],
               width: int) -> np.ndarray:
    """``batch`` ((B, n, k) -> (B, width)) of every resample ``data[rows[i]]``: the resamples of one length at once
    (clusters of unequal size give several lengths). Returns (len(rows), width), in the order of ``rows``."""
    out = np.empty((len(rows), width))
    lengths = np.array([len(r) for r in rows])
    for n in np.unique(lengths):
        which = np.flatnonzero(lengths == n)
        out[which] = batch(data[np.stack([rows[w] for w in which])])
    return out


def _bootstrap_estimates(data: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, str]:
    """``cluster_bootstrap(data, clusters, estimates, ...)``, the same replicates, computed with
    :func:`batch_estimates` for every resample of one length at once."""
    rows, unit = _resampled_rows(clusters, n_boot, seed)
    return _by_length(data, rows, batch_estimates, 2 * len(ASSOCIATIONS)), unit


def _interval(reps: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column; NaN when fewer than half of the replicates are defined (e.g. a column that
    is constant in most resamples)."""
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ok = np.isfinite(reps).sum(axis=0) >= max(1, reps.shape[0] // 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: masked below
        lo, hi = np.nanpercentile(reps, lo_q, axis=0), np.nanpercentile(reps, hi_q, axis=0)
    return np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)


def _groups(measures: pd.DataFrame, outcome: str, alignment: str, size: str, cluster: str, by: Sequence[str],
            completed_only: bool):
    """(key tuple, group frame, its (trials, 3) float array of outcome, alignment, size) per group of ``by``, after
    checking that every named column exists; completed trials only (``status``) unless ``completed_only`` is
    False; rows with a missing value in the three columns are left out (failed trials)."""
    columns = sorted(map(str, measures.columns))
    for arg, col in (("outcome", outcome), ("alignment", alignment), ("size", size), ("cluster", cluster),
                     *(("by", b) for b in by)):
        if col not in measures.columns:
            raise ValueError(f"{arg}={col!r} is not a column of measures; columns: {columns}")
    if completed_only and "status" not in measures.columns:
        raise ValueError(f"completed_only=True keeps the trials whose 'status' is 'completed', and measures has no "
                         f"'status' column (columns: {columns}); pass completed_only=False to use every row")
    data = measures[measures["status"] == "completed"] if completed_only else measures
    data = data.dropna(subset=[outcome, alignment, size])
    for key, g in (data.groupby(list(by), sort=True) if by else [((), data)]):
        yield (key if isinstance(key, tuple) else (key,)), g, g[[outcome, alignment, size]].astype(float).to_numpy()


def association_table(measures: pd.DataFrame, *, outcome: str = OUTCOME, alignment: str = ALIGNMENT,
                      size: str = SIZE, by: Sequence[str] = BY, cluster: str = "seed", n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95, completed_only: bool = True) -> pd.DataFrame:
    """One row per (group, association): Spearman and Kendall estimates, their bootstrap intervals and p-values,
    the number of trials and seeds, whether the Spearman interval excludes 0, and why the correlations are undefined
    when they are (``undefined_because``: a column constant in the group, or fewer than 3 trials).

    ``measures`` is :func:`eeray.analysis.trial_measures`' table (or any frame with these columns); ``by`` splits
    it: per dataset (docs/paper-choices.md (F41)) and per model family, since standard and EE parameter counts are
    not comparable (pass ``by=("dataset",)`` to pool the families, and say so); rows with a missing value in the
    three columns are left out (failed trials)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    rows = []
    for key, g, arr in _groups(measures, outcome, alignment, size, cluster, by, completed_only):
        cols = list(arr.T)
        point = estimates(*cols)
        reps, unit = _bootstrap_estimates(arr, g[cluster].to_numpy(), n_boot, seed)
        lo, hi = _interval(reps, level)
        pairs = [(cols[i], cols[j]) for i, j in PAIRS]
        varies = [_varies(a) for a in cols]
        flat = ", ".join(c for c, v in zip((outcome, alignment, size), varies) if not v)
        # a constant alignment (or size) still leaves a question: does error follow the other one?
        undefined = "fewer than 3 trials" if len(g) < 3 else (
            f"{flat} is constant in this group" if not varies[0] or not (varies[1] or varies[2]) else "")
        for i, name in enumerate(ASSOCIATIONS):
            j = i + len(ASSOCIATIONS)
            p_s = _pair_p(*pairs[i], "spearman") if i < 3 else _partial_p(point[i], len(g))
            p_k = _pair_p(*pairs[i], "kendall") if i < 3 else np.nan
            rows.append({**dict(zip(by, key)), "association": name, "n_trials": len(g), "n_seeds": g[cluster].nunique(),
                         "unit": unit, "spearman": point[i], "spearman_lo": lo[i], "spearman_hi": hi[i],
                         "spearman_p": p_s, "kendall": point[j], "kendall_lo": lo[j], "kendall_hi": hi[j],
                         "kendall_p": p_k, "excludes_zero": bool(lo[i] > 0 or hi[i] < 0),
                         "undefined_because": undefined, "constant": "" if undefined else flat})
    return pd.DataFrame(rows, columns=[*by, *ASSOCIATION_FIELDS])


def _fmt(row: pd.Series) -> str:
    if not np.isfinite(row["spearman"]):
        return "undefined"
    ci = f"[{row['spearman_lo']:+.2f}, {row['spearman_hi']:+.2f}]" if np.isfinite(row["spearman_lo"]) else "[–]"
    return f"{row['spearman']:+.2f} {ci}"


def verdict(align_survives: bool, size_survives: bool, undefined_because: str = "", constant: str = "") -> str:
    """One line per outcome of the two partial correlations (an interval that covers 0 is no evidence of an effect,
    not evidence of none), or why there is no answer. ``constant`` names a column that is the same in every trial
    (alignment held at every evaluation of every trial, say): it cannot explain any difference, and the line says
    so after the verdict (the part before the first ';' is the verdict itself)."""
    if undefined_because:
        return f"undefined: {undefined_because}"
    line = {(True, False): "error follows alignment; no evidence of a size effect beyond alignment",
            (False, True): "error follows size; no evidence of an alignment effect beyond size",
            (True, True): "both associations survive controlling for the other",
            (False, False): "neither survives controlling for the other (no association, or too few seeds)"}[
        (align_survives, size_survives)]
    if constant:
        line = f"{line.split(';')[0]}; {constant} is the same in every trial, so it explains none of the differences"
    return line


def survival_table(associations: pd.DataFrame, stability: pd.DataFrame | None = None) -> pd.DataFrame:
    """The compact answer per group: both partial correlations with their intervals, whether each survives
    (its interval excludes 0) and a one-line verdict. With ``stability`` (:func:`verdict_stability`, same groups)
    also the share of seed resamples reaching the verdict; below :data:`STABLE_SHARE` the verdict line says the
    answer is not stable instead of stating it."""
    cols = list(associations.columns)
    by = cols[:cols.index("association")]  # the grouping columns come first
    out = []
    for key, g in (associations.groupby(by, sort=True) if by else [((), associations)]):
        key = key if isinstance(key, tuple) else (key,)
        a = g[g["association"] == "error ~ alignment | size"].iloc[0]
        s = g[g["association"] == "error ~ size | alignment"].iloc[0]
        why = a["undefined_because"] or ("" if np.isfinite(a["spearman"]) or np.isfinite(s["spearman"])
                                         else "a column is constant in this group")
        out.append({**dict(zip(by, key)), "trials": int(a["n_trials"]), "seeds": int(a["n_seeds"]),
                    "error ~ alignment | size": _fmt(a), "alignment survives": "yes" if a["excludes_zero"] else "no",
                    "error ~ size | alignment": _fmt(s), "size survives": "yes" if s["excludes_zero"] else "no",
                    "verdict": verdict(bool(a["excludes_zero"]), bool(s["excludes_zero"]), why, a["constant"]),
                    "intervals resample": a["unit"]})
    table = pd.DataFrame(out, columns=[*by, *SURVIVAL_FIELDS])
    if stability is None:
        return table
    table = table.merge(stability[[*by, "verdict", "stability", "resamples", "stable", "why_unstable"]]
                        .rename(columns={"verdict": "_v"}), on=by, how="left", validate="one_to_one")
    short = [("undefined" if v.startswith("undefined") else v.split(";")[0]) for v in table["verdict"]]
    if table["_v"].isna().any() or [str(v) for v in table["_v"]] != short:
        raise ValueError("stability was computed for other groups, results or bootstrap settings than "
                         "associations (give verdict_stability the same measures, n_boot and seed)")
    table["verdict"] = [v if ok else f"not stable: {why}" for v, ok, why in
                        zip(table["verdict"], table["stable"], table["why_unstable"])]
    return table.drop(columns=["_v", "why_unstable"])


# --------------------------------------------------------------------------- does the verdict hold on a rerun?
def _batch_partials(x: np.ndarray) -> np.ndarray:
    """Both partial Spearman correlations (error ~ alignment | size, error ~ size | alignment) of every resample in
    ``x`` (B, N, 3): (B, 2). The two numbers of :func:`estimates` the verdict reads, for B resamples at once (the
    inner loop of the double bootstrap); NaN where a column is constant in a resample."""
    r = stats.rankdata(x, axis=1)  # (B, N, 3), ties averaged as in estimates
    r = r - r.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = np.einsum("bni,bnj->bij", r, r)  # (B, 3, 3)
        sd = np.sqrt(np.einsum("bii->bi", cov))
        rho = cov / (sd[:, :, None] * sd[:, None, :])
        ea, es, as_ = rho[:, 0, 1], rho[:, 0, 2], rho[:, 1, 2]
        p1 = (ea - es * as_) / np.sqrt((1 - es ** 2) * (1 - as_ ** 2))
        p2 = (es - ea * as_) / np.sqrt((1 - ea ** 2) * (1 - as_ ** 2))
    flat = sd == 0  # (B, 3): a column constant in that resample; given it, the partial is the pair's correlation
    p1 = np.where(flat[:, 2] & ~flat[:, 1], ea, p1)
    p2 = np.where(flat[:, 1] & ~flat[:, 2], es, p2)
    return np.stack([p1, p2], axis=1)


def _cluster_partials(arr: np.ndarray, groups: list[np.ndarray], n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """(n_boot, 2) partials of cluster-bootstrap resamples of ``arr`` (n, 3), ``groups`` = row indices per cluster;
    resamples of equal length (clusters of unequal size give several) are computed as one batch."""
    draws = rng.integers(0, len(groups), (n_boot, len(groups)))
    return _by_length(arr, [np.concatenate([groups[i] for i in d]) for d in draws], _batch_partials, 2)


def _verdict_key(point: np.ndarray, reps: np.ndarray, level: float) -> tuple:
    """(alignment survives, size survives) as :func:`survival_table` decides it, from the two partials ``point``
    (2,) and their bootstrap replicates (n, 2); ('undefined',) when both partials are undefined (one alone is:
    its column is constant, and it does not survive)."""
    if not np.isfinite(point).any():
        return ("undefined",)
    lo, hi = _interval(reps, level)
    return tuple(bool(lo[i] > 0 or hi[i] < 0) for i in range(2))  # an undefined interval: does not survive


def _key_text(key: tuple) -> str:
    return "undefined" if key == ("undefined",) else verdict(*key).split(";")[0]


def verdict_stability(measures: pd.DataFrame, *, outcome: str = OUTCOME, alignment: str = ALIGNMENT,
                      size: str = SIZE, by: Sequence[str] = BY, cluster: str = "seed", n_boot: int = 1000,
                      n_outer: int = 200, n_inner: int = 200, seed: int = 0, level: float = 0.95,
                      completed_only: bool = True, stable_share: float = STABLE_SHARE) -> pd.DataFrame:
    """How often a rerun with other seeds would reach the same verdict, per group: a double cluster bootstrap.

    The verdict of the data (intervals from ``n_boot`` seed resamples, as :func:`association_table`) is compared
    with the verdicts of ``n_outer`` reruns simulated by drawing the seeds with replacement (each drawn copy a seed
    of its own), each judged the same way with its own ``n_inner``-resample cluster bootstrap. ``stability`` is the
    share of reruns with the data's verdict; ``stable`` whether it reaches ``stable_share``. With fewer than 3
    seeds there is nothing to rerun from (stability NaN, not stable). Deterministic for a given ``seed``."""
    for arg, v in (("n_outer", n_outer), ("n_inner", n_inner)):
        if not (isinstance(v, int) and v >= 10):
            raise ValueError(f"{arg} must be an integer >= 10; got {v!r}")
    rows = []
    for key, g, arr in _groups(measures, outcome, alignment, size, cluster, by, completed_only):
        clusters = g[cluster].to_numpy()
        answer = survival_table(association_table(g, outcome=outcome, alignment=alignment, size=size, by=(),
                                                  cluster=cluster, n_boot=n_boot, seed=seed, level=level,
                                                  completed_only=False)).iloc[0]
        full = ("undefined",) if answer["verdict"].startswith("undefined") else (
            answer["alignment survives"] == "yes", answer["size survives"] == "yes")
        seeds = np.unique(clusters)
        row = {**dict(zip(by, key)), "verdict": _key_text(full), "seeds": len(seeds), "resamples": n_outer}
        if len(seeds) < 3:
            rows.append({**row, "stability": np.nan, "stable": False, "other_verdicts": "",
                         "why_unstable": f"{len(seeds)} seed(s): too few to tell whether the verdict holds on a "
                                         "rerun (at least 3, better 6)"})
            continue
        rng = np.random.default_rng(seed + 1)
        groups = [np.flatnonzero(clusters == c) for c in seeds]
        found: dict[tuple, int] = {}
        for _ in range(n_outer):
            drawn = rng.integers(0, len(groups), len(groups))
            rerun = arr[np.concatenate([groups[i] for i in drawn])]  # a simulated rerun: its own S seeds
            starts = np.cumsum([0] + [len(groups[i]) for i in drawn])
            inner = _cluster_partials(rerun, [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])], n_inner, rng)
            k = _verdict_key(_batch_partials(rerun[None])[0], inner, level)
            found[k] = found.get(k, 0) + 1
        share = found.get(full, 0) / n_outer
        # most frequent first; by count only: an ('undefined',) key and a (bool, bool) one do not compare
        others = sorted(((n, k) for k, n in found.items() if k != full), key=lambda nk: nk[0], reverse=True)
        other_text = "; ".join(f"{_key_text(k)} {n / n_outer:.0%}" for n, k in others)
        rows.append({**row, "stability": share, "stable": share >= stable_share, "other_verdicts": other_text,
                     "why_unstable": f"only {share:.0%} of {n_outer} seed resamples reach '{_key_text(full)}' "
                                     f"(others: {other_text or 'none'}); more seeds are needed for an answer"})
    return pd.DataFrame(rows, columns=[*by, *STABILITY_FIELDS])
