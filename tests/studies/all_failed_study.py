"""The width sweep's smoke profile cut to one dataset and width, every trial at learning rate 1e12: every trial
diverges at once and fails, and the study's own summary (``width_sweep.summarize``) must say so, not crash."""
import os
import sys
from dataclasses import replace
from pathlib import Path

STUDIES = str(Path(__file__).resolve().parents[2] / "studies")
sys.path.insert(0, STUDIES)  # the real study file, as a user has it
# Ray's workers unpickle the study, whose summarize is width_sweep's: they import it from here too (a local Ray
# inherits the driver's environment)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (STUDIES, os.environ.get("PYTHONPATH")) if p)

import width_sweep  # noqa: E402

from eeray.cli import main  # noqa: E402
from eeray.study import Study  # noqa: E402


def build(profile: str) -> Study:
    study = width_sweep.build(profile)
    return replace(study, name="all_failed", base=study.base.replace(**{"optim.lr": 1e12}),
                   grid={"data.name": ["random16"], "model.lenet_mc": [1], "seed": [0]})


if __name__ == "__main__":
    raise SystemExit(main(build))
