"""Thousands of trials per study (issue 24): does the driver's cost per trial stay flat?

Runs ``benchmarks/studies/trivial.py`` (N trivial trials: sine, an 8-unit FC net, one epoch, no diagnostics)
through the real CLI on a local Ray, for each N given, and measures:

  interval per tenth   the median time between two trial completions (the driver's "completed:" lines, time-
                       stamped as they are printed) in each tenth of the study. Goals (2 cores): ≤ 0.30 s in
                       every tenth (moonshot 0.10 s), the last tenth ≤ 1.25× the first.
  driver peak RSS      VmHWM of the driver process (read from /proc until it exits); goal: growth ≤ 150 MB per
                       1,000 trials.
  Parquet files        per table, after the study; goal ≤ 50 per table at 3,000 trials.
  results.load         seconds for ``eeray.results.load`` of the finished study, in a fresh process.
  MLflow mirror        the seconds the driver spent mirroring (execution.json, ``write_seconds``).
  Tuner.fit wall       the driver's own count (execution.json, ``wall_seconds``).

    python benchmarks/scale.py --trials 10 100 1000 3000 --out benchmarks/results

Machine load (``uptime``) is recorded before and after each study: the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "studies" / "trivial.py"
TABLES = ("trials", "steps", "diagnostics", "safety")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_study(n: int, results: Path, timeout: float) -> dict:
    """Run the study of ``n`` trials; completion times from the driver's own lines, its peak RSS from /proc."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "EERAY_SCALE_TRIALS": str(n),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, str(STUDY), "--smoke", "--results-dir", str(results)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    peak = [0.0]

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], peak_rss_mb(proc.pid) or 0.0)
            time.sleep(0.25)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    done: list[float] = []
    tail: list[str] = []
    for line in proc.stdout:
        if line.startswith("[trivial] completed: "):
            done.append(time.perf_counter() - t0)
        tail = (tail + [line])[-40:]
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            break
    proc.wait()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"the study of {n} trials exited {proc.returncode}:\n{''.join(tail)}")
    if len(done) != n:
        raise RuntimeError(f"the study of {n} trials printed {len(done)} completions")
    return {"command_seconds": time.perf_counter() - t0, "completions": done, "driver_peak_rss_mb": peak[0]}


def tenths(times: list[float]) -> list[float | None]:
    """The median interval between consecutive completions, in each tenth of the completions."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    out = []
    for k in range(10):
        part = gaps[len(gaps) * k // 10: len(gaps) * (k + 1) // 10]
        out.append(statistics.median(part) if part else None)
    return out


def load_seconds(results: Path) -> float:
    code = ("import time, sys; from eeray.results import load; t = time.perf_counter(); "
            "r = load(sys.argv[1], 'trivial'); print(time.perf_counter() - t, len(r.trials), len(r.steps))")
    out = subprocess.run([sys.executable, "-c", code, str(results)], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return float(out.stdout.split()[0])


def measure(n: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        results = Path(d)
        before = load_average()
        run = run_study(n, results, timeout)
        after = load_average()
        study = results / "trivial"
        execution = json.loads((study / "execution.json").read_text())["runs"][-1]
        files = {t: sum(1 for _ in (study / t).rglob("*.parquet")) if (study / t).exists() else 0 for t in TABLES}
        loaded = load_seconds(results)
    return {"trials": n, "load_before": before, "load_after": after, "command_seconds": run["command_seconds"],
            "fit_wall_seconds": execution["wall_seconds"], "write_seconds": execution["write_seconds"],
            "median_interval_per_tenth": tenths(run["completions"]), "driver_peak_rss_mb": run["driver_peak_rss_mb"],
            "parquet_files": files, "results_load_seconds": loaded}


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def report(result: dict) -> str:
    lines = [f"# Scale: trivial trials through the CLI ({result['machine']}, {result['date']}, commit "
             f"{result['commit']})", "",
             "Median interval between trial completions (s) per tenth of the study; goals ≤ 0.30 s in every tenth, "
             "last ≤ 1.25× first.", "",
             "| trials | " + " | ".join(f"t{k + 1}" for k in range(10)) + " | last/first | fit wall s | driver peak "
             "RSS MB | Parquet files (trials/steps) | results.load s | MLflow s | load avg before → after |",
             "| --- " * 17 + "|"]
    for r in result["studies"]:
        t = r["median_interval_per_tenth"]
        ratio = (t[-1] / t[0]) if t[0] and t[-1] else None
        cells = [f"{v:.3f}" if v is not None else "–" for v in t]
        lines.append(f"| {r['trials']} | " + " | ".join(cells) + (f" | {ratio:.2f} | " if ratio else " | – | ") +
                     f"{r['fit_wall_seconds']:.1f} | {r['driver_peak_rss_mb']:.0f} | "
                     f"{r['parquet_files']['trials']}/{r['parquet_files']['steps']} | {r['results_load_seconds']:.2f} "
                     f"| {r['write_seconds']['mlflow']:.1f} | {r['load_before']} → {r['load_after']} |")
    # growth between the two largest studies: the small ones measure start-up (imports, Ray, MLflow's schema)
    s = sorted(result["studies"], key=lambda r: r["trials"])
    if len(s) >= 2 and s[-1]["trials"] > s[-2]["trials"]:
        a, b = s[-2], s[-1]
        growth = (b["driver_peak_rss_mb"] - a["driver_peak_rss_mb"]) / (b["trials"] - a["trials"]) * 1000
        lines += ["", f"Driver peak RSS growth: {growth:.0f} MB per 1,000 trials ({a['trials']} → {b['trials']} "
                  "trials; goal ≤ 150)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=[10, 100, 1000, 3000])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="scale_cpu", help="file name of the results (.json, .md) under --out")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per study")
    args = p.parse_args()
    result = {"benchmark": "scale", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
              "commit": commit(), "studies": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for n in args.trials:
        result["studies"].append(measure(n, args.timeout))
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))  # partial results survive
        (args.out / f"{args.name}.md").write_text(report(result))
        print(report(result), flush=True)


if __name__ == "__main__":
    main()
