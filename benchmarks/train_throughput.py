"""Training throughput of the paper protocol through eeray's own trial loop (``eeray.trial.Trial``).

Pre-activation ResNet-18 (softplus), SGD batch 64, lr 0.1, momentum 0.9, wd 1e-5, fp32, eeray's CUDA defaults
(whole-step CUDA graphs, NHWC), CIFAR-sized inputs with
the CIFAR augmentation (random crop + flip, per sample, on the GPU), data resident on the device:

  single   images/s of one Standard trial and of one EE trial, per phase (exploration; exploitation with the
           backbone frozen in eval mode), and the time of one full evaluation (train + test sets)
  estimate the wall-clock of a 200-epoch CIFAR-sized EE trial (τ0 = 0.8, evaluation every 5 epochs) and the
           A(Standard)/Standard wall-clock ratio (the paper's Table 5: 0.997)
  eager    the same single-trial numbers with ``train.cuda_graphs = False`` (every step launched eagerly, NHWC
           kept), so the gain from whole-step CUDA graphs (eeray.graphed_step) is a ratio within one run
  packed   aggregate images/s of k ∈ {1, 2, 4, 8} trial processes sharing one GPU, each capped to 1/k of its
           memory — the way Tune packs fractional-GPU trials; with ``--mps`` also under an NVIDIA MPS daemon that
           this script starts (pipe and log directories of its own) and stops

Goals (issue 6, on one H100): 200-epoch EE trial ≤ 20 min; A/Standard ≤ 1; ≥ 3× aggregate with 4 packed trials.

    python benchmarks/train_throughput.py --out benchmarks/results             # GPU
    python benchmarks/train_throughput.py --quick --out /tmp/bench             # CPU sanity run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.records import NullSink
from eeray.trial import Trial


def protocol(n: int, epochs: int, ee: bool, tau_epochs: int, seed: int = 0, graphs: bool = True) -> TrialConfig:
    return TrialConfig(
        data=DataConfig(name="cifar_sized", n_train=n, n_test=max(64, n // 5), augment=True),
        model=ModelConfig(arch="preact_resnet18"),
        optim=OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-5),
        ee=EEConfig(enabled=ee, tau=tau_epochs, tau_unit="epochs", m_H_factor=2.0),
        train=TrainConfig(epochs=epochs, batch_size=64, eval_every=epochs, eval_batch_size=1000, cuda_graphs=graphs),
        diag=DiagConfig(lemma5=False), seed=seed)  # speed only: no certificates


def run(cfg: TrialConfig) -> dict:
    trial = Trial(cfg, NullSink())
    summary = trial.run().summary
    return trial.timers | {"step_graphs": summary.get("train_step_graphs"), "n": trial.data.n,
                           "n_test": trial.data.x_test.shape[0], "epochs": cfg.train.epochs,
                           "tau_epochs": (trial.schedule.tau_step or 0) // trial.steps_per_epoch}


def single(n: int, epochs: int, graphs: bool = True) -> dict:
    warm = 64 + n % 64  # both batch shapes the measured runs will see (64 and the last, partial one)
    run(protocol(warm, 2, ee=False, tau_epochs=0, graphs=graphs))  # warm-up: cuDNN autotuning, allocator, kernels
    run(protocol(warm, 2, ee=True, tau_epochs=1, graphs=graphs))  # ... and the EE head, the exploitation graphs
    std = run(protocol(n, epochs, ee=False, tau_epochs=0, graphs=graphs))
    ee = run(protocol(n, 2 * epochs, ee=True, tau_epochs=epochs, graphs=graphs))  # half exploration, half exploitation
    std_ips = n * epochs / std["explore_seconds"]
    explore_ips = n * epochs / ee["explore_seconds"]
    exploit_ips = n * epochs / ee["exploit_seconds"]
    evals = (std["eval_seconds"] + ee["eval_seconds"]) / 5  # std: 2 evaluations; ee: 3 (start, τ, end)
    return {"standard_images_per_s": std_ips, "ee_explore_images_per_s": explore_ips,
            "ee_exploit_images_per_s": exploit_ips, "exploit_speedup_over_explore": exploit_ips / explore_ips,
            "eval_seconds_per_evaluation": evals, "eval_images": n + std["n_test"], "n": n, "epochs": epochs,
            "step_graphs": {"standard": std["step_graphs"], "ee": ee["step_graphs"]}}


def estimate(s: dict, n: int = 50000, n_test: int = 10000, epochs: int = 200, tau0: float = 0.8,
             eval_every: int = 5) -> dict:
    per_image_eval = s["eval_seconds_per_evaluation"] / s["eval_images"]
    evals = (epochs // eval_every + 1) * per_image_eval * (n + n_test)
    explore = tau0 * epochs * n / s["ee_explore_images_per_s"]
    exploit = (1 - tau0) * epochs * n / s["ee_exploit_images_per_s"]
    standard = epochs * n / s["standard_images_per_s"]
    return {"ee_trial_seconds": explore + exploit + evals, "ee_train_seconds": explore + exploit,
            "standard_train_seconds": standard, "ee_over_standard_train": (explore + exploit) / standard,
            "eval_seconds": evals, "assumptions": f"{epochs} epochs, n={n}, τ0={tau0}, eval every {eval_every} epochs"}


def packed(k: int, n: int, epochs: int, mps: bool = False) -> dict:
    """k concurrent trial processes on one GPU; aggregate images/s over the window where all of them run."""
    start_at = time.time() + 12.0 + 3.0 * k  # every worker builds its model and data first, then all start together
    threads = max(1, (os.cpu_count() or 1) // k)  # as Tune gives each packed trial its CPUs: no oversubscription
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(n), str(epochs), str(1 / k),
                               str(start_at), str(i), str(threads)], stdout=subprocess.PIPE, text=True)
             for i in range(k)]
    try:
        outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:  # a worker that failed or hung must not keep the GPU from the next measurement
            if p.poll() is None:
                p.kill()
    t0, t1 = min(o["start"] for o in outs), max(o["end"] for o in outs)
    images = sum(o["images"] for o in outs)
    return {"trials": k, "mps": mps, "aggregate_images_per_s": images / (t1 - t0), "window_seconds": t1 - t0,
            "late_start_seconds": max(o["start"] for o in outs) - t0}


class MpsDaemon:
    """An NVIDIA MPS control daemon for this process and its children: kernels of the packed processes then
    share the GPU concurrently instead of time-slicing. Its own pipe/log directories; quit on exit."""

    def __init__(self, root: Path):
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}

    def __enter__(self) -> "MpsDaemon":
        for d in self.env.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        os.environ.update(self.env)
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, check=False)
        for k in self.env:
            os.environ.pop(k, None)


def worker(n: int, epochs: int, fraction: float, start_at: float, seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    if torch.cuda.is_available() and fraction < 1:
        torch.cuda.set_per_process_memory_fraction(fraction)
    torch.backends.cudnn.benchmark = True
    trial = Trial(protocol(n, epochs, ee=False, tau_epochs=0, seed=seed), NullSink())
    run(protocol(min(n, 1024), 1, ee=False, tau_epochs=0, seed=seed))  # warm up this process
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    for _ in range(trial.schedule.total_steps):
        trial._train_step()
        trial.step += 1
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    print(json.dumps({"start": t0, "end": time.time(), "images": n * epochs}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        n, epochs, frac, start_at, seed, threads = sys.argv[2:]
        return worker(int(n), int(epochs), float(frac), float(start_at), int(seed), int(threads))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU sanity check)")
    p.add_argument("--packed", default="1,2,4,8")
    p.add_argument("--mps", action="store_true", help="also measure the packed trials under an MPS daemon")
    p.add_argument("--no-eager", action="store_true", help="skip the cuda_graphs=False comparison")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    n, epochs = (256, 1) if args.quick else (25000, 2)
    ks = [int(k) for k in args.packed.split(",") if k]
    pn, pe = (2048, 1) if args.quick else (6400, 2)
    under_mps: list[dict] = []
    if args.mps:  # first, before this process creates a CUDA context of its own (a non-MPS client)
        try:
            with MpsDaemon(Path(tempfile.mkdtemp(prefix="eeray-mps-"))):
                under_mps = [packed(k, pn, pe, mps=True) for k in ks]
        except (OSError, subprocess.SubprocessError, json.JSONDecodeError, IndexError) as err:
            under_mps = [{"trials": 0, "mps": True, "error": f"{type(err).__name__}: {err}"}]
    result = {"benchmark": "train_throughput", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "single": single(n, epochs)}
    result["estimate_200_epochs"] = estimate(result["single"])
    if not args.no_eager:
        result["eager"] = single(n, epochs, graphs=False)
        result["eager_estimate_200_epochs"] = estimate(result["eager"])
    result["packed"] = [packed(k, pn, pe) for k in ks]
    result["packed"] += [r for r in under_mps if "error" not in r]
    result["mps_error"] = next((r["error"] for r in under_mps if "error" in r), None)
    base = next((r["aggregate_images_per_s"] for r in result["packed"] if r["trials"] == 1 and not r["mps"]), None)
    for r in result["packed"]:
        r["speedup_over_one"] = r["aggregate_images_per_s"] / base if base else None  # over one trial, no MPS
    est = result["estimate_200_epochs"]
    four = max((r["speedup_over_one"] or 0 for r in result["packed"] if r["trials"] == 4), default=0)
    result["goals"] = {"200-epoch EE trial <= 20 min": est["ee_trial_seconds"] <= 1200,
                       "A(Standard) / Standard <= 1": est["ee_over_standard_train"] <= 1,
                       ">= 3x aggregate with 4 packed": four >= 3}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if torch.cuda.is_available() else "cpu"
    (args.out / f"train_throughput_{tag}.json").write_text(json.dumps(result, indent=2))
    s = result["single"]
    lines = [f"# Training throughput ({result['device']}, {result['date']})", "",
             "PreAct-ResNet-18 (softplus), batch 64, fp32 SGD, CIFAR-sized inputs + crop/flip on the device, "
             "SGD steps replayed as CUDA graphs and NHWC layout (train.cuda_graphs, train.channels_last: the defaults), "
             "eeray's trial loop.", "",
             "| measurement | value |", "| --- | --- |",
             f"| Standard, images/s | {s['standard_images_per_s']:.0f} |",
             f"| EE exploration, images/s | {s['ee_explore_images_per_s']:.0f} |",
             f"| EE exploitation (backbone frozen), images/s | {s['ee_exploit_images_per_s']:.0f} |",
             f"| one evaluation (train + test), s per 1000 images | "
             f"{1000 * s['eval_seconds_per_evaluation'] / s['eval_images']:.3f} |",
             f"| 200-epoch CIFAR-sized EE trial, estimated | {est['ee_trial_seconds'] / 60:.1f} min |",
             f"| A(Standard) / Standard training wall-clock | {est['ee_over_standard_train']:.3f} |"]
    if "eager" in result:
        e, ee_est = result["eager"], result["eager_estimate_200_epochs"]
        lines += [f"| without CUDA graphs: Standard / EE exploration / EE exploitation, images/s | "
                  f"{e['standard_images_per_s']:.0f} / {e['ee_explore_images_per_s']:.0f} / "
                  f"{e['ee_exploit_images_per_s']:.0f} |",
                  f"| without CUDA graphs: 200-epoch EE trial, estimated; A/Standard | "
                  f"{ee_est['ee_trial_seconds'] / 60:.1f} min; {ee_est['ee_over_standard_train']:.3f} |",
                  f"| CUDA graphs speed-up: Standard / EE exploration / EE exploitation | "
                  f"{s['standard_images_per_s'] / e['standard_images_per_s']:.2f}× / "
                  f"{s['ee_explore_images_per_s'] / e['ee_explore_images_per_s']:.2f}× / "
                  f"{s['ee_exploit_images_per_s'] / e['ee_exploit_images_per_s']:.2f}× |"]
    lines += [f"| {r['trials']} packed trials{' under MPS' if r['mps'] else ''}, aggregate images/s | "
              f"{r['aggregate_images_per_s']:.0f} ({r['speedup_over_one']:.2f}× one) |" for r in result["packed"]]
    if result["mps_error"]:
        lines += ["", f"MPS could not be used: {result['mps_error']}"]
    lines += ["", "Goals: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in result["goals"].items())]
    (args.out / f"train_throughput_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
