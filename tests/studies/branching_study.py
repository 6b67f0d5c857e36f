"""A small ε × τ0 grid for the branching runner tests: one tree (its trunk the larger τ0, three branches) and
the Standard baseline alone. EERAY_TEST_STUDY names it, EERAY_TEST_LR sets G's learning rate (1e12: the
trunk diverges at once); the profiles differ in the number of epochs."""
import os

from eeray.cli import main
from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.study import Study

EPOCHS = {"smoke": 6, "laptop": 8, "paper": 8}


def build(profile: str) -> Study:
    base = TrialConfig(
        data=DataConfig(name="sine", n_train=64, n_test=32),
        model=ModelConfig(arch="fcnet", fc_width=24),
        optim=OptimConfig(lr=float(os.environ.get("EERAY_TEST_LR", "0.05")), momentum=0.9),
        ee=EEConfig(tau=0.5, epsilon=1e-2, m_H=4),
        train=TrainConfig(epochs=EPOCHS[profile], batch_size=16, eval_every=2, eval_unit="steps",
                          checkpoint_every_epochs=1),
        diag=DiagConfig(alignment=True, every=2))  # alignment rows before τ are the trunk's, computed once
    return Study(name=os.environ.get("EERAY_TEST_STUDY", "branching"), base=base,
                 grid={"ee.epsilon": [1e-2, 1e-4], "ee.tau": [0.5, 0.75]},
                 variants={"ee": {}, "standard": {"ee.enabled": False, "ee.epsilon": 1e-2, "ee.tau": 0.5}},
                 max_failures=1, summary_columns=("final_train_error",))


if __name__ == "__main__":
    raise SystemExit(main(build))
