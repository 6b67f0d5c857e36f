"""Which exploitation optimizer G̃, learning rate, τ0 and ε? (paper §3.4.2 learning-rate study and Table 6)

G̃ ∈ {SGD, L-BFGS} × learning rate ∈ {0.2, 0.1, 0.01, 0.001} × τ0 ∈ {0.4, 0.6, 0.8} × ε ∈ {1e-3, 1e-5}, with the
Standard baseline (no EE) at every learning rate. G = SGD (momentum 0.9, weight decay 1e-5, batch 64) at the
swept lr; G̃ = SGD is the paper's G̃ = G; G̃ = L-BFGS runs full-batch on cached features (docs/paper-choices.md (A7):
strong-Wolfe line search, lr 1, 20 iterations per exploitation epoch, history 10). Selection uses the 80/20
train/validation split (docs/paper-choices.md (E34)): `final_test_error` is the validation error here.

Data: the paper used MNIST with augmentation and ResNet-18 (profile paper, needs --data-root with MNIST; with
--present-datasets-only, Fashion-MNIST from Debian stands in for an absent MNIST and the summary says so); laptop
and smoke use LeNet on digits16 (real digits, always available).

Run:      python studies/optimizer_sweep.py
Smoke:    python studies/optimizer_sweep.py --smoke
Runtime:  laptop 2.5 min on 2 cores (52 trials); paper ~60 GPU-hours from scratch (5 seeds × 52 trials, 4 per
          GPU), less with branching (on by default: per (lr, seed) the 12 A trials explore once; --no-branching
          runs each from scratch; measured savings: docs/study-notes.md)
Expect:   the best learning rate per method (Standard, A with G̃ = SGD) and Table 6: L-BFGS as G̃ not worse
          than SGD at the chosen (τ0, ε).
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

LBFGS = {"ee.exploit_optim.name": "lbfgs", "ee.exploit_optim.lr": 1.0, "ee.exploit_optim.lbfgs_iters": 20,
         "ee.exploit_optim.lbfgs_history": 10}


def paper_dataset() -> tuple[str, dict[str, str]]:
    """MNIST, as in the paper; Fashion-MNIST (Debian's dataset-fashion-mnist) stands in for an absent MNIST only
    when asked (--present-datasets-only: without it, the command line refuses the study, naming MNIST's missing
    files), and the summary says so. Returns (dataset, skipped)."""
    from eeray.data import select_datasets

    selection = select_datasets(("mnist", "fashion_mnist"))
    if "mnist" in selection.present:
        return "mnist", {}
    return "fashion_mnist", {"mnist": selection.skipped["mnist"] + " (Fashion-MNIST stands in)"}


def build(profile: str) -> Study:
    skipped: dict[str, str] = {}
    if profile == "paper":
        name, skipped = paper_dataset()
        data = DataConfig(name=name, augment=name == "mnist", val_fraction=0.2)
        model, epochs, batch, seeds = ModelConfig(arch="preact_resnet18"), 200, 64, [0, 1, 2, 3, 4]
    else:
        data = DataConfig(name="digits16", n_train=200 if profile == "smoke" else 1000, augment=True,
                          val_fraction=0.2)
        model, epochs, batch, seeds = ModelConfig(arch="lenet", lenet_pool="avg2"), (4 if profile == "smoke" else 40), 64, [0]
    base = TrialConfig(
        data=data, model=model,
        optim=OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-5),
        ee=EEConfig(tau=0.8, epsilon=1e-3),
        train=TrainConfig(epochs=epochs, batch_size=batch, eval_every=1, checkpoint_every_epochs=max(1, epochs // 10)),
        # paper: no Lemma-5 rank at θ^τ; its n×n Gram for n = 48,000 needs 17.4 GiB (the pre-Ray check refuses
        # it at the default 2 GiB budget), more than a quarter of a GPU
        diag=DiagConfig(lemma5=profile != "paper"),
    )
    smoke = profile == "smoke"
    grid = {"optim.lr": [0.1, 0.01] if smoke else [0.2, 0.1, 0.01, 0.001],
            "ee.tau": [0.5] if smoke else [0.4, 0.6, 0.8],
            "ee.epsilon": [1e-3] if smoke else [1e-3, 1e-5],
            "seed": seeds}
    return Study(name="optimizer_sweep", base=base, grid=grid,
                 variants={"standard": {"ee.enabled": False, "ee.tau": 0.8, "ee.epsilon": 1e-3},
                           "G~=SGD": {}, "G~=L-BFGS": LBFGS},
                 resources=Resources(cpu=1, gpu=0.25 if profile == "paper" else 0),
                 summary_columns=("final_train_error", "final_test_error"), skipped_datasets=skipped)


if __name__ == "__main__":
    raise SystemExit(main(build))
