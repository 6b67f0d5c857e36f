"""Per-trial measures from the Parquet results alone (docs/architecture.md; docs/paper-choices.md (F41, D23–D29)).

One row per trial with three groups of columns:

* size: ``d``, ``m_c`` (LeNet width factor), ``m_H``, ``d_over_nmy`` = d/(n·m_y);
* alignment (from the ``diagnostics`` rows, one per evaluation): ``evaluations``, ``Q_T`` (eq 7 over the evaluated
  steps), ``aligned_fraction`` = 1 − Q_T/evaluations, ``mean_residual``, ``median_residual``,
  ``last_Q_T_increment_step`` and ``Q_T_slope`` (increments per evaluation over the later half of the schedule:
  1 when the condition fails at every late evaluation, i.e. Q_T grows linearly; 0 when Q_T has gone flat);
* outcome: ``final_train_error``, ``final_train_loss``, ``final_test_error``.

Q_T is recomputed from the logged continuous quantities at other tolerances (:func:`q_t_sensitivity`): the
membership tolerance on the residual ρ, and the rank cut κ through the spectral energy e(κ) (the residual had the
eigenvalues below κ·λ_max been treated as zero).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from eeray.results import Results, load
from eeray.study import ALIASES as TRIAL_NAME_ALIASES

TOLERANCES = (1e-4, 1e-6, 1e-8, 1e-10, 1e-12)  # the κ grid logged as e(κ), reused as a tolerance grid
# config columns that only pick random streams: trials differing in them are replicates of one setting
SEED_SUFFIX = "seed"
# short names in setting labels: the ones trial names use ("m_c=2 seed=1"), plus a few
ALIASES = {**TRIAL_NAME_ALIASES, "data.n_train": "n"}
# part of the method label already, so not repeated in the setting label
METHOD_KEYS = ("cfg.ee.enabled", "cfg.ee.exploit_optim.name")


RESULTS_ENV = "EERAY_RESULTS_DIR"


def default_results_dir(start: str | os.PathLike | None = None) -> Path:
    """Where a notebook or script finds the results: ``$EERAY_RESULTS_DIR`` when set; else the first ``results``
    directory in the working directory or above it (a notebook opened from ``analysis/`` finds the repository's
    ``results``); else ``results`` at the repository root (the first folder above holding ``pyproject.toml``),
    else ``./results``. The studies write to ``./results`` unless given ``--results-dir``."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "results").is_dir():
            return folder / "results"
    root = next((f for f in (here, *here.parents) if (f / "pyproject.toml").is_file()), None)
    return (root or here) / "results"


def load_results(results_dir: str | os.PathLike, study: str) -> Results:
    """``eeray.results.load`` with a clear error when the study has no trials yet."""
    res = load(results_dir, study)
    if res.trials.empty:
        raise ValueError(f"results_dir {str(results_dir)!r} has no trials for study {study!r} (nothing under "
                         f"{os.path.join(str(results_dir), study, 'trials')}); run `python studies/{study}.py` "
                         f"first, or point {RESULTS_ENV} at the --results-dir it wrote to")
    return res


# --------------------------------------------------------------------------- labels
# One vocabulary for the variants everywhere a reader meets them: the labels trial names start with ("standard",
# "ee c=0.5"), which the console, MLflow and the Parquet trial names show, are the report's and notebooks' labels too.
STANDARD, EE = "standard", "ee"


def family_of(trials: pd.DataFrame) -> pd.Series:
    """'standard' or 'ee': the model family. The EE head replaces the last layers by m_y heads of width m_H, so
    parameter counts d are not comparable across families (width sweep, laptop: EE 2.3k–7.9k, standard 68k–1.1M)
    and pooled, size would partly encode the family; size statistics are per family."""
    enabled = trials.get("cfg.ee.enabled", pd.Series(False, index=trials.index)).fillna(False).astype(bool)
    return pd.Series(np.where(enabled, EE, STANDARD), index=trials.index, name="family")


