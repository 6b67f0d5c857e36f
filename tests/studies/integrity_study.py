"""A small, fast study for the study-integrity tests. The environment edits it between runs, as a user edits a
study file: EERAY_TEST_STUDY (its name), EERAY_TEST_SEEDS ("0,1"), EERAY_TEST_LR (0.05), EERAY_TEST_DIVERGE
("1": add a trial that diverges at lr 1e12). The profiles differ in the number of epochs."""
import sys
from pathlib import Path

# Runs from any working directory, eeray installed or not: this clone's eeray goes first on sys.path, so neither
# an older installed copy nor a folder named eeray in the working directory is imported instead (a study file
# kept outside a clone uses the installed eeray). docs/reference.md, "Running a study file".
_CLONE = Path(__file__).resolve().parents[2]
if (_CLONE / "eeray" / "__init__.py").is_file() and sys.path[:1] != [str(_CLONE)]:
    sys.path.insert(0, str(_CLONE))

import os

from eeray.cli import main
from eeray.config import DataConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.study import Study

EPOCHS = {"smoke": 6, "laptop": 8, "paper": 8}


def build(profile: str) -> Study:
    seeds = [int(s) for s in os.environ.get("EERAY_TEST_SEEDS", "0,1").split(",")]
    base = TrialConfig(
        data=DataConfig(name="sine", n_train=64, n_test=32),
        model=ModelConfig(arch="fcnet", fc_width=24),
        optim=OptimConfig(lr=float(os.environ.get("EERAY_TEST_LR", "0.05")), momentum=0.9),
        ee=EEConfig(tau=0.5, epsilon=1e-2, m_H=4),
        train=TrainConfig(epochs=EPOCHS[profile], batch_size=16, eval_every=2, eval_unit="steps",
                          checkpoint_every_epochs=1))
    variants = {"ee": {}}
    if os.environ.get("EERAY_TEST_DIVERGE") == "1":
        variants["diverge"] = {"optim.lr": 1e12, "seed": 0}
    return Study(name=os.environ.get("EERAY_TEST_STUDY", "integrity"), base=base, grid={"seed": seeds},
                 variants=variants, max_failures=1, summary_columns=("final_train_error",))


if __name__ == "__main__":
    raise SystemExit(main(build))
