"""Standard vs A(Standard) with the pre-activation ResNet-18 (paper §3.4.2, Tables 2–5).

The protocol: pre-activation ResNet-18 with softplus (ς = 100); SGD batch 64, lr 0.1, momentum 0.9, weight decay
1e-5 as G and G̃ = G; T̂ = 200 epochs with the paper's augmentation, 100 without (MNIST, CIFAR-10/100 only);
m_H = ⌈2n/513⌉. Three stages, each its own study (own results, MLflow experiment and --resume):

  certify  Table 2: Assumption 4 certified for each dataset the other stages train on (safe_exploration.py)
  grid     ε ∈ {1e-3, 1e-5} × τ0 ∈ {0.4, 0.6, 0.8} on a seeded 80/20 train/validation split (Tables 7–15)
  final    5 seeds of Standard and of A(Standard) at the chosen (ε, τ0) on the full training set: test error
           (Tables 3–4) and wall-clock per phase (Table 5)

Run:      python studies/ee_vs_standard.py --data-root /path/to/data      # all three stages
          (an absent paper dataset is an error; --present-datasets-only runs those present, listing the rest)
          python studies/ee_vs_standard.py --stage final --chosen paper    # skip the grid: the paper's picks
Smoke:    python studies/ee_vs_standard.py --smoke      # digits16 subsets on the CPU
Runtime:  paper: a 200-epoch CIFAR trial ≈ 20 min on one H100; six datasets ≈ 200 GPU-hours from scratch (4
          trials per GPU), less with branching (the grid's A cells explore once: docs/study-notes.md)
Expect:   A(Standard) test error ≤ Standard within a std (Tables 3–4), and A's wall-clock ≤ Standard's (Table 5:
          ratio 0.997 on CIFAR-10), the exploitation epochs being cheaper with the backbone frozen.
"""
import sys
from pathlib import Path

# Runs from any working directory, eeray installed or not: this clone's eeray goes first on sys.path, so neither
# an older installed copy nor a folder named eeray in the working directory is imported instead (a study file
# kept outside a clone uses the installed eeray). docs/reference.md, "Running a study file".
_CLONE = Path(__file__).resolve().parents[1]
if (_CLONE / "eeray" / "__init__.py").is_file() and sys.path[:1] != [str(_CLONE)]:
    sys.path.insert(0, str(_CLONE))

import argparse
import os

from eeray.config import (ConfigError, DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig,
                          TrialConfig)
from eeray.data import select_datasets
from eeray.results import load
from eeray.cli import main
from eeray.study import Resources, Study

PAPER = ("mnist", "cifar10", "cifar100", "semeion", "kmnist", "svhn")
NO_AUG = ("mnist", "cifar10", "cifar100")  # Table 4
# the argmin of Tables 7–15 (docs/paper-choices.md, Grid picks): (dataset, augment) -> (ε, τ0)
PAPER_CHOSEN = {("mnist", True): (1e-3, 0.8), ("cifar10", True): (1e-5, 0.6), ("cifar100", True): (1e-3, 0.6),
                ("semeion", True): (1e-5, 0.4), ("kmnist", True): (1e-3, 0.6), ("svhn", True): (1e-3, 0.6),
                ("mnist", False): (1e-3, 0.8), ("cifar10", False): (1e-5, 0.4), ("cifar100", False): (1e-3, 0.4)}


def settings(profile: str) -> tuple[list[tuple[str, bool]], dict[str, str]]:
    """(dataset, augment) pairs to run, and the datasets skipped: the paper's six (an absent one refuses, unless
    --present-datasets-only); digits16 for smoke and laptop."""
    if profile != "paper":
        return [("digits16", True)], {}
    selection = select_datasets(PAPER)
    names = selection.present
    return [(n, True) for n in names] + [(n, False) for n in names if n in NO_AUG], selection.skipped


def protocol(profile: str, augment: bool) -> TrialConfig:
    epochs = {"smoke": 2, "laptop": 10, "paper": 200 if augment else 100}[profile]
    return TrialConfig(
        data=DataConfig(augment=augment, n_train={"smoke": 64, "laptop": 1000, "paper": None}[profile],
                        n_test=64 if profile == "smoke" else None),
        model=ModelConfig(arch="preact_resnet18"),
        optim=OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-5),
        ee=EEConfig(m_H_factor=2.0),  # m_H = ⌈2n/513⌉ (Table 2)
        train=TrainConfig(epochs=epochs, batch_size=64, eval_every=1, checkpoint_every_epochs=max(1, epochs // 20),
                          eval_batch_size=1000),
        diag=DiagConfig(lemma5=False))


def _resources(profile: str) -> Resources:
    return Resources(cpu=2 if profile != "paper" else 3, gpu=0.25 if profile == "paper" else 0)


