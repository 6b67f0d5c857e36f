"""Analysis over the Parquet results (docs/architecture.md principle 6): does training success follow network size or
the data-architecture alignment condition (docs/paper-choices.md (F41))? Measures per trial, rank (partial)
correlations with cluster-bootstrap intervals over seeds, how stable the verdict is on reruns, the paper's figures
and tables, and a static HTML report::

    from eeray import analysis
    res = analysis.load_results(analysis.default_results_dir(), "width_sweep")  # $EERAY_RESULTS_DIR or ./results
    m = analysis.trial_measures(res)
    assoc = analysis.association_table(m)          # per dataset and model family, with intervals over seeds
    analysis.survival_table(assoc, analysis.verdict_stability(m))  # which association survives; how stable

    python -m eeray.analysis report results --study width_sweep
"""
from eeray.analysis.measures import (RESULTS_ENV, TOLERANCES, alignment_measures, default_results_dir, family_of,
                                     lemma5_ranks, load_results, method_of, q_t_at, q_t_sensitivity, setting_of,
                                     trial_measures, variant_of)
from eeray.analysis.plots import (plot_associations, plot_delta_m, plot_lemma5, plot_mean_curves,
                                  plot_partial_intervals, plot_training_curves, save_figure)
from eeray.analysis.report import available_studies, write_report
from eeray.analysis.stats import (ASSOCIATIONS, STABLE_SHARE, association_table, cluster_bootstrap,
                                  partial_spearman, survival_table, verdict_stability)
from eeray.analysis.tables import (assumption4_table, format_mean_std, lemma5_crosstab, lemma5_table, mean_std,
                                   mean_std_table, table6)

__all__ = [
    "TOLERANCES", "ASSOCIATIONS", "STABLE_SHARE", "RESULTS_ENV", "default_results_dir", "family_of",
    "verdict_stability", "load_results", "trial_measures", "alignment_measures", "lemma5_ranks",
    "method_of", "variant_of", "setting_of", "q_t_at", "q_t_sensitivity", "association_table", "survival_table",
    "partial_spearman", "cluster_bootstrap", "mean_std", "mean_std_table", "format_mean_std", "table6",
    "lemma5_table", "lemma5_crosstab", "assumption4_table", "plot_training_curves", "plot_delta_m",
    "plot_associations", "plot_partial_intervals", "plot_lemma5", "plot_mean_curves", "save_figure",
    "write_report", "available_studies",
]
