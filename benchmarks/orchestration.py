"""Orchestration overhead of a study on a local Ray (issue 4).

  per-trial overhead  16 tiny trials (the sine wave, 1 epoch: ~0.1 s of work each) on 2 CPUs: the study's wall
                      time beyond its trials' own time, per trial — worker start-up (``reuse_actors``), Tune's
                      bookkeeping, checkpoints, the driver's Parquet and MLflow writes. Goal ≤ 1 s per trial.
  writing share       of ``python studies/width_sweep.py --smoke``'s wall time, the share spent by the driver
                      writing Parquet and MLflow (the callback times itself). Goal ≤ 10%.

Ray's own start (``ray.init``) is reported separately: it is paid once per study, not per trial.

    python benchmarks/orchestration.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = '''
from eeray.config import DataConfig, EEConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Study
def build(profile):
    base = TrialConfig(data=DataConfig(name="sine"), ee=EEConfig(tau=0.5),
                       train=TrainConfig(epochs=1, batch_size=100, eval_every=1))
    return Study(name="tiny16", base=base, grid={"seed": list(range(16))})
raise SystemExit(main(build))
'''


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def trial_seconds(results: Path, study: str) -> list[float]:
    sys.path.insert(0, str(ROOT))
    from eeray.results import load

    t = load(results, study).trials
    return list(t.setup_seconds + t.train_seconds + t.eval_seconds + t.diag_seconds.fillna(0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=2); ray.shutdown()"], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ray_start = time.perf_counter() - t0
        (d / "tiny16.py").write_text(TINY)
        total = run([sys.executable, str(d / "tiny16.py"), "--results-dir", str(d / "r")], env)
        meta = json.loads((d / "r" / "tiny16" / "execution.json").read_text())["runs"][-1]
        work = trial_seconds(d / "r", "tiny16")
        concurrency = min(2, os.cpu_count() or 1)
        per_trial = (meta["wall_seconds"] - sum(work) / concurrency) / len(work)
        smoke_total = run([sys.executable, "studies/width_sweep.py", "--smoke", "--results-dir", str(d / "w")], env)
        smoke = json.loads((d / "w" / "width_sweep" / "execution.json").read_text())["runs"][-1]
    writes = sum(smoke["write_seconds"].values())
    result = {
        "benchmark": "orchestration", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
        "ray_init_seconds": ray_start,
        "tiny16": {"trials": len(work), "fit_wall_seconds": meta["wall_seconds"], "command_seconds": total,
                   "trial_work_seconds": sum(work), "overhead_per_trial_seconds": per_trial},
        "width_sweep_smoke": {"fit_wall_seconds": smoke["wall_seconds"], "command_seconds": smoke_total,
                              "write_seconds": smoke["write_seconds"],
                              "write_share_of_fit": writes / smoke["wall_seconds"],
                              "write_share_of_command": writes / smoke_total},
        "goals": {"overhead per trial <= 1 s": per_trial <= 1.0,
                  "MLflow + Parquet <= 10% of the smoke study": writes / smoke_total <= 0.10},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "orchestration_cpu.json").write_text(json.dumps(result, indent=2))
    t, w = result["tiny16"], result["width_sweep_smoke"]
    lines = [f"# Orchestration overhead ({result['machine']}, {result['date']})", "",
             "| measurement | value |", "| --- | --- |",
             f"| ray.init(num_cpus=2) + shutdown | {ray_start:.1f} s (once per study) |",
             f"| 16 tiny trials: Tuner.fit wall | {t['fit_wall_seconds']:.1f} s (the trials' own work: "
             f"{t['trial_work_seconds']:.1f} s over 2 CPUs) |",
             f"| orchestration overhead per trial | {t['overhead_per_trial_seconds']:.2f} s (goal ≤ 1 s) |",
             f"| width_sweep --smoke: command wall | {w['command_seconds']:.1f} s (Tuner.fit {w['fit_wall_seconds']:.1f} s) |",
             f"| ... Parquet writes | {w['write_seconds']['parquet']:.2f} s |",
             f"| ... MLflow writes | {w['write_seconds']['mlflow']:.2f} s |",
             f"| MLflow + Parquet share of the smoke command | {100 * w['write_share_of_command']:.1f}% (goal ≤ 10%) |"]
    (args.out / "orchestration_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