def build_grid(profile: str) -> Study:
    variants = {}
    pairs, skipped = settings(profile)
    for name, aug in pairs:
        for eps in ([1e-3] if profile == "smoke" else [1e-3, 1e-5]):
            for tau0 in ([0.5] if profile == "smoke" else [0.4, 0.6, 0.8]):
                variants[f"{name}{'' if aug else ' noaug'} eps={eps:g} tau0={tau0:g}"] = {
                    "data.name": name, "data.augment": aug, "data.val_fraction": 0.2, "ee.epsilon": eps,
                    "ee.tau": tau0, "train.epochs": protocol(profile, aug).train.epochs}
    return Study(name="ee_vs_standard_grid", base=protocol(profile, True), variants=variants,
                 resources=_resources(profile), summary_columns=("final_test_error",), skipped_datasets=skipped)


def chosen_from_grid(results_dir: str) -> dict[tuple[str, bool], tuple[float, float]]:
    """Per (dataset, augment): the (ε, τ0) with the lowest validation error (ties: the first in grid order)."""
    t = load(results_dir, "ee_vs_standard_grid").trials
    t = t[t.status == "completed"]
    out = {}
    for (name, aug), g in t.groupby(["cfg.data.name", "cfg.data.augment"]):
        best = g.sort_values(["final_test_error", "cfg.ee.epsilon", "cfg.ee.tau"], ascending=[True, False, True])
        out[(name, bool(aug))] = (float(best["cfg.ee.epsilon"].iloc[0]), float(best["cfg.ee.tau"].iloc[0]))
    return out


def final_picks(chosen: str, results_dir: str, validate_only: bool) -> dict:
    """The final stage's (ε, τ0) per (dataset, augment): the paper's, or this run's grid stage's. Before the grid
    has run, --validate-only checks the final stage with the paper's picks in their place (and says so); a run
    refuses with what to do."""
    if chosen == "paper":
        return PAPER_CHOSEN
    if (Path(results_dir) / "ee_vs_standard_grid").is_dir():
        return chosen_from_grid(results_dir)
    if validate_only:
        print("  final stage: the grid stage has no results yet; (ε, τ0) are the paper's picks for this check "
              "(the run takes them from the grid)")
        return PAPER_CHOSEN
    raise ConfigError("--chosen", "grid", f"the final stage takes (ε, τ0) from the grid stage's results, and "
                      f"{Path(results_dir) / 'ee_vs_standard_grid'} does not exist: run --stage grid (or --stage "
                      f"all) first, or pass --chosen paper")


def build_final(profile: str, chosen: dict) -> Study:
    seeds = [0] if profile == "smoke" else [0, 1, 2, 3, 4]
    variants = {}
    pairs, skipped = settings(profile)
    for name, aug in pairs:
        eps, tau0 = chosen.get((name, aug), (1e-3, 0.8))
        common = {"data.name": name, "data.augment": aug, "train.epochs": protocol(profile, aug).train.epochs}
        label = f"{name}{'' if aug else ' noaug'}"
        variants[f"{label} Standard"] = {**common, "ee.enabled": False}
        variants[f"{label} A(Standard)"] = {**common, "ee.epsilon": eps, "ee.tau": tau0}
    return Study(name="ee_vs_standard", base=protocol(profile, True), grid={"seed": seeds}, variants=variants,
                 resources=_resources(profile), skipped_datasets=skipped,
                 summary_columns=("final_test_error", "explore_seconds", "exploit_seconds", "m_H"))


def build_certify(profile: str) -> Study:
    import safe_exploration  # studies/safe_exploration.py, beside this file

    # the datasets the grid and final stages train on (the paper's six in profile paper, else digits16)
    study = safe_exploration.build(profile, datasets=PAPER if profile == "paper" else ("digits16",))
    return Study(**{**study.__dict__, "name": "ee_vs_standard_certify"})


if __name__ == "__main__":
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--stage", choices=("all", "certify", "grid", "final"), default="all")
    p.add_argument("--chosen", choices=("grid", "paper"), default="grid",
                   help="final stage: (ε, τ0) from this run's grid, or the paper's (docs/paper-choices.md, Grid picks)")
    extra, rest = p.parse_known_args()
    stages = ("certify", "grid", "final") if extra.stage == "all" else (extra.stage,)
    results_dir = rest[rest.index("--results-dir") + 1] if "--results-dir" in rest else os.environ.get(
        "EERAY_RESULTS_DIR", "results")
    for stage in stages:
        if stage == "final":
            builder = (lambda prof: build_final(prof, final_picks(extra.chosen, results_dir,
                                                                  "--validate-only" in rest)))
        else:
            builder = {"certify": build_certify, "grid": build_grid}[stage]
        builder.__module__ = __name__
        code = main(builder, rest)
        if code:
            sys.exit(code)
