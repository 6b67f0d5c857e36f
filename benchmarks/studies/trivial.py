"""A study of N trivial trials for benchmarks/scale.py: the sine data, an 8-unit FC net, one epoch, no
diagnostics; the grid is N seeds. N is ``EERAY_SCALE_TRIALS`` (default 10): the driver's cost per trial, not
training, is what this study measures. ``EERAY_SCALE_EPOCHS`` (default 1) lengthens each trial
(benchmarks/concurrency.py)."""
import os

from eeray.cli import main
from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, TrainConfig, TrialConfig
from eeray.study import Study


def build(profile: str) -> Study:
    n = int(os.environ.get("EERAY_SCALE_TRIALS", "10"))
    base = TrialConfig(data=DataConfig(name="sine", n_train=64, n_test=32),
                       model=ModelConfig(arch="fcnet", fc_width=8),
                       ee=EEConfig(tau=0.5),
                       train=TrainConfig(epochs=int(os.environ.get("EERAY_SCALE_EPOCHS", "1")), batch_size=32,
                                         eval_every=1),
                       diag=DiagConfig(alignment=False, lemma5=False))
    return Study(name=os.environ.get("EERAY_SCALE_STUDY", "trivial"), base=base, grid={"seed": list(range(n))})


if __name__ == "__main__":
    raise SystemExit(main(build))
