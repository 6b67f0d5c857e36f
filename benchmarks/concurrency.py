"""Do two CPUs run two trials at a time whenever two are runnable (issue 24, item 4)?

Runs ``benchmarks/studies/trivial.py`` in this process (the real CLI, a local Ray of its own) with trials of a
given length, and samples Tune's trials at every step of its loop (eeray's ``on_step_end``): the share of the time,
while at least two trials were runnable (RUNNING + PENDING in Tune), that 0, 1 or 2 were RUNNING. One study per
process (Ray is started once per process), so the script runs itself once per case:

    python benchmarks/concurrency.py --out benchmarks/results            # trivial (1 epoch) and 40-epoch trials

With trials shorter than the driver's own work per trial (its record, MLflow, Tune's bookkeeping: ~0.3 s on 2
cores), the driver is the bottleneck and one trial runs at a time however many CPUs there are; longer trials run
two at a time, except in the gap between one trial's end and the next one's start.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "studies" / "trivial.py"
CASES = {"trivial trials (1 epoch)": {"EERAY_SCALE_TRIALS": "200", "EERAY_SCALE_EPOCHS": "1"},
         "40-epoch trials": {"EERAY_SCALE_TRIALS": "16", "EERAY_SCALE_EPOCHS": "40"}}


def measure(results_dir: str) -> dict:
    """Run the study here; the share of runnable time with 0, 1, 2 trials running."""
    sys.path.insert(0, str(ROOT))
    from eeray.raytune import callback

    samples = []
    step_end = callback.StudyRecorder.on_step_end

    def on_step_end(self, trials):
        samples.append((time.time(), sum(t.status == "RUNNING" for t in trials),
                        sum(t.status == "PENDING" for t in trials)))
        step_end(self, trials)

    callback.StudyRecorder.on_step_end = on_step_end
    sys.argv = [str(STUDY), "--smoke", "--results-dir", results_dir]
    t0 = time.perf_counter()
    try:
        runpy.run_path(str(STUDY), run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (0, None), f"the study exited {exc.code}"
    share, runnable = {0: 0.0, 1: 0.0, 2: 0.0}, 0.0
    for (t, running, pending), (t_next, _, _) in zip(samples, samples[1:]):
        if running + pending >= 2:
            runnable += t_next - t
            share[min(running, 2)] += t_next - t
    return {"runnable_seconds": runnable, "study_seconds": time.perf_counter() - t0,
            "share_running": {k: v / runnable for k, v in share.items()} if runnable else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="concurrency_cpu")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case in this process, print its JSON
    args = p.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as d:
            out = measure(d)
        print("RESULT " + json.dumps(out), flush=True)
        return 0
    rows = {}
    for case, env in CASES.items():
        run = subprocess.run([sys.executable, __file__, "--one", case], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=3600)
        line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
        assert run.returncode == 0 and line, run.stdout[-3000:] + run.stderr[-3000:]
        rows[case] = {**json.loads(line[-1][7:]), **env}
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "commit": commit, "load_average_after": os.getloadavg()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({**meta, "cases": rows}, indent=2) + "\n")
    lines = [f"# Trials at a time on 2 CPUs ({meta['machine']}, {meta['date']}, commit {commit})", "",
             "Share of the time with >= 2 trials runnable (Tune RUNNING + PENDING) that 0 / 1 / 2 trials ran.", "",
             "| case | trials | runnable s | 0 running | 1 running | 2 running | study s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for case, r in rows.items():
        s = r["share_running"] or {}
        lines.append(f"| {case} | {r['EERAY_SCALE_TRIALS']} | {r['runnable_seconds']:.1f} | " +
                     " | ".join(f"{s.get(k, s.get(str(k), 0)):.0%}" for k in (0, 1, 2)) + f" | {r['study_seconds']:.0f} |")
    lines += ["", f"Load average after: {meta['load_average_after']} (the machine may be shared)."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
