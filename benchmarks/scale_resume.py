"""A kill in the middle of a study of thousands of trials, then ``--resume`` (issue 24).

Runs ``benchmarks/studies/trivial.py`` with N trials through the CLI, SIGKILLs the driver right after the K-th
trial's ``trials`` row is written (``EERAY_KILL_AT=trial_row:K``: eeray's record has K trials, Tune's saved state
lags it by up to one save period), resumes it, and checks the record: every trial once and completed, every
``steps`` row once, no rows of a trial id without a ``trials`` row, and no trial that had completed before the kill
completed again after it (the resumed driver's "completed:" lines). Prints and writes what it found.

    python benchmarks/scale_resume.py --trials 3000 --kill-at 1500 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "studies" / "trivial.py"
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3000)
    p.add_argument("--kill-at", type=int, default=1500)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    from benchmarks.scale import commit, load_average, load_seconds, peak_rss_mb
    from eeray.results import load

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "EERAY_SCALE_TRIALS": str(args.trials),
           "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as d:
        results = Path(d)
        cmd = [sys.executable, str(STUDY), "--smoke", "--results-dir", str(results)]
        load_before = load_average()
        t0 = time.perf_counter()
        killed = subprocess.Popen(cmd, cwd=ROOT, env={**env, "EERAY_KILL_AT": f"trial_row:{args.kill_at}"},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        peak = [0.0]

        def watch():  # the killed driver's peak RSS (it reaches trial K)
            while killed.poll() is None:
                peak[0] = max(peak[0], peak_rss_mb(killed.pid) or 0.0)
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        killed_out, _ = killed.communicate()
        watcher.join()
        try:
            os.killpg(killed.pid, signal.SIGKILL)  # the local Ray the killed driver left
        except ProcessLookupError:
            pass
        killed_seconds = time.perf_counter() - t0
        if killed.returncode != -signal.SIGKILL:
            raise SystemExit(f"the driver was not killed at trial_row:{args.kill_at} (exit {killed.returncode}):\n"
                             f"{killed_out[-3000:]}")
        before = set(load(results, "trivial").trials.trial_name)
        t1 = time.perf_counter()
        resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
        resume_seconds = time.perf_counter() - t1
        if resumed.returncode != 0:
            raise SystemExit(f"--resume exited {resumed.returncode}:\n{resumed.stdout[-3000:]}\n{resumed.stderr[-3000:]}")
        again = set(re.findall(r"^\[trivial\] completed: (.+) \(train error", resumed.stdout, re.M))
        res = load(results, "trivial")
        files = {t: sum(1 for _ in (results / "trivial" / t).rglob("*.parquet")) for t in ("trials", "steps")}
        found = {
            "trials_recorded_before_resume": len(before),
            "completed_by_the_resume": len(again),
            "completed_again_after_the_kill": sorted(again & before),
            "trials": len(res.trials), "distinct_trial_names": int(res.trials.trial_name.nunique()),
            "all_completed": bool((res.trials.status == "completed").all()),
            "duplicated_step_rows": int(res.steps.duplicated(["trial_id", "step", "phase"]).sum()),
            "step_rows_of_trial_ids_without_a_trials_row": int((~res.steps.trial_id.isin(res.trials.trial_id)).sum()),
            "trials_without_step_rows": int((~res.trials.trial_id.isin(res.steps.trial_id)).sum()),
            "resume_notes": [l for l in resumed.stdout.splitlines() if l.startswith("note: resume:")],
            "parquet_files": files,
            "results_load_seconds": load_seconds(results),
            "killed_driver_peak_rss_mb": peak[0],
        }
    ok = (found["trials"] == found["distinct_trial_names"] == args.trials and found["all_completed"]
          and not found["completed_again_after_the_kill"] and found["duplicated_step_rows"] == 0
          and found["step_rows_of_trial_ids_without_a_trials_row"] == 0 and found["trials_without_step_rows"] == 0
          and found["trials_recorded_before_resume"] + found["completed_by_the_resume"] == args.trials)
    result = {"benchmark": "scale_resume", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "commit": commit(),
              "trials": args.trials, "kill_at": args.kill_at, "killed_run_seconds": killed_seconds,
              "resume_seconds": resume_seconds, "load_before": load_before, "load_after": load_average(),
              "found": found, "every_row_once_nothing_rerun": ok}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale_resume_cpu.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
