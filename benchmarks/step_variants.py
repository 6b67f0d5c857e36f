"""Raw training-step throughput of the paper's network by launch mode, memory format and precision.

Pre-activation ResNet-18 (softplus), batch 64, CIFAR-sized input, SGD (lr 0.1, momentum 0.9, wd 1e-5), one fixed
batch (no data loading, no augmentation): what the GPU itself can do per step under

  graphs          eager launches, or the whole step replayed as a CUDA graph (eeray.graphed_step, train.cuda_graphs)
  channels_last   NCHW (contiguous), or NHWC (train.channels_last)
  bf16            fp32 (PyTorch's default TF32 convolutions), or bfloat16 autocast — NOT an eeray option: the paper
                  protocol stays fp32; the row shows what mixed precision would add

The 8 combinations run in one process, so their ratios come from one run. Results: step_variants_gpu.{json,md}.

    python benchmarks/step_variants.py --out benchmarks/results       # GPU only
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eeray.graphed_step import GraphedTrainStep
from eeray.models import PreActResNet18


class Autocast(nn.Module):
    def __init__(self, model: nn.Module, enabled: bool):
        super().__init__()
        self.model, self.enabled = model, enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.enabled):
            return self.model(x).float()


def measure(graphs: bool, nhwc: bool, bf16: bool, steps: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32, device="cuda")  # (B, C, H, W)
    y = torch.randint(0, 10, (64,), device="cuda")
    model = PreActResNet18(10, 3).cuda()
    if nhwc:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    runner = GraphedTrainStep(Autocast(model, bf16), F.cross_entropy, enabled=graphs)
    for _ in range(20):  # warm-up: cuDNN autotuning, the graph's capture and check
        runner.step(opt, x, y)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step(opt, x, y)
    torch.cuda.synchronize()
    return {"graphs": graphs, "channels_last": nhwc, "bf16": bf16,
            "images_per_s": steps * 64 / (time.perf_counter() - t0),
            "graph_status": runner.disabled or f"{runner.replays} replays"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_variants.py measures CUDA launch modes; it needs a GPU")
    torch.backends.cudnn.benchmark = True
    rows = [measure(g, c, b, args.steps) for g, c, b in itertools.product((False, True), repeat=3)]
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup_over_eager_nchw_fp32"] = r["images_per_s"] / base
    result = {"benchmark": "step_variants", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_variants_gpu.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Training-step variants ({result['device']}, {result['date']})", "",
             "PreAct-ResNet-18 (softplus), batch 64, SGD, one fixed CIFAR-sized batch, "
             f"{args.steps} steps each. eeray's defaults on CUDA: graphs + channels_last, fp32.", "",
             "| CUDA graph | channels_last | bf16 autocast | images/s | × eager NCHW fp32 |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['graphs']} | {r['channels_last']} | {r['bf16']} | {r['images_per_s']:.0f} | "
              f"{r['speedup_over_eager_nchw_fp32']:.2f} |" for r in rows]
    (args.out / "step_variants_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
