"""Speed and memory of eeray.diagnostics (issue 3). Writes ``diagnostics_<tag>.json`` and ``.md`` to --out.

  (a) one full alignment report (dense: M, eigh, rank augmentation) for LeNet m_c ∈ {1, 2, 4}, n = 1000,
      m_y = 10, 16×16 inputs (random inputs and labels; the cost does not depend on them).
      Goal on one H100: ≤ 1 s for m_c = 4 at peak ≤ 16 GB.
  (b) the safe-exploration certificate (Gram + in-place shifted Cholesky, then the second method) at
      n ∈ {1000, 10000, 60000, 73257}, m_{H−1} = 513, m_H = ⌈2n/513⌉, on RANDOM Z (Gaussian z̄ plus the constant
      neuron: the cost depends only on the sizes). Goal ≤ 5 s each on an H100; plus the ratio against forming φ
      and taking its singular values at n = 10000 (goal ≥ 20×).
  (c) the matrix-free residual (LSQR on J) for a PreActResNet18 snapshot with n·m_y ≥ 100,000 (n = 10000,
      m_y = 10, 16×16×1 inputs): time per iteration and per evaluation (iterations capped); and, with Ray,
      the CPU scaling of J·u + Jᵀ·w with 1 and 2 actors (one thread each).
  (d) building M at the laptop profile's size (LeNet m_c ∈ {1, 2, 4}, n = 100, m_y = 10): the contraction's
      upper block triangle (eeray.diagnostics.gram.TRIANGLE_ROWS) against one full product J Jᵀ, alternated in
      one run (median of --gram-reps), with the largest entrywise difference between the two.

Sizes above the caps are listed as skipped with the reason (CPU defaults keep a run to a few minutes);
a capped stand-in run is labelled with its real size. Runs without Ray (only (c)'s actor part needs it).

    python benchmarks/diagnostics.py --device cpu --out benchmarks/results            # CPU, ~5 min
    python benchmarks/diagnostics.py --device cuda --tag h100 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eeray.diagnostics.alignment import alignment_report  # noqa: E402
from eeray.diagnostics.jacobian import FunctionalModel  # noqa: E402
from eeray.diagnostics.matrix_free import krylov_residual, local_products  # noqa: E402
from eeray.diagnostics.safety import random_gate_certificate  # noqa: E402
from eeray.models import LeNet, PreActResNet18  # noqa: E402

GiB = 2**30


# ---------------------------------------------------------------------------- measurement
class Peak:
    """Peak memory during a block: CUDA allocator peak on GPU; sampled RSS above the start on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.peak, self.stop = _rss(), _rss(), False
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop = True
            self.thread.join()
            self.bytes = max(self.peak, _rss()) - self.base
        self.seconds = time.perf_counter() - self.t0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine_info(device: torch.device) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    info = {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": commit,
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / GiB, 1)
    try:
        import ray
        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    return info


# ---------------------------------------------------------------------------- (a) LeNet alignment
def bench_lenet(device, args) -> list[dict]:
    rows = []
    for m_c in (1, 2, 4):
        n_full = 1000
        n = min(n_full, args.max_align_n)
        if n < n_full:
            rows.append({"part": "a", "case": f"lenet m_c={m_c} n={n_full}", "status": "skipped",
                         "reason": f"--max-align-n {args.max_align_n}: dense eigh of M (10,000² float64) alone takes "
                                   "minutes on this CPU; run on a GPU"})
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(m_c)
        model = LeNet(m_c, 10, 1, 16).to(device)
        x = torch.randn(n, 1, 16, 16, generator=gen).to(device)
        y = torch.randint(0, 10, (n,), generator=gen).to(device)
        alignment_report(model, x[:4], y[:4], "ce", memory_budget_bytes=args.budget)  # warm-up (kernels, vmap)
        with Peak(device) as peak:
            rep = alignment_report(model, x, y, "ce", memory_budget_bytes=args.budget, method="dense")
        d = sum(p.numel() for p in model.parameters())
        rows.append({"part": "a", "case": f"lenet m_c={m_c} n={n}", "status": "ok" if n == n_full else "capped",
                     "n": n, "m_y": 10, "N": rep.N, "d": d, "seconds": peak.seconds, "peak_bytes": peak.bytes,
                     "seconds_gram": rep.seconds_gram, "seconds_eigh": rep.seconds_decision,
                     "seconds_rank_augmentation": rep.seconds_second_test, "rank": rep.rank, "aligned": rep.aligned,
                     "budget_bytes": args.budget,
                     "goal": "<= 1 s and <= 16 GB on one H100 (m_c=4, n=1000)" if m_c == 4 else ""})
        print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------- (d) upper-triangle contraction
