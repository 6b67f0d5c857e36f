"""Does training success follow network size or the data-architecture alignment condition? (LeNet, Fig. 1)

The headline study (§2.2, Fig. 1; docs/paper-choices.md (F41)): LeNet, m_c ∈ {1, 2, 4}, trained by SGD on the random
16×16 set and on real handwritten digits, several seeds, with the alignment report and Q_T (eq 7) tracked per
epoch; the EE variant also sweeps m_H = ⌈c·n/m_{H−1}⌉, c ∈ {0.5, 1, 2, 4} (laptop and smoke: {0.5, 2}),
each distinct m_H once (a c whose m_H a smaller c already gives at a width is not run again at that width).

Run:      python studies/width_sweep.py                # local Ray, embedded MLflow, Parquet under ./results
Smoke:    python studies/width_sweep.py --smoke        # 12 tiny trials on the CPU (time: README, Studies)
Profiles: --profile smoke | laptop | paper (default: paper with a GPU, laptop without)
Runtime:  laptop 20–45 min on 2 cores, by machine (96 trials: 6 seeds × 32 epochs); paper ~3 GPU-hours
Expect:   final training error falls with m_c, and trials whose runs stay aligned (Q_T flat) reach zero error;
          the summary gives, per dataset and model family, the verdict (does error follow size or alignment?)
          and its stability (a verdict below 80% is reported as not stable); analysis/width_vs_alignment.ipynb
          tests whether alignment explains the error beyond size.
Notes:    the profiles tried, and the verdicts and runtimes measured: docs/study-notes.md
"""
import sys
from pathlib import Path

# Runs from any working directory, eeray installed or not: this clone's eeray goes first on sys.path, so neither
# an older installed copy nor a folder named eeray in the working directory is imported instead (a study file
# kept outside a clone uses the installed eeray). docs/reference.md, "Running a study file".
_CLONE = Path(__file__).resolve().parents[1]
if (_CLONE / "eeray" / "__init__.py").is_file() and sys.path[:1] != [str(_CLONE)]:
    sys.path.insert(0, str(_CLONE))

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Resources, Study

SIZES = {  # profile: (n_train, epochs, seeds, m_c values, diagnostic samples, diagnostics every k epochs)
    "smoke": (600, 3, [0], [1, 2], 24, 1),  # n = 600 > m_{H−1} = 513, so c = 0.5 and c = 2 differ (m_H 1 vs 3)
    # 6 seeds (the verdict's bootstrap resamples seeds: 3 gave opposite verdicts on reruns), paid for with 32
    # epochs and c ∈ {0.5, 2}: 96 trials × 32 epochs, less than the 90 × 40 of the earlier 3-seed profile
    "laptop": (600, 32, [0, 1, 2, 3, 4, 5], [1, 2, 4], 100, 2),
    "paper": (1000, 400, [0, 1, 2, 3, 4], [1, 2, 4], None, 60),  # 60 log-spaced evaluations (docs/paper-choices.md (D31))
}

# the EE variants' m_H factors c per profile (paper: all four of Fig. 1). A factor whose m_H = ⌈c·n/m_{H−1}⌉
# equals a smaller factor's at some width would be that trial run twice (eeray refuses it), so ee_variants runs
# it only where its m_H is new: at n = 600, c = 0.5 and c = 2 both give m_H = 1 at m_c = 4
EE_FACTORS = {"smoke": [0.5, 2], "laptop": [0.5, 2], "paper": [0.5, 1, 2, 4]}


def ee_variants(base: TrialConfig, profile: str, widths: list[int]) -> dict[str, dict]:
    """One variant per factor c; where c gives a width's m_H that a smaller c already gives, that width runs
    once, under the smaller c (at n = 1000: c = 1 adds m_c = 1; c = 2 adds m_c = 1, 2; c = 4 adds all three)."""
    from eeray.study_validation import ee_head_sizes

    def m_H(c, m_c):
        cfg = base.replace(**{"ee.enabled": True, "ee.m_H_factor": c, "model.lenet_mc": m_c})
        return ee_head_sizes(cfg, base.data.n_train)[0]

    variants, seen = {}, {m_c: set() for m_c in widths}
    for c in EE_FACTORS[profile]:
        new = [m_c for m_c in widths if m_H(c, m_c) not in seen[m_c]]
        for m_c in new:
            seen[m_c].add(m_H(c, m_c))
        pinned = {"ee.enabled": True, "ee.m_H_factor": c}
        if new == widths:
            variants[f"ee c={c:g}"] = pinned
        else:
            variants.update({f"ee c={c:g} m_c={m_c}": {**pinned, "model.lenet_mc": m_c} for m_c in new})
    return variants


def build(profile: str) -> Study:
    n, epochs, seeds, widths, diag_n, diag_every = SIZES[profile]
    base = TrialConfig(
        data=DataConfig(name="random16", n_train=n),
        model=ModelConfig(arch="lenet", lenet_pool="none"),  # docs/paper-choices.md (B14): the literal reading
        optim=OptimConfig(lr=0.1, momentum=0.9),  # paper §B.1
        ee=EEConfig(enabled=False, tau=0.8, epsilon=1e-3),
        train=TrainConfig(epochs=epochs, batch_size=100 if n >= 100 else 16, eval_every=1,
                          checkpoint_every_epochs=max(1, epochs // 10)),
        diag=DiagConfig(alignment=True, every=diag_every, unit="epochs" if profile != "paper" else "log",
                        max_samples=diag_n, memory_budget_gb=16.0 if profile == "paper" else 2.0),
    )
    return Study(
        name="width_sweep",
        base=base,
        grid={"data.name": ["random16", "digits16"], "model.lenet_mc": widths, "seed": seeds},
        variants={"standard": {"ee.enabled": False}, **ee_variants(base, profile, widths)},
        resources=Resources(cpu=1, gpu=0.25 if profile == "paper" else 0),
        summary_columns=("final_train_error", "final_test_error", "final_Q_T", "d"),
        summarize=summarize,
    )


def summarize(results):
    """The study's answer per dataset and model family, with how stable it is (eeray.analysis.verdict_stability:
    the share of simulated reruns on resampled seeds reaching the same verdict; below 80% the verdict line says
    'not stable' instead)."""
    from eeray import analysis  # here, not at the top: parsing and validating the study stays light

    m = analysis.trial_measures(results)
    table = analysis.survival_table(analysis.association_table(m), analysis.verdict_stability(m))
    table["stability"] = [f"{v:.0%}" if v == v else "–" for v in table["stability"]]
    return table[["dataset", "family", "trials", "seeds", "error ~ alignment | size", "error ~ size | alignment",
                  "stability", "verdict"]]


if __name__ == "__main__":
    raise SystemExit(main(build))
