"""A tiny study whose learning rate is tuned by Optuna within each grid point (two widths × two samples)."""
from ray import tune

from eeray.config import DataConfig, EEConfig, ModelConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Study


def build(profile: str) -> Study:
    base = TrialConfig(data=DataConfig(name="random16", n_train=64, n_test=16),
                       model=ModelConfig(arch="lenet", lenet_pool="avg2"), ee=EEConfig(tau=0.5, m_H=2),
                       train=TrainConfig(epochs=2, batch_size=32))
    return Study(name="tuned", base=base, grid={"model.lenet_mc": [1, 2]},
                 search={"optim.lr": tune.loguniform(1e-3, 1e-1)}, samples_per_point=2, scheduler="asha")


if __name__ == "__main__":
    raise SystemExit(main(build))