def method_of(trials: pd.DataFrame) -> pd.Series:
    """'standard' (no EE), 'ee' (EE with G̃ = G) or 'ee, G̃=<name>' (another exploit optimizer)."""
    other = trials.get("cfg.ee.exploit_optim.name", pd.Series(None, index=trials.index))
    labels = [EE + (f", G̃={o}" if isinstance(o, str) and o else "") if f == EE else STANDARD
              for f, o in zip(family_of(trials), other)]
    return pd.Series(labels, index=trials.index, name="method")


def _trailing_keys(name: str) -> list[str]:
    """Keys of the trailing ``key=value`` tokens of a trial name, last first."""
    keys = []
    for token in reversed(str(name).split(" ")):
        if "=" not in token:
            break
        keys.append(token.split("=", 1)[0])
    return keys


def _common_suffix(key_lists: list[list[str]]) -> list[str]:
    n = 0
    while key_lists and all(len(k) > n for k in key_lists) and len({k[n] for k in key_lists}) == 1:
        n += 1
    return key_lists[0][:n] if key_lists else []


def _unlabelled(names: list[str]) -> bool:
    """Names without a variant label: every name starts with an axis, the same one (``m_c=1 seed=0``)."""
    firsts = [n.split(" ", 1)[0] for n in names]
    return all("=" in f for f in firsts) and len({f.split("=", 1)[0] for f in firsts}) == 1


def grid_keys(names: Iterable[str]) -> set[str]:
    """The keys of the grid axes in trial names (``label key=value ...``; the label's first word is never an axis).
    Trials whose names start with the same word share their grid axes as a common suffix; a variant can pin an axis
    (then its names lack it) and a label can end in ``key=value`` itself (``ee c=0.5``), so an axis is a key in the
    common suffix of at least two such groups (of the only group, when there is one)."""
    names = [str(n) for n in names]
    groups: dict[str, list[list[str]]] = {}
    for n in names:
        first, _, rest = n.partition(" ")
        groups.setdefault(first, []).append(_trailing_keys(rest) if rest else [])
    suffixes = [set(_common_suffix(lists)) for lists in groups.values()]
    if len(suffixes) == 1:
        return suffixes[0]
    return {k for s in suffixes for k in s if sum(k in t for t in suffixes) >= 2}


def variant_of(trials: pd.DataFrame) -> pd.Series:
    """The study's variant label of each trial, as its trial name starts with it (``"ee c=0.5"``, ``"standard"``,
    ``"G~=SGD"``, ``"A(GD)"``): the trial name without its trailing grid axes (:func:`grid_keys`). A study without
    variant labels gets the family ('standard' / 'ee'). These are the rows of Fig.-1 style figures and the columns
    of the mean (std) tables."""
    names = trials["trial_name"].astype(str)
    axes = grid_keys(names)
    labels = []
    for n in names:
        tokens = n.split(" ")
        while len(tokens) > 1 and "=" in tokens[-1] and tokens[-1].split("=", 1)[0] in axes:
            tokens.pop()
        labels.append(" ".join(tokens))
    if _unlabelled(list(names)):
        labels = [""] * len(labels)
    return pd.Series([lab or fam for lab, fam in zip(labels, family_of(trials))], index=trials.index, name="variant")


def setting_columns(trials: pd.DataFrame) -> list[str]:
    """Config columns that vary within a method, without the seeds: what tells the settings of one method apart
    (a column that varies only between methods, like G̃'s own learning rate, is said by the method label)."""
    method = method_of(trials)
    cols = [c for c in trials.columns if c.startswith("cfg.") and not c.endswith(SEED_SUFFIX) and c not in METHOD_KEYS]
    return [c for c in cols if trials[c].astype(str).groupby(method).nunique().max() > 1]


