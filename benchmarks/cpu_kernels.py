"""Is a CPU trial the same on another x86-64 CPU? One width-sweep trial run on this machine and on an emulated
AVX2-only CPU (QEMU user mode, ``-cpu Haswell-v4``: no AVX-512), each with eeray's AVX2 caps (eeray.cpu_kernels)
and without them (``EERAY_CPU_KERNELS=native``: the libraries pick by the CPU); every steps, diagnostics and summary value compared bit for bit
(wall-clock columns aside), and the first difference named. Emulation runs the trial ~100-1000× slower, so the
compared trial is the smoke trial made smaller (``--emulated``: fewer samples and epochs, its diagnostics kept).
Then the caps' cost on this machine: the smoke trial itself, training seconds with and without the caps,
alternating, in one run.

Needs ``qemu-x86_64`` (Debian: ``apt-get install qemu-user``).

Run:  python benchmarks/cpu_kernels.py [--trial "ee c=2 data=digits16 m_c=2 seed=0"] [--repeats 5]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile

from eeray.cpu_kernels import OPT_OUT, PORTABLE_ENV

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "results")
UNCAPPED = {OPT_OUT: "native"}
SET_BY_EERAY = (*PORTABLE_ENV, OPT_OUT)  # removed from a child's environment: it starts as a user's would

# run in a fresh interpreter (the caps are read at a library's first use in a process): one trial, rows to a file
CHILD = r"""
import json, pickle, sys, time
sys.path.insert(0, sys.argv[1] + "/studies")
import torch
import width_sweep
from eeray.records import MemorySink
from eeray.trial import run_trial
torch.set_num_threads(1)
study = width_sweep.build(sys.argv[2])
point = next(p for p in study.points() if study.trial_name(p) == sys.argv[3])
sink = MemorySink()
t = time.perf_counter()
result = run_trial(study.config(point).replace(**json.loads(sys.argv[5])), sink)
seconds = time.perf_counter() - t
with open(sys.argv[4], "wb") as f:
    pickle.dump({"rows": sink.rows, "summary": result.summary, "seconds": seconds}, f)
"""


def run(profile: str, trial: str, env: dict, emulate: bool, out: str, overrides: dict) -> dict:
    cmd = [sys.executable, "-c", CHILD, ROOT, profile, trial, out, json.dumps(overrides)]
    if emulate:
        cmd = [shutil.which("qemu-x86_64"), "-cpu", "Haswell-v4", *cmd]
    clean = {k: v for k, v in os.environ.items() if k not in SET_BY_EERAY}
    proc = subprocess.run(cmd, env={**clean, **env, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    with open(out, "rb") as f:
        return pickle.load(f)


def first_difference(a: dict, b: dict) -> str | None:
    """None when every compared value is bitwise equal; else where the first difference is."""
    from eeray.row_compare import excluded

    for table in a["rows"]:
        rows_a, rows_b = a["rows"][table], b["rows"][table]
        if len(rows_a) != len(rows_b):
            return f"{table}: {len(rows_a)} vs {len(rows_b)} rows"
        for ra, rb in zip(rows_a, rows_b):
            skip = set(excluded(table, list(ra))) | {"hardware"}
            for k in ra:
                if k not in skip and repr(ra[k]) != repr(rb.get(k)):
                    return f"{table}: step {ra.get('step')}, {k}: {ra[k]!r} vs {rb.get(k)!r}"
    skip = set(excluded("trials", list(a["summary"]))) | {"hardware"}
    for k, v in a["summary"].items():
        if k not in skip and repr(v) != repr(b["summary"].get(k)):
            return f"summary: {k}: {v!r} vs {b['summary'].get(k)!r}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--trial", default="ee c=2 data=digits16 m_c=2 seed=0")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--emulated", default='{"data.n_train": 96, "data.n_test": 32, "train.epochs": 2, '
                    '"diag.max_samples": 12}', help="config overrides (JSON) of the trial compared across CPUs")
    args = ap.parse_args()
    small = json.loads(args.emulated)
    if shutil.which("qemu-x86_64") is None:
        raise SystemExit("qemu-x86_64 is needed to emulate an AVX2-only CPU: apt-get install qemu-user")
    tmp = tempfile.mkdtemp(prefix="cpu-kernels-")
    runs = {}
    for name, env, emulate in (("this CPU, capped", {}, False), ("this CPU, uncapped", UNCAPPED, False),
                               ("emulated AVX2 CPU, capped", {}, True),
                               ("emulated AVX2 CPU, uncapped", UNCAPPED, True)):
        runs[name] = run(args.profile, args.trial, env, emulate, os.path.join(tmp, f"{len(runs)}.pkl"), small)
        print(f"{name}: hardware {runs[name]['summary']['hardware']!r}", flush=True)
    pairs = [("this CPU, capped", "emulated AVX2 CPU, capped"), ("this CPU, uncapped", "emulated AVX2 CPU, uncapped"),
             ("this CPU, capped", "this CPU, uncapped")]
    comparisons = []
    for a, b in pairs:
        diff = first_difference(runs[a], runs[b])
        comparisons.append({"a": a, "b": b, "equal": diff is None, "first_difference": diff,
                            "hardware": [runs[a]["summary"]["hardware"], runs[b]["summary"]["hardware"]],
                            "final_train_loss": [runs[a]["summary"]["final_train_loss"],
                                                 runs[b]["summary"]["final_train_loss"]]})
        print(json.dumps(comparisons[-1]), flush=True)
    seconds = {"capped": [], "uncapped": []}
    for i in range(args.repeats):  # alternating: a shared machine's load falls on both alike
        for name, env in (("capped", {}), ("uncapped", UNCAPPED)):
            seconds[name].append(run(args.profile, args.trial, env, False, os.path.join(tmp, "t.pkl"), {})["seconds"])
    median = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
    cost = {"repeats": args.repeats, "seconds": seconds, "median_s": median,
            "capped_over_uncapped": median["capped"] / median["uncapped"]}
    print(json.dumps(cost), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    import torch

    meta = {"machine": f"{runs['this CPU, uncapped']['summary']['hardware']}", "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "profile": args.profile,
            "trial": args.trial, "compared_with_overrides": small, "emulated": "qemu-x86_64 -cpu Haswell-v4",
            "platform": platform.platform()}
    with open(os.path.join(OUT, "cpu_kernels_cpu.json"), "w") as f:
        json.dump({**meta, "comparisons": comparisons, "cost": cost}, f, indent=1)
    lines = [f"# One trial on two x86-64 CPUs ({meta['date']}; {meta['trial']!r}, {args.profile} profile, torch "
             f"{meta['torch']})", "", f"This machine: {meta['machine']}. The other: {meta['emulated']} (AVX2, no "
             f"AVX-512). Compared: the trial with {small}.", "", "| run A | run B | hardware A / B | final_train_loss A / B | bitwise equal | first "
             "difference |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c['a']} | {c['b']} | {c['hardware'][0]} / {c['hardware'][1]} | {c['final_train_loss'][0]!r} / "
              f"{c['final_train_loss'][1]!r} | {'yes' if c['equal'] else 'no'} | {c['first_difference'] or '—'} |"
              for c in comparisons]
    lines += ["", f"Cost on this machine ({args.repeats} alternating runs each, median training seconds of the trial): "
              f"capped {median['capped']:.3f} s, uncapped {median['uncapped']:.3f} s, ratio "
              f"{cost['capped_over_uncapped']:.3f}."]
    with open(os.path.join(OUT, "cpu_kernels_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
