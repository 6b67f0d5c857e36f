"""Which exploitation optimizer G̃, learning rate, τ0 and ε? (paper §3.4.2 learning-rate study and Table 6)

G̃ ∈ {SGD, L-BFGS} × learning rate ∈ {0.2, 0.1, 0.01, 0.001} × τ0 ∈ {0.4, 0.6, 0.8} × ε ∈ {1e-3, 1e-5}, with the
Standard baseline (no EE) at every learning rate. G = SGD (momentum 0.9, weight decay 1e-5, batch 64) at the
swept lr; G̃ = SGD is the paper's G̃ = G; G̃ = L-BFGS runs full-batch on cached features (docs/paper-choices.md (A7):
strong-Wolfe line search, lr 1, 20 iterations per exploitation epoch, history 10). Selection uses the 80/20
train/validation split (docs/paper-choices.md (E34)): `final_test_error` is the validation error here.

Data: the paper used MNIST with augmentation and ResNet-18 (profile paper, needs --data-root with MNIST, else
Fashion-MNIST from Debian); laptop and smoke use LeNet on digits16 (real digits, always available).

Run:      python studies/optimizer_sweep.py
Smoke:    python studies/optimizer_sweep.py --smoke            # < 2 minutes on 2 cores
Runtime:  laptop ~40 min on 2 cores (52 trials); paper ~60 GPU-hours (5 seeds × 52 trials, 4 per GPU)
Expect:   the best learning rate per method (Standard, A with G̃ = SGD) and Table 6: L-BFGS as G̃ not worse
          than SGD at the chosen (τ0, ε).
"""
from eeray.config import DataConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Resources, Study

LBFGS = {"ee.exploit_optim.name": "lbfgs", "ee.exploit_optim.lr": 1.0, "ee.exploit_optim.lbfgs_iters": 20,
         "ee.exploit_optim.lbfgs_history": 10}


def paper_dataset() -> str:
    from eeray.data.real import DatasetFilesError, check_files

    try:
        check_files(DataConfig(name="mnist"))
        return "mnist"
    except DatasetFilesError:
        print("  MNIST not under the data root: using Fashion-MNIST (Debian's dataset-fashion-mnist)")
        return "fashion_mnist"


def build(profile: str) -> Study:
    if profile == "paper":
        name = paper_dataset()
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
                 summary_columns=("final_train_error", "final_test_error"))


if __name__ == "__main__":
    raise SystemExit(main(build))
