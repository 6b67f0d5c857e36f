"""The ResNet-18 EE protocol on the real Fashion-MNIST (60,000 training images), through ``run_trial``.

Assumption 4 is certified at initialisation on the whole training set (n = 60,000, m_H = ⌈2n/513⌉ = 234: a
60,000² float64 Gram, 28.8 GB), a few epochs of the protocol run (SGD batch 64, lr 0.1, momentum 0.9, wd 1e-5,
τ = 2 of 3 epochs, ε = 1e-3), and Lemma 5 is checked per head at θ^τ. Speed per phase comes from the trial's own
timers. Fashion-MNIST has no paper augmentation; it runs without.

    EERAY_DATA_ROOT=/path/with/FashionMNIST/raw python benchmarks/fashion_mnist_gpu.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrainConfig, TrialConfig
from eeray.records import MemorySink
from eeray.trial import run_trial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=None, help="default: all 60,000")
    p.add_argument("--budget-gb", type=float, default=50.0, help="one 60,000² float64 Gram is 28.8 GB")
    p.add_argument("--lemma5", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    cfg = TrialConfig(
        data=DataConfig(name="fashion_mnist", n_train=args.n_train),
        model=ModelConfig(arch="preact_resnet18"),
        optim=OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-5),
        ee=EEConfig(m_H_factor=2.0, tau=args.epochs - 1, tau_unit="epochs", epsilon=1e-3),
        train=TrainConfig(epochs=args.epochs, batch_size=64, eval_every=1, eval_batch_size=2000),
        diag=DiagConfig(assumption4=True, lemma5=args.lemma5, memory_budget_gb=args.budget_gb))
    sink = MemorySink()
    result = run_trial(cfg, sink)
    s, steps, safety = result.summary, sink.frame("steps"), sink.frame("safety")
    n, spe = s["n"], s["steps_per_epoch"]
    tau_epochs = s["tau_step"] // spe
    explore_ips = n * tau_epochs / s["explore_seconds"]
    exploit_ips = n * (args.epochs - tau_epochs) / s["exploit_seconds"] if s["exploit_seconds"] else None
    a4 = safety[safety.kind == "assumption4"].iloc[0].to_dict()
    l5 = safety[safety.kind == "lemma5"]
    out = {"benchmark": "fashion_mnist_gpu", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__, "n": n, "m_H": s["m_H"], "m_H_minus_1": s["m_H_minus_1"],
           "assumption4": {k: a4[k] for k in ("certified", "second_method", "second_rank", "agree", "lambda_min",
                                               "lambda_max", "seconds_gram", "seconds_cholesky", "seconds_second",
                                               "peak_bytes_estimate")},
           "lemma5_heads_certified": int(l5.certified.sum()) if len(l5) else None, "lemma5_heads": len(l5),
           "lemma5_seconds": float((l5.seconds_gram + l5.seconds_cholesky + l5.seconds_second).sum()) if len(l5) else None,
           "explore_images_per_s": explore_ips, "exploit_images_per_s": exploit_ips,
           "epochs": args.epochs, "tau_epochs": tau_epochs,
           "train_error_per_epoch": steps.groupby("phase").train_error.apply(list).to_dict(),
           "final_train_error": s["final_train_error"], "final_test_error": s["final_test_error"],
           "summary": {k: v for k, v in s.items() if isinstance(v, (int, float, str, bool)) or v is None}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fashion_mnist_gpu.json").write_text(json.dumps(out, indent=2, default=str))
    lines = [f"# ResNet-18 EE protocol on Fashion-MNIST ({out['device']}, {out['date']})", "",
             f"- Assumption 4 at initialisation, n = {n}, m_H = {s['m_H']}, m_{{H−1}} = {s['m_H_minus_1']}: "
             f"certified = {a4['certified']} (shifted Cholesky; Gram {a4['seconds_gram']:.2f} s + Cholesky "
             f"{a4['seconds_cholesky']:.2f} s); second method {a4['second_method']}: rank {a4['second_rank']}, "
             f"agree = {a4['agree']}",
             f"- Lemma 5 at θ^τ: {out['lemma5_heads_certified']} of {out['lemma5_heads']} heads certified "
             f"({out['lemma5_seconds'] or 0:.1f} s)",
             f"- exploration {explore_ips:.0f} images/s; exploitation (backbone frozen) "
             f"{exploit_ips or float('nan'):.0f} images/s",
             f"- training error by evaluation: {out['train_error_per_epoch']}",
             f"- final train error {s['final_train_error']:.4f}, test error {s['final_test_error']:.4f} after "
             f"{args.epochs} epochs (τ = {tau_epochs})"]
    (args.out / "fashion_mnist_gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
