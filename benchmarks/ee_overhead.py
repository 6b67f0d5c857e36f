"""EE overhead: step time of the EE model vs the standard model, and of an exploitation vs an exploration step.

Pre-activation ResNet-18 (softplus ς = 100), CIFAR-sized input (3×32×32), batch 64, SGD (lr 0.1, momentum 0.9,
wd 1e-5), fp32 — the paper's protocol (§3.4.2). The EE head uses CIFAR-10's m_H = ⌈2·50000/513⌉ = 195, m_y = 10.

  standard   the unmodified network, one SGD step on a batch
  ee_explore the EE model, all parameters trained (exploration)
  ee_exploit the EE model after the switch: backbone frozen in eval mode, only θ_(H−1) trained (exploitation)

Goals (issue 2): EE head overhead ≤ 5% of a batch-64 step on the GPU; exploitation ≤ 40% of an exploration step.
Ratios are measured within one run; absolute times are reported only from a GPU.

    python benchmarks/ee_overhead.py --device cuda --out benchmarks/results
    python benchmarks/ee_overhead.py --device cpu --iters 5 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from eeray.models import PreActResNet18
from eeray.surgery import to_ee_model
from eeray.wrapper import EEWrapper, PhaseSchedule, sgd


def make(kind: str, device: torch.device, batch: int):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    model = PreActResNet18(10, 3).to(device)
    factory = sgd(0.1, momentum=0.9, weight_decay=1e-5)
    if kind == "standard":
        return model, EEWrapper(model, factory, None, PhaseSchedule(None, 1)), x, y
    ee = to_ee_model(model, x[:2], n=50000)
    wrapper = EEWrapper(ee, factory, factory, PhaseSchedule(0 if kind == "ee_exploit" else None, 1))
    wrapper.before_step(0)
    return ee, wrapper, x, y


def step_times(kind: str, device: torch.device, batch: int, iters: int, warmup: int) -> list[float]:
    model, wrapper, x, y = make(kind, device, batch)

    def step():
        wrapper.train_mode()
        loss = F.cross_entropy(model(x), y)
        wrapper.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        wrapper.optimizer.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; ratios are per round, then the median")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    kinds = ("standard", "ee_explore", "ee_exploit")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):  # interleave the kinds so clock or thermal drift hits all alike
        medians = {}
        for k in kinds:
            times = step_times(k, device, args.batch, args.iters, args.warmup)
            samples[k] += times
            medians[k] = statistics.median(times)
        rounds.append(medians)
    med = {k: statistics.median(v) for k, v in samples.items()}
    # ratios within each round (the three kinds back to back), then their median: robust to drift between rounds
    overhead = statistics.median(r["ee_explore"] / r["standard"] - 1 for r in rounds)
    exploit_ratio = statistics.median(r["ee_exploit"] / r["ee_explore"] for r in rounds)
    result = {
        "benchmark": "ee_overhead", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "batch": args.batch, "iters": args.iters * args.rounds,
        "median_step_seconds": med,
        "images_per_second": {k: args.batch / v for k, v in med.items()},
        "ee_head_overhead": overhead, "exploit_over_explore": exploit_ratio,
        "per_round_medians_seconds": rounds,
        "goals": {"ee_head_overhead <= 0.05 (GPU)": overhead <= 0.05, "exploit_over_explore <= 0.40": exploit_ratio <= 0.40},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    (args.out / f"ee_overhead_{tag}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# EE overhead ({result['device']}, {result['date']})", "",
             f"PreAct-ResNet-18, 3×32×32, batch {args.batch}, fp32 SGD; median of {result['iters']} steps.", "",
             "| step | median ms | images/s |", "| --- | --- | --- |"]
    lines += [f"| {k} | {med[k] * 1e3:.2f} | {args.batch / med[k]:.0f} |" for k in kinds]
    lines += ["", f"- EE head overhead: {overhead * 100:+.1f}% (median of {args.rounds} per-round ratios; goal ≤ 5% on GPU)",
              f"- exploitation / exploration step: {exploit_ratio:.2f} (goal ≤ 0.40)",
              "- on CUDA, exploitation replays the frozen backbone (eval mode) as CUDA graphs (eeray.exploitation)"]
    (args.out / f"ee_overhead_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
