"""A tiny study for the orchestration tests: four LeNet trials on random 16x16 images, one of which diverges
(learning rate 1e12), with a checkpoint at every epoch so a kill can land mid-trial."""
from eeray.config import DataConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Study


def build(profile: str) -> Study:
    base = TrialConfig(
        data=DataConfig(name="random16", n_train=96, n_test=32),
        model=ModelConfig(arch="lenet", lenet_mc=1, lenet_pool="none"),
        optim=OptimConfig(lr=0.05, momentum=0.9),
        ee=EEConfig(tau=0.5, epsilon=1e-2, m_H=4),
        train=TrainConfig(epochs=24, batch_size=16, eval_every=2, eval_unit="steps", checkpoint_every_epochs=1))
    return Study(name="tiny", base=base, grid={"seed": [0, 1, 2]},
                 variants={"ee": {}, "diverge": {"optim.lr": 1e12, "seed": 0}},
                 max_failures=1, summary_columns=("final_train_error",))


if __name__ == "__main__":
    raise SystemExit(main(build))
