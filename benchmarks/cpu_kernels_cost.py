"""What eeray's AVX2 caps (eeray.cpu_kernels) cost on this CPU, per model: one trial with the caps and with
``EERAY_CPU_KERNELS=native`` (the libraries pick by the CPU), each in a fresh interpreter, alternating, in one run.

Trials: the width sweep's LeNet (laptop profile, m_c = 2, 3 epochs, 1 thread) and ee_vs_standard's ResNet-18
smoke trial (digits16, augmented, 2 threads as its study runs it). On a CPU whose widest kernels are AVX2 the two
settings are the same kernels; on an AVX-512 CPU the ratio is the price of results that do not depend on the CPU.

Run:  python benchmarks/cpu_kernels_cost.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

from cpu_kernels import OUT, ROOT, SET_BY_EERAY, UNCAPPED  # benchmarks/cpu_kernels.py, beside this file

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1] + "/studies")
import torch
from eeray.records import MemorySink
from eeray.trial import run_trial
if sys.argv[2] == "lenet":
    import width_sweep
    study = width_sweep.build("laptop")
    point = next(p for p in study.points() if study.trial_name(p) == "standard data=random16 m_c=2 seed=0")
    cfg, threads = study.config(point).replace(**{"train.epochs": 3}), 1
else:
    import ee_vs_standard
    cfg, threads = ee_vs_standard.protocol("smoke", True).replace(**{"data.name": "digits16"}), 2
torch.set_num_threads(threads)
t = time.perf_counter()
result = run_trial(cfg, MemorySink())
print(json.dumps({"seconds": time.perf_counter() - t, "hardware": result.summary["hardware"]}))
"""


def run(model: str, env: dict) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in SET_BY_EERAY}
    out = subprocess.run([sys.executable, "-c", CHILD, ROOT, model], env={**clean, **env, "PYTHONPATH": ROOT},
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows, hardware = [], {}
    for model in ("lenet", "resnet18"):
        seconds = {"capped": [], "native": []}
        for _ in range(args.repeats):  # alternating: a shared machine's load falls on both alike
            for name, env in (("capped", {}), ("native", UNCAPPED)):
                r = run(model, env)
                seconds[name].append(r["seconds"])
                hardware[name] = r["hardware"]
        median = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
        rows.append({"model": model, "seconds": seconds, "median_s": median,
                     "capped_over_native": median["capped"] / median["native"]})
        print(json.dumps(rows[-1]), flush=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    with open(os.path.join(OUT, "cpu_kernels_cost_cpu.json"), "w") as f:
        json.dump({"date": date, "hardware": hardware, "repeats": args.repeats, "results": rows}, f, indent=1)
    lines = [f"# The AVX2 caps' cost ({date}; capped: {hardware['capped']}; native: {hardware['native']})", "",
             f"| trial | capped s (median of {args.repeats}) | native s | capped / native |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['median_s']['capped']:.2f} | {r['median_s']['native']:.2f} | "
              f"{r['capped_over_native']:.2f} |" for r in rows]
    with open(os.path.join(OUT, "cpu_kernels_cost_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