def bench_contraction(device, args) -> list[dict]:
    from eeray.diagnostics import gram as gram_module

    rows, n = [], 100
    for m_c in (1, 2, 4):
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(m_c)
        model = LeNet(m_c, 10, 1, 16).to(device)
        x = torch.randn(n, 1, 16, 16, generator=gen).to(device)
        fm = FunctionalModel(model)
        blocked = gram_module.TRIANGLE_ROWS
        times: dict[str, list[float]] = {"upper": [], "full": []}
        grams = {}
        gram_module.build_gram(fm, x, 10, args.budget)  # warm-up (kernels, vmap)
        try:
            for _ in range(args.gram_reps):
                for name, block_rows in (("full", n * 10), ("upper", blocked)):
                    gram_module.TRIANGLE_ROWS = block_rows  # n·m_y rows in one block: one full product
                    _sync(device)
                    t0 = time.perf_counter()
                    grams[name] = gram_module.build_gram(fm, x, 10, args.budget)
                    _sync(device)
                    times[name].append(time.perf_counter() - t0)
        finally:
            gram_module.TRIANGLE_ROWS = blocked
        med = {k: float(np.median(v)) for k, v in times.items()}
        diff = float((grams["upper"] - grams["full"]).abs().max() / grams["full"].abs().max())
        rows.append({"part": "d", "case": f"build M lenet m_c={m_c} n={n}", "status": "ok", "n": n, "m_y": 10,
                     "d": fm.d, "seconds": med["upper"], "seconds_full_product": med["full"],
                     "ratio_upper_over_full": med["upper"] / med["full"], "triangle_rows": blocked,
                     "reps": args.gram_reps, "max_rel_difference": diff})
        print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------- (b) safe exploration
def bench_safety(device, args) -> list[dict]:
    rows, m = [], 513
    for n in (1000, 10000, 60000, 73257):
        m_H = math.ceil(2 * n / m)
        gram_bytes = n * n * 8
        limit = args.max_gram_gib * GiB
        if gram_bytes > limit:
            rows.append({"part": "b", "case": f"safe-exploration n={n}", "status": "skipped", "n": n, "m_H": m_H,
                         "reason": f"the n×n float64 Gram needs {gram_bytes / GiB:.1f} GiB > --max-gram-gib "
                                   f"{args.max_gram_gib}"})
            print(rows[-1], flush=True)
            continue
        z = _random_z(n, m, device)
        second = "eigvalsh" if 2 * gram_bytes <= limit and n <= args.max_second_n else "none"
        with Peak(device) as peak:
            rep = random_gate_certificate(z, m_H, seed=0, memory_budget_bytes=int(limit), second_method=second)
        rows.append({"part": "b", "case": f"safe-exploration n={n}", "status": "ok", "n": n, "m_H": m_H,
                     "m_H_minus_1": m, "seconds_gram": rep.seconds_gram, "seconds_cholesky": rep.seconds_cholesky,
                     "seconds_certificate": rep.seconds_gram + rep.seconds_cholesky, "certified": rep.certified,
                     "second_method": rep.second_method, "seconds_second": rep.seconds_second,
                     "second_rank": rep.second_rank, "agree": rep.agree, "peak_bytes": peak.bytes,
                     "note": rep.note or ("second method skipped: --max-second-n" if second == "none" else ""),
                     "goal": "certificate <= 5 s on one H100"})
        print(rows[-1], flush=True)
        del z
    n_svd = min(10000, args.max_svd_n)
    if n_svd < 10000:
        rows.append({"part": "b", "case": "phi SVD n=10000", "status": "skipped",
                     "reason": f"--max-svd-n {args.max_svd_n}: the SVD of φ (10000 × 20520) takes many minutes on "
                               "this CPU; measured at a smaller n instead"})
    rows.append(_svd_ratio(n_svd, m, device))
    print(rows[-1], flush=True)
    return rows


