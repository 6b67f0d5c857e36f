"""eeray.analysis on planted structures (does it tell size from alignment?), on hand-made tables with known answers,
and on the width-sweep smoke results (measures agree with what the trial loop logged)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from eeray import analysis
from eeray.analysis.stats import cluster_bootstrap, estimates
from eeray.results import Results, load, to_table


def _frame(table: str, rows: list[dict]) -> pd.DataFrame:
    return to_table(table, rows).to_pandas()  # exactly the columns and types eeray.results.load returns


def planted_results(driver: str, *, seeds=range(20), widths=range(1, 9), evaluations=40, seed=7) -> Results:
    """A width sweep with a planted structure. Alignment grows with size: trial (seed s, width m_c) is aligned at a
    fraction p of its evaluations, logit p = 1.2·z(m_c) + N(0, 1) (failures first, then aligned: Q_T flattens).
    ``driver='alignment'``: final error = 0.5·(1 − aligned fraction) + noise, so size acts only through alignment.
    ``driver='size'``: final error = 0.5·(1 − (m_c − 1)/7) + noise, so alignment is a bystander."""
    rng = np.random.default_rng(seed)
    trials, diag = [], []
    for s in seeds:
        for m_c in widths:
            tid = f"s{s:02d}-m{m_c}"
            p = 1 / (1 + np.exp(-(1.2 * (m_c - 4.5) / 2.3 + rng.normal())))
            k = int(round(p * evaluations))
            for i in range(evaluations):
                aligned = i >= evaluations - k
                diag.append({"study": "planted", "trial_id": tid, "step": 10 * i, "phase": "explore", "tol": 1e-8,
                             "aligned": aligned, "residual": 0.0 if aligned else 1e-3 * (1 + rng.random()),
                             "q_t": None, "q_evaluations": i + 1})
            base = 0.5 * (1 - k / evaluations) if driver == "alignment" else 0.5 * (1 - (m_c - 1) / 7)
            error = max(0.0, base + 0.05 * rng.normal())
            trials.append({"study": "planted", "trial_id": tid, "trial_name": f"m_c={m_c} seed={s}",
                           "status": "completed", "n": 1000, "m_y": 10, "d": 50_000 * m_c,
                           "final_train_error": error, "final_train_loss": error, "final_test_error": error,
                           "cfg.seed": s, "cfg.model.arch": "lenet", "cfg.model.lenet_mc": m_c,
                           "cfg.ee.enabled": False, "dataset": "random16"})
    return Results(_frame("trials", trials), _frame("steps", []), _frame("diagnostics", diag), _frame("safety", []))


def _row(assoc: pd.DataFrame, name: str) -> pd.Series:
    return assoc[assoc["association"] == name].iloc[0]


@pytest.mark.parametrize("driver", ["alignment", "size"])
def test_planted_structure_is_recovered(driver):
    m = analysis.trial_measures(planted_results(driver))
    assoc = analysis.association_table(m, n_boot=1000, seed=0)
    assert set(assoc["unit"]) == {"seeds"} and set(assoc["n_seeds"]) == {20} and set(assoc["n_trials"]) == {160}
    align, size = _row(assoc, "error ~ alignment | size"), _row(assoc, "error ~ size | alignment")
    assert _row(assoc, "alignment ~ size")["spearman_lo"] > 0.5  # the confounding the partials must see through
    driving, bystander = (align, size) if driver == "alignment" else (size, align)
    assert driving["spearman_hi"] < -0.6  # clearly non-zero: more alignment (or size), less error
    assert driving["spearman_p"] < 1e-6
    assert bystander["spearman_lo"] < 0 < bystander["spearman_hi"]  # the interval covers 0
    assert abs(bystander["spearman"]) < 0.15
    verdict = analysis.survival_table(assoc).iloc[0]
    assert (verdict["alignment survives"], verdict["size survives"]) == (
        ("yes", "no") if driver == "alignment" else ("no", "yes"))
    assert verdict["verdict"].startswith(f"error follows {driver};")


def test_bootstrap_is_deterministic_and_clusters_by_seed():
    m = analysis.trial_measures(planted_results("alignment", seeds=range(8), widths=range(1, 5)))
    first = analysis.association_table(m, n_boot=300, seed=3)
    pd.testing.assert_frame_equal(first, analysis.association_table(m, n_boot=300, seed=3))
    assert not first.equals(analysis.association_table(m, n_boot=300, seed=4))
    # five identical copies of every trial within its seed carry no new information: resampling seeds gives the
    # same Spearman intervals (ranks of copies are an affine map of the original ranks), resampling trials would not
    copies = pd.concat([m.assign(trial_name=m["trial_name"] + f" copy {i}") for i in range(5)])
    copied = analysis.association_table(copies, n_boot=300, seed=3)
    cols = ["spearman", "spearman_lo", "spearman_hi"]
    np.testing.assert_allclose(copied[cols].to_numpy(), first[cols].to_numpy(), rtol=1e-9, atol=1e-12)
    data = copies[["final_train_error", "aligned_fraction", "d"]].to_numpy(float)
    iid, unit = cluster_bootstrap(data, np.zeros(len(data)), estimates, n_boot=300, seed=3)
    assert unit == "trials"
    iid_width = np.subtract(*np.nanpercentile(iid[:, 0], [97.5, 2.5]))
    assert iid_width < 0.5 * (first.loc[0, "spearman_hi"] - first.loc[0, "spearman_lo"])  # overconfident


def test_partial_spearman_is_the_correlation_of_rank_residuals():
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    frame = pd.DataFrame({"x": z + rng.normal(size=200), "y": np.exp(z) + rng.normal(size=200), "z": z})
    r, p = analysis.partial_spearman(frame, "x", "y", "z")
    ranks = frame.rank().to_numpy()
    design = np.c_[np.ones(200), ranks[:, 2]]
    resid = [ranks[:, i] - design @ np.linalg.lstsq(design, ranks[:, i], rcond=None)[0] for i in (0, 1)]
    assert r == pytest.approx(np.corrcoef(*resid)[0, 1], abs=1e-12)
    assert p == pytest.approx(2 * sps.t.sf(abs(r) * np.sqrt(197 / (1 - r * r)), 197))
    assert analysis.partial_spearman(frame, "x", "z", "y")[0] > 0.3  # x depends on z beyond y


def test_q_t_at_other_tolerances_and_rank_cuts():
    rows = [{"trial_id": "a", "step": s, "phase": "explore", "tol": 1e-8, "residual": r, "aligned": r <= 1e-8,
             "energy_1e-04": e4, "energy_1e-12": r} for s, r, e4 in ((0, 0.0, 1e-3), (1, 1e-9, 1e-9), (2, 1e-5, 1e-2))]
    rows += [{"trial_id": "b", "step": 0, "phase": "explore", "tol": 1e-8, "residual": np.nan, "aligned": False,
              "energy_1e-04": np.nan, "energy_1e-12": np.nan}]  # matrix-free: no residual, no spectrum
    diag = pd.DataFrame(rows)
    assert analysis.q_t_at(diag, 1e-8).to_dict() == {"a": 1, "b": 1}  # a missing residual is not aligned
    assert analysis.q_t_at(diag, 1e-10).to_dict() == {"a": 2, "b": 1}
    assert analysis.q_t_at(diag, 1e-4).to_dict() == {"a": 0, "b": 1}
    by_kappa = analysis.q_t_at(diag, 1e-8, kappa=1e-4)
    assert by_kappa["a"] == 2 and np.isnan(by_kappa["b"])  # e(κ) not computed: no count, not "all failed"
    sens = analysis.q_t_sensitivity(diag)
    assert list(sens.columns) == ["evaluations", "ρ≤1e-04", "ρ≤1e-06", "ρ≤1e-08", "ρ≤1e-10", "ρ≤1e-12",
                                  "e(1e-04)≤1e-08", "e(1e-12)≤1e-08"]
    assert sens.loc["a"].tolist() == [3, 0, 1, 1, 2, 2, 2, 1]
    with pytest.raises(ValueError, match=r"kappa=1e-06: no column 'energy_1e-06'.*logged: \['energy_1e-04'"):
        analysis.q_t_at(diag, 1e-8, kappa=1e-6)
    with pytest.raises(ValueError, match="tol must be a positive number"):
        analysis.q_t_at(diag, 0)


def test_mean_std_tables_use_the_sample_std():
    m = pd.DataFrame({"status": "completed", "dataset": ["mnist"] * 3 + ["cifar10"],
                      "method": ["standard", "standard", "A(standard)", "standard"],
                      "final_test_error": [0.004, 0.006, 0.003, 0.078]})
    t = analysis.mean_std_table(m, "final_test_error", ["dataset"], ["method"], scale=100)
    assert t.loc["mnist", "standard"] == f"0.50 ({np.std([0.4, 0.6], ddof=1):.2f})" == "0.50 (0.14)"
    assert t.loc["mnist", "A(standard)"] == "0.30 (–)"  # one seed: no std, not 0
    assert t.loc["cifar10", "A(standard)"] == ""
    with pytest.raises(ValueError, match=r"by=\['seed'\]: no column\(s\) \['seed'\]"):
        analysis.mean_std_table(m, "final_test_error", ["seed"])


def test_lemma5_table_decides_rank_n_with_or_without_a_rank():
    m = pd.DataFrame({"trial_name": ["a", "b", "c", "d"], "setting": "A", "seed": [0, 1, 2, 3],
                      "final_train_error": [0.0, 0.2, 0.3, 0.0], "lemma5_rank": [100, 80, np.nan, np.nan],
                      "lemma5_rank_bound": [100, 100, 60, 100], "lemma5_n": 100,
                      "lemma5_certified": [True] + [False] * 3,
                      "lemma5_lambda_ratio": 1e-3, "lemma5_step": 30})
    t = analysis.lemma5_table(m).set_index("trial_name")
    assert t["rank = n"].tolist()[:3] == [True, False, False] and pd.isna(t.loc["d", "rank = n"])
    assert t["agrees"].tolist()[:3] == [True, True, True] and pd.isna(t.loc["d", "agrees"])
    assert analysis.lemma5_crosstab(t).to_numpy().tolist() == [[1, 0], [0, 2]]


def test_errors_name_the_argument_and_what_is_valid(tmp_path):
    m = analysis.trial_measures(planted_results("size", seeds=range(3), widths=range(1, 4)))
    with pytest.raises(ValueError, match=r"n_outer must be an integer >= 10; got 3"):
        analysis.verdict_stability(m, n_outer=3)
    with pytest.raises(ValueError, match=r"other groups, results or bootstrap settings"):
        analysis.survival_table(analysis.association_table(m, n_boot=50, seed=1),
                                analysis.verdict_stability(m.assign(dataset="digits16"), n_boot=50, n_outer=10,
                                                           n_inner=10))
    with pytest.raises(ValueError, match=r"alignment='Q_T_fraction' is not a column of measures; columns: \["):
        analysis.association_table(m, alignment="Q_T_fraction")
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
        analysis.association_table(m, level=95)
    for fn in (analysis.association_table, analysis.verdict_stability):  # no silent "every row" without statuses
        with pytest.raises(ValueError, match=r"has no 'status' column .*pass completed_only=False"):
            fn(m.drop(columns="status"))
    assert len(analysis.association_table(m.drop(columns="status"), n_boot=20, completed_only=False))
    # every trial aligned at every evaluation: alignment explains nothing, and the question left is error ~ size
    flat = analysis.association_table(m.assign(aligned_fraction=1.0), n_boot=200).set_index("association")
    assert flat.loc["error ~ size | alignment", "spearman"] == flat.loc["error ~ size", "spearman"]
    assert np.isnan(flat.loc["error ~ alignment | size", "spearman"])
    stability = analysis.verdict_stability(m.assign(aligned_fraction=1.0), n_boot=200, n_outer=20, n_inner=50)
    table = analysis.survival_table(analysis.association_table(m.assign(aligned_fraction=1.0), n_boot=200), stability)
    assert table["verdict"].tolist() == ["error follows size; aligned_fraction is the same in every trial, so it "
                                         "explains none of the differences"], table["verdict"].tolist()
    assert table["stability"].tolist() == [1.0]
    for frozen in ({"aligned_fraction": 1.0, "d": 5.0}, {"final_train_error": 0.0}):  # nothing left to explain
        verdicts = analysis.survival_table(analysis.association_table(m.assign(**frozen), n_boot=20))["verdict"]
        assert verdicts.str.startswith("undefined: ").all() and verdicts.str.contains("constant").all(), verdicts
    (tmp_path / "empty_study").mkdir()
    with pytest.raises(ValueError, match="has no trials for study 'empty_study'.*python studies/empty_study.py.*"
                                         "EERAY_RESULTS_DIR"):
        analysis.load_results(tmp_path, "empty_study")
    with pytest.raises(FileNotFoundError, match=r"no results for study 'nope'.*studies there: \['empty_study'\]"):
        analysis.load_results(tmp_path, "nope")


@pytest.mark.slow
def test_measures_agree_with_what_the_trials_logged(width_smoke):
    results_dir, stdout = width_smoke
    # the run's summary: per dataset and family, a single seed cannot give a stable verdict, and says so
    summary = pd.read_csv(results_dir / "width_sweep" / "summary.csv")
    assert summary[["dataset", "family"]].values.tolist() == [["digits16", "ee"], ["digits16", "standard"],
                                                             ["random16", "ee"], ["random16", "standard"]]
    assert summary["verdict"].str.startswith("not stable: 1 seed(s): too few").all() and "stability" in stdout
    res = load(results_dir, "width_sweep")
    m = analysis.trial_measures(res)
    t = res.trials.set_index("trial_id").loc[m.index]
    assert (m["Q_T"] == t["final_Q_T"]).all() and (m["evaluations"] == t["diag_evaluations"]).all()
    np.testing.assert_allclose(m["aligned_fraction"], 1 - t["final_Q_T"] / t["diag_evaluations"])
    pd.testing.assert_series_equal(m["last_Q_T_increment_step"], t["last_Q_T_increment_step"].astype(float),
                                   check_names=False)
    assert (m["d_over_nmy"] == t["d"] / (t["n"] * t["m_y"])).all()
    assert (m["m_c"] == t["cfg.model.lenet_mc"]).all() and (m["final_train_error"] == t["final_train_error"]).all()
    sens = analysis.q_t_sensitivity(res.diagnostics)
    assert (sens.loc[m.index, "ρ≤1e-08"] == t["final_Q_T"]).all()  # the logged tolerance reproduces Q_T
    ladder = sens[[f"ρ≤{x:.0e}" for x in analysis.TOLERANCES]].to_numpy()
    assert (np.diff(ladder, axis=1) >= 0).all()  # a stricter tolerance never counts fewer failures
    ee = m[m["method"] != "standard"]
    assert ee["lemma5_heads"].notna().all() and m.loc[m["method"] == "standard", "lemma5_heads"].isna().all()
    # one name per variant: the labels the trial names start with
    assert set(m["variant"]) == {"standard", "ee c=0.5", "ee c=2"}
    assert all(name.startswith(v + " ") for name, v in zip(m["trial_name"], m["variant"]))
    assert set(m["family"]) == {"standard", "ee"} and (m["family"] == np.where(t["cfg.ee.enabled"], "ee",
                                                                               "standard")).all()


# --------------------------------------------------------------------------- labels, families, stability
def test_variant_is_the_label_trial_names_start_with():
    names = ["standard data=digits16 m_c=1 seed=0", "ee c=0.5 data=digits16 m_c=1 seed=0",
             "ee c=2 data=random16 m_c=4 seed=5"]
    t = pd.DataFrame({"trial_name": names, "cfg.ee.enabled": [False, True, True]})
    assert analysis.variant_of(t).tolist() == ["standard", "ee c=0.5", "ee c=2"]
    assert analysis.family_of(t).tolist() == ["standard", "ee", "ee"]
    assert analysis.method_of(t).tolist() == ["standard", "ee", "ee"]
    sine = pd.DataFrame({"trial_name": ["GD layers=2 seed=0", "A(GD) layers=3 seed=1"],
                         "cfg.ee.enabled": [False, True]})
    assert analysis.variant_of(sine).tolist() == ["GD", "A(GD)"]
    # the optimizer sweep: the standard variant pins tau0 and eps, so its names lack those axes
    opt = pd.DataFrame({"trial_name": ["standard lr=0.1 seed=0", "G~=SGD lr=0.1 tau0=0.5 eps=0.001 seed=0",
                                       "G~=L-BFGS lr=0.01 tau0=0.5 eps=0.001 seed=0"],
                        "cfg.ee.enabled": [False, True, True]})
    assert analysis.variant_of(opt).tolist() == ["standard", "G~=SGD", "G~=L-BFGS"]
    one = pd.DataFrame({"trial_name": ["A(GD) layers=2 seed=0", "A(GD) layers=3 seed=1"], "cfg.ee.enabled": [True] * 2})
    assert analysis.variant_of(one).tolist() == ["A(GD)", "A(GD)"]
    bare = pd.DataFrame({"trial_name": ["m_c=1 seed=0", "m_c=2 seed=0"], "cfg.ee.enabled": [False, False]})
    assert analysis.variant_of(bare).tolist() == ["standard", "standard"]  # no variant labels: the family


def test_size_statistics_are_per_model_family():
    """Planted: within each family error follows alignment; pooled, the EE family's larger d (and its lower error)
    would make size look like a driver. Grouped per family, each family gets its own verdict."""
    std = planted_results("alignment", seeds=range(10), widths=range(1, 5), seed=1)
    ee = planted_results("alignment", seeds=range(10), widths=range(1, 5), seed=2)
    ee_trials = ee.trials.assign(trial_id="ee-" + ee.trials["trial_id"], d=ee.trials["d"] * 40,
                                 final_train_error=ee.trials["final_train_error"] * 0.2, **{"cfg.ee.enabled": True})
    both = Results(pd.concat([std.trials, ee_trials], ignore_index=True), std.steps,
                   pd.concat([std.diagnostics, ee.diagnostics.assign(trial_id="ee-" + ee.diagnostics["trial_id"])],
                             ignore_index=True), std.safety)
    m = analysis.trial_measures(both)
    assoc = analysis.association_table(m, n_boot=300)
    table = analysis.survival_table(assoc)
    assert table[["dataset", "family"]].values.tolist() == [["random16", "ee"], ["random16", "standard"]]
    assert all(v.startswith("error follows alignment;") for v in table["verdict"])
    pooled = analysis.association_table(m, by=("dataset",), n_boot=300)
    assert _row(pooled, "error ~ size")["spearman_hi"] < _row(assoc, "error ~ size")["spearman_hi"]  # confounded


def test_verdict_stability_on_planted_structures():
    strong = analysis.trial_measures(planted_results("alignment", seeds=range(12), widths=range(1, 9)))
    st = analysis.verdict_stability(strong, n_boot=300, n_outer=60, n_inner=60)
    row = st.iloc[0]
    assert (row["family"], row["seeds"], row["resamples"]) == ("standard", 12, 60)
    # the bystander's interval covers 0 but not by much: about 1 rerun in 5 also sees a size effect
    assert row["verdict"] == "error follows alignment" and row["stability"] > 0.75
    assert row["stable"] == (row["stability"] >= analysis.STABLE_SHARE)
    assert row["other_verdicts"].startswith("both associations survive controlling for the other")
    pd.testing.assert_frame_equal(st, analysis.verdict_stability(strong, n_boot=300, n_outer=60, n_inner=60))
    table = analysis.survival_table(analysis.association_table(strong, n_boot=300), st)
    assert table.loc[0, "stability"] == row["stability"]
    assert table.loc[0, "verdict"].startswith("error follows alignment;" if row["stable"] else "not stable: only")

    # pure noise: whatever the data's verdict, reruns disagree (67% here) and the line says so instead of a verdict
    noise = analysis.trial_measures(planted_results("size", seeds=range(4), widths=range(1, 4), seed=3))
    noise = noise.assign(final_train_error=np.random.default_rng(0).random(len(noise)))
    st = analysis.verdict_stability(noise, n_boot=300, n_outer=60, n_inner=60)
    table = analysis.survival_table(analysis.association_table(noise, n_boot=300), st)
    assert not st.loc[0, "stable"] and st.loc[0, "stability"] < analysis.STABLE_SHARE
    assert table.loc[0, "verdict"].startswith(f"not stable: only {st.loc[0, 'stability']:.0%} of 60 seed ")
    two = analysis.trial_measures(planted_results("size", seeds=range(2), widths=range(1, 5)))
    st = analysis.verdict_stability(two, n_boot=100, n_outer=20, n_inner=20)
    assert np.isnan(st.loc[0, "stability"]) and not st.loc[0, "stable"]
    table = analysis.survival_table(analysis.association_table(two, n_boot=100), st)
    assert table.loc[0, "verdict"].startswith("not stable: 2 seed(s): too few")


def _reference_estimates(error, alignment, size):
    """The ten numbers of ``estimates`` one resample at a time, from scipy: Spearman as np.corrcoef of scipy's
    ranks, Kendall τ-b from scipy.stats.kendalltau, partials from partial_from."""
    from eeray.analysis.stats import partial_from

    cols = (error, alignment, size)
    ok = [len(c) > 2 and c.max() > c.min() for c in cols]
    if sum(ok) < 2:
        return np.full(10, np.nan)
    ranks = np.array([sps.rankdata(c) if v else np.zeros(len(c)) for c, v in zip(cols, ok)])
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.corrcoef(ranks)
    pairs = ((0, 1), (0, 2), (1, 2))
    ea, es, as_ = (rho[i, j] if ok[i] and ok[j] else np.nan for i, j in pairs)
    kendall = [sps.kendalltau(cols[i], cols[j]).statistic if ok[i] and ok[j] else np.nan for i, j in pairs]
    p_align = partial_from(ea, es, as_) if ok[2] else ea
    p_size = partial_from(es, ea, as_) if ok[1] else es
    return np.array([ea, es, as_, p_align, p_size, *kendall, np.nan, np.nan], dtype=float)


@pytest.mark.parametrize("pairwise_max", [256, 4])  # Kendall from pair signs, and through scipy for large N
def test_batched_estimates_are_scipys_numbers_bit_for_bit(monkeypatch, pairwise_max):
    from eeray.analysis import stats

    monkeypatch.setattr(stats, "PAIRWISE_KENDALL_MAX", pairwise_max)
    rng = np.random.default_rng(1)
    for n in [1, 2, 3, 4, 5, 8, 13, 39]:
        x = rng.normal(size=(40, n, 3))
        x[:10, :, 2] = np.round(x[:10, :, 2])  # ties, as sizes have
        x[10:20, :, 1] = rng.integers(0, 3, (10, n))  # heavy ties, as Q_T has
        x[20:25, :, 1] = 1.0  # alignment constant
        x[25:30, :, 2] = 2.0  # size constant
        x[30:33, :, 0] = 0.0  # error constant
        x[33:35, :, 1:] = 5.0  # only error varies: nothing to correlate
        want = np.array([_reference_estimates(*xi.T) for xi in x])
        np.testing.assert_array_equal(stats.batch_estimates(x), want)  # NaN where NaN, every other bit equal
        np.testing.assert_array_equal(estimates(*x[3].T), want[3])


def test_the_batched_bootstrap_draws_and_computes_what_cluster_bootstrap_does():
    from eeray.analysis.stats import _bootstrap_estimates

    rng = np.random.default_rng(2)
    data = np.round(rng.normal(size=(60, 3)), 1)
    for clusters in (np.repeat(np.arange(6), 10), np.array([0] * 7 + [1] * 13 + [2] * 10 + [3] * 30), np.zeros(60)):
        want, unit = cluster_bootstrap(data, clusters, _reference_estimates, n_boot=200, seed=5)
        got, got_unit = _bootstrap_estimates(data, clusters, 200, 5)
        assert got_unit == unit
        np.testing.assert_array_equal(got, want)


def test_batched_partials_equal_the_estimates():
    from eeray.analysis.stats import _batch_partials

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 25, 3))
    x[:, :, 2] = np.round(x[:, :, 2])  # ties, as sizes have
    x[5, :, 1] = 1.0  # alignment constant: error ~ size | alignment is error ~ size, the other undefined
    x[6, :, 2] = 2.0  # size constant: the mirror case
    x[7, :, 0] = 0.0  # error constant: both undefined
    got = _batch_partials(x)
    want = np.array([estimates(*xi.T)[3:5] for xi in x])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)  # NaN where both are NaN
    assert np.isnan(got[5, 0]) and np.isclose(got[5, 1], estimates(*x[5].T)[1], rtol=1e-12)
    assert np.isnan(got[6, 1]) and np.isclose(got[6, 0], estimates(*x[6].T)[0], rtol=1e-12)
    assert np.isnan(got[7]).all()


def test_the_width_sweep_summary_states_a_verdict_with_its_stability():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("width_sweep", ROOT / "studies" / "width_sweep.py")
    width_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(width_sweep)
    table = width_sweep.summarize(planted_results("alignment", seeds=range(12), widths=range(1, 9)))
    assert list(table.columns) == ["dataset", "family", "trials", "seeds", "error ~ alignment | size",
                                   "error ~ size | alignment", "stability", "verdict"]
    row = table.iloc[0]
    assert (row["dataset"], row["family"], row["trials"], row["seeds"]) == ("random16", "standard", 96, 12)
    share = int(row["stability"].rstrip("%")) / 100
    assert row["verdict"].startswith("error follows alignment;" if share >= analysis.STABLE_SHARE
                                     else "not stable: only")


def test_stability_counts_undefined_reruns_beside_defined_ones_when_their_counts_tie():
    """Reruns that miss the one seed whose error varies are undefined; the others reach a verdict. With equal counts
    the two kinds of verdict used to be compared with each other (TypeError) when they were ordered."""
    rng = np.random.default_rng(1)
    m = pd.DataFrame([{"status": "completed", "dataset": "x", "family": "f", "seed": s, "d": w * 100,
                       "final_train_error": float(rng.random()) if s == 0 else 0.0,
                       "aligned_fraction": float(rng.random())} for s in range(3) for w in range(1, 5)])
    st = analysis.verdict_stability(m, n_boot=20, n_outer=10, n_inner=10, seed=19)
    assert st.other_verdicts.iloc[0] == "undefined 10%; neither survives controlling for the other (no association, " \
                                        "or too few seeds) 10%"
