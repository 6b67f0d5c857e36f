"""float64 eigendecomposition of an N×N Gram on the GPU: cuSOLVER vs MAGMA (the alignment report's floor).

The dense alignment report's cost at N = n·m_y = 10,000 is one ``eigh`` (residual, rank, e(κ)) and one
``eigvalsh`` (the rank-augmentation test). This measures both with each of PyTorch's GPU linear-algebra
backends, to pick the faster one.

    python benchmarks/eigh_backends.py --n 10000 --out benchmarks/results
"""
import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(args.n, args.n // 2, device="cuda", dtype=torch.float64, generator=g)
    gram = a @ a.T  # (N, N) PSD with a null space, like M = JJᵀ
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "n": args.n}
    for lib in ("cusolver", "magma"):
        torch.backends.cuda.preferred_linalg_library(lib)
        out[lib] = {"eigh_s": timed(lambda: torch.linalg.eigh(gram), args.reps),
                    "eigvalsh_s": timed(lambda: torch.linalg.eigvalsh(gram), args.reps)}
    torch.backends.cuda.preferred_linalg_library("default")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eigh_backends_gpu.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
