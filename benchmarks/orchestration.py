"""Orchestration overhead of a study on a local Ray (issue 4).

  per-trial overhead  16 tiny trials (the sine wave, 1 epoch: ~0.1 s of work each) on 2 CPUs: the study's wall
                      time beyond its trials' own time, per trial — worker start-up (``reuse_actors``), Tune's
                      bookkeeping, checkpoints, the driver's Parquet and MLflow writes. Goal ≤ 1 s per trial.
  writing share       of ``python studies/width_sweep.py --smoke``'s wall time, the share spent by the driver
                      writing Parquet and MLflow (the callback times itself). Goal ≤ 10%.
  driver CPU          96 tiny trials of 3 epochs: the driver process's own CPU seconds (user + system, from
                      /proc) and Tuner.fit's wall, as eeray runs it and with Tune's per-trial JSON logger added
                      back (what eeray did until 2026-12-02): Tune copies the driver's staging directory, where
                      those files live, to storage whole at every snapshot, and eeray snapshots at every loop step.

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
MANY = '''
import sys
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from eeray.config import DataConfig, EEConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Study
if sys.argv.pop(1) == "json":  # Tune's per-trial JSON files, as eeray wrote them before
    class RunConfig(tune.RunConfig):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), JsonLoggerCallback()], **kwargs)
    tune.RunConfig = RunConfig
def build(profile):
    base = TrialConfig(data=DataConfig(name="sine"), ee=EEConfig(tau=0.5),
                       train=TrainConfig(epochs=3, batch_size=100, eval_every=1))
    return Study(name="many96", base=base, grid={"seed": list(range(96))})
raise SystemExit(main(build))
'''


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def driver_cpu(cmd: list[str], env: dict) -> float:
    """The CPU seconds (user + system) of the process ``cmd`` starts (the study's driver), read from /proc until it
    exits; Ray's own processes (raylet, workers) are not its children's time, so they are not counted."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ticks, hz = 0, os.sysconf("SC_CLK_TCK")
    while proc.poll() is None:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError):
            pass
        time.sleep(0.2)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return ticks / hz


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
        (d / "many96.py").write_text(MANY)
        many = {}
        for mode in ("eeray", "json"):  # eeray as it is; with Tune's per-trial JSON logger added back
            cpu = driver_cpu([sys.executable, str(d / "many96.py"), mode, "--results-dir", str(d / mode)], env)
            fit = json.loads((d / mode / "many96" / "execution.json").read_text())["runs"][-1]["wall_seconds"]
            many[mode] = {"driver_cpu_seconds": cpu, "fit_wall_seconds": fit}
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
        "many96": {**many, "driver_cpu_ratio": many["eeray"]["driver_cpu_seconds"] / many["json"]["driver_cpu_seconds"],
                   "fit_wall_ratio": many["eeray"]["fit_wall_seconds"] / many["json"]["fit_wall_seconds"]},
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
    m = result["many96"]
    for mode, label in (("eeray", "eeray"), ("json", "with Tune's per-trial JSON logger (before 2026-12-02)")):
        lines.append(f"| 96 tiny trials × 3 epochs, {label}: driver CPU / Tuner.fit wall | "
                     f"{m[mode]['driver_cpu_seconds']:.1f} s / {m[mode]['fit_wall_seconds']:.1f} s |")
    lines.append(f"| ... ratio eeray / with the JSON logger (one run) | driver CPU {m['driver_cpu_ratio']:.2f}×, "
                 f"wall {m['fit_wall_ratio']:.2f}× |")
    (args.out / "orchestration_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