def _short(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_of(trials: pd.DataFrame, columns: Iterable[str] | None = None) -> pd.Series:
    """A readable label of each trial's setting: the method plus the varying config values, seeds excluded, and
    EE values (``cfg.ee.*``) only for EE trials. Trials with the same label are seeds of one setting, the unit that
    tables average over."""
    columns = setting_columns(trials) if columns is None else list(columns)
    enabled = trials.get("cfg.ee.enabled", pd.Series(False, index=trials.index)).fillna(False).astype(bool)
    labels = []
    for (_, row), method, ee in zip(trials.iterrows(), method_of(trials), enabled):
        parts = [method] + [f"{ALIASES.get(c[4:], c.rsplit('.', 1)[-1])}={_short(row[c])}" for c in columns
                            if ee or not c.startswith("cfg.ee.")]
        labels.append(" ".join(parts))
    return pd.Series(labels, index=trials.index, name="setting")


# --------------------------------------------------------------------------- alignment from diagnostics
def _ordered(diagnostics: pd.DataFrame) -> pd.DataFrame:
    phase_order = diagnostics["phase"].map({"explore": 0, "exploit": 1}).fillna(2)
    return diagnostics.assign(_p=phase_order).sort_values(["trial_id", "step", "_p"], kind="stable").drop(columns="_p")


def q_t_at(diagnostics: pd.DataFrame, tol: float, kappa: float | None = None) -> pd.Series:
    """Q_T per trial had the membership tolerance been ``tol``: the number of evaluations with residual > tol
    (a missing residual counts as not aligned, as in the tracker). With ``kappa``, the residual is e(κ), i.e. the
    rank cut moved to κ·λ_max; NaN for trials whose e(κ) was not computed (matrix-free evaluations)."""
    if not tol > 0:
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    column = "residual" if kappa is None else f"energy_{kappa:.0e}"
    if column not in diagnostics.columns:
        have = sorted(c for c in diagnostics.columns if c.startswith("energy_"))
        raise ValueError(f"kappa={kappa!r}: no column {column!r} in diagnostics; logged: {have}")
    values = diagnostics[column].astype(float)
    failed = ~(values <= tol)  # NaN → not aligned
    out = failed.groupby(diagnostics["trial_id"]).sum().astype(float)
    if kappa is not None:
        missing = values.isna().groupby(diagnostics["trial_id"]).any()
        out[missing[missing].index] = np.nan
    return out


def q_t_sensitivity(diagnostics: pd.DataFrame, tols: Iterable[float] = TOLERANCES,
                    stored_tol: float | None = None) -> pd.DataFrame:
    """Q_T per trial under a tolerance sweep: column ``ρ≤<tol>`` for every ``tol``, and ``e(<κ>)≤<tol*>`` for every
    logged κ at the stored membership tolerance tol* (or ``stored_tol``); first column ``evaluations``.
    Index: trial_id."""
    if diagnostics.empty:
        raise ValueError("diagnostics is empty: the study logged no alignment evaluations (diag.alignment = False)")
    tol_star = float(diagnostics["tol"].dropna().iloc[0]) if stored_tol is None else float(stored_tol)
    cols = {f"ρ≤{t:.0e}": q_t_at(diagnostics, t) for t in tols}
    for c in sorted((c for c in diagnostics.columns if c.startswith("energy_")), key=lambda c: -float(c[7:])):
        cols[f"e({float(c[7:]):.0e})≤{tol_star:.0e}"] = q_t_at(diagnostics, tol_star, kappa=float(c[7:]))
    out = pd.DataFrame(cols)
    out.insert(0, "evaluations", diagnostics.groupby("trial_id").size())
    return out


def alignment_measures(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Alignment columns per trial (index trial_id), from the decisions that were logged (``aligned``)."""
    cols = ["evaluations", "Q_T", "aligned_fraction", "mean_residual", "median_residual",
            "last_Q_T_increment_step", "Q_T_slope"]
    if diagnostics.empty:
        return pd.DataFrame(columns=cols, dtype=float)
    rows = {}
    for trial_id, g in _ordered(diagnostics).groupby("trial_id", sort=True):
        failed = ~g["aligned"].fillna(False).astype(bool).to_numpy()
        q = np.cumsum(failed)
        k = len(g)
        half = k // 2  # late half: evaluations half..k−1
        slope = float(q[-1] - (q[half - 1] if half else 0)) / (k - half)
        last = g["step"].to_numpy()[failed][-1] if failed.any() else np.nan
        rows[trial_id] = [k, q[-1], 1 - q[-1] / k, g["residual"].mean(), g["residual"].median(), last, slope]
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols).rename_axis("trial_id")


# --------------------------------------------------------------------------- the per-trial table
def lemma5_ranks(safety: pd.DataFrame) -> pd.DataFrame:
    """Per trial, the Lemma-5 check at θ^τ over its heads j: the smallest numerical rank (second method; n where only
    the certificate ran and succeeded), the bound min(n, m_H·m_{H−1}) that holds for every θ, whether every head
    was certified, the smallest λ_min/λ_max, and n. Index: trial_id."""
    cols = ["lemma5_step", "lemma5_heads", "lemma5_rank", "lemma5_rank_bound", "lemma5_n", "lemma5_certified",
            "lemma5_lambda_ratio"]
    s = safety[safety["kind"] == "lemma5"] if not safety.empty else safety
    if s.empty:
        return pd.DataFrame(columns=cols)
    # second_rank −1: the second method was not run; a certificate still proves rank n
    rank = s["second_rank"].where(s["second_rank"] >= 0, s["n"].where(s["certified"].fillna(False).astype(bool)))
    bound = np.minimum(s["n"], s["m_H"] * s["m_H_minus_1"])  # φ has m_H·m_{H−1} columns
    s = s.assign(_ratio=s["lambda_min"] / s["lambda_max"], _rank=rank.astype(float), _bound=bound.astype(float))
    g = s.groupby("trial_id")
    out = pd.DataFrame({"lemma5_step": g["step"].min(), "lemma5_heads": g.size(),
                        "lemma5_rank": g["_rank"].min(skipna=False), "lemma5_rank_bound": g["_bound"].min(),
                        "lemma5_n": g["n"].max(), "lemma5_certified": g["certified"].all(),
                        "lemma5_lambda_ratio": g["_ratio"].min()})
    return out[cols]


def trial_measures(results: Results) -> pd.DataFrame:
    """Size, alignment and outcome per trial (one row per trial, index trial_id): labels (trial_name, dataset,
    status, seed, family, method, variant, setting), size, alignment (NaN without diagnostics), outcome, the Lemma-5
    check at θ^τ (``lemma5_*``, NaN without one), then the flattened config (``cfg.*``). Raises ValueError for
    results without trials."""
    t = results.trials
    if t.empty:
        raise ValueError("results has no trials: run the study first (eeray.results.load returned an empty table)")
    t = t.sort_values("trial_id", kind="stable").set_index("trial_id")
    arch = t.get("cfg.model.arch", pd.Series("", index=t.index))
    out = pd.DataFrame({
        "trial_name": t["trial_name"], "dataset": t["dataset"], "status": t["status"], "seed": t["cfg.seed"],
        "family": family_of(t), "method": method_of(t), "variant": variant_of(t), "setting": setting_of(t),
        "d": t["d"].astype(float), "m_c": t["cfg.model.lenet_mc"].where(arch == "lenet").astype(float),
        "m_H": t["m_H"].astype(float), "n": t["n"].astype(float), "m_y": t["m_y"].astype(float)})
    out["d_over_nmy"] = out["d"] / (out["n"] * out["m_y"])
    out = out.join(alignment_measures(results.diagnostics))
    for c in ("final_train_error", "final_train_loss", "final_test_error"):
        out[c] = t[c].astype(float)
    out = out.join(lemma5_ranks(results.safety))
    cfg = [c for c in t.columns if c.startswith("cfg.")]  # the whole config, for grouping and filtering
    return out.join(t[cfg])
