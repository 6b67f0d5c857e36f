"""Table 2: is the safe-exploration condition (Assumption 4) certified for each dataset present?

At initialisation (He-based PyTorch init, BN in eval mode, the non-augmented training set) and with q ~ N(0, I),
the n×n Gram (ZZᵀ)∘(SSᵀ) of φ(q, θ) (docs/paper-choices.md (D2)) is certified positive definite by shifted Cholesky and
cross-checked by a second method where memory allows — the paper verified "twice by two standard methods".
m_H = ⌈2n/513⌉ for the pre-activation ResNet-18 (m_{H−1} = 513), exactly Table 2's widths. A dataset whose files
are not under the data root is an error; `--present-datasets-only` runs the ones present and lists the others as
skipped. digits16 (scikit-learn's digits) is always there.

Run:      python studies/safe_exploration.py --data-root /path/to/data
Some:     python studies/safe_exploration.py --data-root /path/to/data --present-datasets-only
Smoke:    python studies/safe_exploration.py --smoke
Runtime:  laptop (n ≤ 3,000 per dataset) ~5 min on 2 cores; paper (full n: up to 73,257, a 43 GB float64
          Gram) needs a GPU with ≥ 48 GB or that much RAM: ~5 s per dataset on an H100
Expect:   rank n (certified) for every dataset, as in Table 2; `summary.csv` lists n, m_H, the first method
          (certified, failed_pivot) and the second (second_method, second_rank, agree), and the seconds.
"""
import sys
from pathlib import Path

# Runs from any working directory, eeray installed or not: this clone's eeray goes first on sys.path, so neither
# an older installed copy nor a folder named eeray in the working directory is imported instead (a study file
# kept outside a clone uses the installed eeray). docs/reference.md, "Running a study file".
_CLONE = Path(__file__).resolve().parents[1]
if (_CLONE / "eeray" / "__init__.py").is_file() and sys.path[:1] != [str(_CLONE)]:
    sys.path.insert(0, str(_CLONE))

import pandas as pd

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, TrainConfig, TrialConfig
from eeray.data import DATASETS, select_datasets
from eeray.cli import main
from eeray.results import columns
from eeray.study import Resources, Study

CANDIDATES = ("digits16", "semeion", "mnist", "kmnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
N_CAP = {"smoke": 300, "laptop": 3000, "paper": None}  # None: the paper's full training sets


def build(profile: str, datasets: tuple[str, ...] | None = None) -> Study:
    """``datasets``: certify these instead of the profile's candidates (studies/ee_vs_standard.py's certify
    stage passes the datasets its other stages train on)."""
    if datasets is None:
        datasets = CANDIDATES if profile != "smoke" else ("digits16", "fashion_mnist")
    selection = select_datasets(datasets)
    names = selection.present
    cap = N_CAP[profile]
    base = TrialConfig(
        data=DataConfig(name="digits16"),
        model=ModelConfig(arch="preact_resnet18"),
        ee=EEConfig(m_H_factor=2.0),  # m_H = ⌈2n/513⌉
        train=TrainConfig(epochs=0, eval_batch_size=512),  # certificate only: no training
        # paper: SVHN's n = 73,257 needs a 40.4 GiB Gram (MNIST's 60,000: 27.2 GiB), checked before Ray
        diag=DiagConfig(assumption4=True, lemma5=False, memory_budget_gb=48.0 if profile == "paper" else 2.0),
    )
    # the certificate is about the training set; a few hundred test images keep the step-0 evaluation short
    variants = {name: {"data.name": name, "data.n_train": None if cap is None else min(cap, DATASETS[name].n_train),
                       "data.n_test": 256} for name in names}
    return Study(name="safe_exploration", base=base, variants=variants, require_safe_exploration=True,
                 resources=Resources(cpu=2 if profile != "paper" else 4, gpu=1 if profile == "paper" else 0),
                 summary_columns=("n", "m_H", "assumption4_certified"), summarize=summarize,
                 skipped_datasets=selection.skipped)


# Table 2's row per dataset: the first method (the shifted Cholesky: certified, or the first failing pivot) and the
# paper's second one (eigvalsh or pivoted Cholesky: its rank, and whether the two agree), from the safety schema
SUMMARY = ("n", "m_H", "m_H_minus_1", "certified", "failed_pivot", "second_method", "second_rank", "agree",
           "seconds_gram", "seconds_cholesky", "seconds_second")


def summarize(results) -> pd.DataFrame:
    s = results.safety[results.safety.kind == "assumption4"]
    if s.empty:
        return pd.DataFrame()
    t = results.trials.set_index("trial_id")
    out = columns(s, ("trial_id", "dataset", *SUMMARY)).copy()
    out.insert(1, "trial", out.trial_id.map(t.trial_name))
    return out.drop(columns="trial_id")


if __name__ == "__main__":
    raise SystemExit(main(build))