def _random_z(n: int, m: int, device) -> torch.Tensor:
    """z̄ ~ N(0, I/(m−1)) plus the constant neuron, so z_iᵀq ~ N(0, 2) for q ~ N(0, I) as with normalised
    features; unscaled N(0, I) features would saturate the sigmoid gates to exact 0/1 patterns."""
    z = torch.randn(n, m - 1, generator=torch.Generator().manual_seed(n), dtype=torch.float64) / math.sqrt(m - 1)
    return torch.cat([z.to(device), torch.ones(n, 1, dtype=torch.float64, device=device)], 1)


def _svd_ratio(n: int, m: int, device) -> dict:
    m_H = math.ceil(2 * n / m)
    z = _random_z(n, m, device)
    cert = random_gate_certificate(z, m_H, seed=0, second_method="none")
    q = torch.randn(m, m_H, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    _sync(device)
    t0 = time.perf_counter()
    s = torch.sigmoid(z @ q)
    phi = (s[:, :, None] * z[:, None, :]).reshape(n, -1)  # (n, m_H·m_{H−1}): what the Hadamard form avoids
    sv = torch.linalg.svdvals(phi)
    rank = int((sv > sv[0] * max(phi.shape) * torch.finfo(torch.float64).eps).sum())
    _sync(device)
    svd_seconds = time.perf_counter() - t0
    ours = cert.seconds_gram + cert.seconds_cholesky
    return {"part": "b", "case": f"phi SVD n={n}", "status": "ok" if n == 10000 else "capped", "n": n, "m_H": m_H,
            "seconds_phi_svd": svd_seconds, "svd_rank": rank, "seconds_certificate": ours,
            "speedup": svd_seconds / ours, "certified": cert.certified, "goal": ">= 20x at n=10000"}


# ---------------------------------------------------------------------------- (c) matrix-free ResNet-18
def bench_matrix_free(device, args) -> list[dict]:
    rows = []
    n_full, n = 10000, min(10000, args.max_mf_n)
    if n < n_full:
        rows.append({"part": "c", "case": f"resnet18 matrix-free n={n_full}", "status": "skipped",
                     "reason": f"--max-mf-n {args.max_mf_n}: one J·u + Jᵀ·w over 10,000 ResNet-18 inputs takes "
                               "minutes on this CPU"})
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = PreActResNet18(10, in_channels=1).to(device)
    x = torch.randn(n, 1, 16, 16, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen)
    v = (2 * torch.nn.functional.one_hot(y, 10).double() - 1).reshape(-1).numpy()
    fm = FunctionalModel(model)
    products = local_products(fm, x, 10, batch_size=args.mf_batch)
    u0, w0 = np.random.default_rng(0).standard_normal(fm.d), np.random.default_rng(1).standard_normal(n * 10)
    products.vjp(products.jvp(u0))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    products.jvp(u0)
    _sync(device)
    t_jvp = time.perf_counter() - t0
    products.vjp(w0)
    _sync(device)
    t_vjp = time.perf_counter() - t0 - t_jvp
    t0 = time.perf_counter()
    res = krylov_residual(products, v, max_iter=args.krylov_iters)
    _sync(device)
    seconds = time.perf_counter() - t0
    per_iter = seconds / max(res.iterations, 1)
    rows.append({"part": "c", "case": f"resnet18 matrix-free n={n}", "status": "ok" if n == n_full else "capped",
                 "n": n, "m_y": 10, "N": n * 10, "d": fm.d, "krylov_iterations": res.iterations,
                 "converged": res.converged, "residual": res.residual, "seconds": seconds,
                 "seconds_jvp": t_jvp, "seconds_vjp": t_vjp, "seconds_per_iteration": per_iter,
                 "projected_seconds_300_iterations": 300 * (t_jvp + t_vjp),
                 "note": "LSQR capped at --krylov-iters; each iteration is one J·u and one Jᵀ·w (plus one Jᵀv at "
                         "the start and one J·β for the true residual at the end)"})
    print(rows[-1], flush=True)
    rows.append(_actor_scaling(model, x[: args.actor_n], args))
    print(rows[-1], flush=True)
    return rows


def _actor_scaling(model, x, args) -> dict:
    case = {"part": "c", "case": f"actor scaling n={x.shape[0]}"}
    try:
        import ray
        from eeray.raytune.diagnostics_pool import DiagnosticsPool
    except ImportError:
        return {**case, "status": "skipped", "reason": "Ray is not installed on this machine"}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        model = model.cpu()
        x = x.cpu()
        times = {}
        for k in (1, 2):
            pool = DiagnosticsPool(model, x, num_actors=k, num_cpus=1, batch_size=args.mf_batch, device="cpu",
                                   driver_device="cpu")
            prods = pool.backend(model).products(10, 8 * GiB)
            u = np.random.default_rng(0).standard_normal(prods.d)
            prods.vjp(prods.jvp(u))  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.actor_reps):
                prods.vjp(prods.jvp(u))
            times[k] = (time.perf_counter() - t0) / args.actor_reps
            pool.shutdown()
        return {**case, "status": "ok", "n": x.shape[0], "seconds_1_actor": times[1], "seconds_2_actors": times[2],
                "speedup_2_over_1": times[1] / times[2], "note": "one J·u + Jᵀ·w; 1 CPU thread per actor"}
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------- report
def write(rows: list[dict], info: dict, args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"machine": info, "args": vars(args), "results": rows}
    (out / f"diagnostics_{args.tag}.json").write_text(json.dumps(data, indent=2, default=float))
    lines = [f"# eeray.diagnostics benchmark ({args.tag})", "", f"{info['date_utc']}, commit {info['git_commit']}, "
             f"{info.get('gpu', info['platform'])}, {info['cpu_count']} CPUs, torch {info['torch']}, "
             f"ray {info['ray']}", "", "| part | case | status | seconds | peak GiB | details |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        secs = r.get("seconds", r.get("seconds_certificate", r.get("seconds_1_actor")))
        peak = r.get("peak_bytes")
        skip = {"part", "case", "status", "seconds", "peak_bytes", "seconds_certificate"}
        details = ", ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in skip)
        lines.append(f"| {r['part']} | {r['case']} | {r['status']} | {_fmt(secs) if secs is not None else ''} | "
                     f"{peak / GiB:.2f} |" if peak is not None else
                     f"| {r['part']} | {r['case']} | {r['status']} | {_fmt(secs) if secs is not None else ''} | |")
        lines[-1] += f" {details} |"
    (out / f"diagnostics_{args.tag}.md").write_text("\n".join(lines) + "\n")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--tag", default=None, help="file suffix (default: cpu or gpu)")
    p.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run)")
    p.add_argument("--parts", default="abcd")
    p.add_argument("--budget", type=float, default=None, help="alignment memory budget in GiB (GPU 16, CPU 8)")
    p.add_argument("--max-align-n", type=int, default=None, help="cap n for (a) (CPU default 200)")
    p.add_argument("--max-gram-gib", type=float, default=None, help="largest safe-exploration Gram (GiB)")
    p.add_argument("--max-second-n", type=int, default=None, help="largest n for the eigvalsh second method")
    p.add_argument("--max-svd-n", type=int, default=None, help="cap n for the φ-SVD comparison (CPU 2000)")
    p.add_argument("--max-mf-n", type=int, default=None, help="cap n for (c) (CPU 100)")
    p.add_argument("--krylov-iters", type=int, default=None, help="LSQR iteration cap for (c)")
    p.add_argument("--mf-batch", type=int, default=1000)
    p.add_argument("--actor-n", type=int, default=128)
    p.add_argument("--actor-reps", type=int, default=3)
    p.add_argument("--gram-reps", type=int, default=5, help="repetitions per variant in (d)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    total_gib = (torch.cuda.get_device_properties(device).total_memory if gpu else
                 os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / GiB
    defaults = dict(tag="gpu" if gpu else "cpu", budget=16 if gpu else 8, max_align_n=1000 if gpu else 200,
                    max_gram_gib=0.6 * total_gib, max_second_n=30000 if gpu else 10000,
                    max_svd_n=10000 if gpu else 2000, max_mf_n=10000 if gpu else 100,
                    krylov_iters=30 if gpu else 5)
    if args.quick:
        defaults.update(max_align_n=50, max_gram_gib=min(defaults["max_gram_gib"], 1.0), max_second_n=1000,
                        max_svd_n=1000, max_mf_n=20, krylov_iters=2, actor_n=16, actor_reps=1)
        args.gram_reps = 1
    for k, v in defaults.items():
        if getattr(args, k) is None or (args.quick and k in ("actor_n", "actor_reps")):
            setattr(args, k, v)
    args.budget = int(args.budget * GiB)
    info = machine_info(device)
    print(info, flush=True)
    rows = []
    for part, fn in (("a", bench_lenet), ("b", bench_safety), ("c", bench_matrix_free), ("d", bench_contraction)):
        if part in args.parts:
            rows += fn(device, args)
    write(rows, info, args)


if __name__ == "__main__":
    main()
