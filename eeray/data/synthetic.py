"""The paper's generated datasets (§2.2) and scikit-learn's bundled digits. No files, no network.

Each generator is seeded by ``DataConfig.seed``; the test set comes from an independent stream of the same
generator so that train and test never share samples.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from eeray.data.training_data import TrainingData
from eeray.datasets import DATASETS


def _gen(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + stream)


def _sizes(cfg) -> tuple[int, int]:
    spec = DATASETS[cfg.name]
    n = spec.n_train if cfg.n_train is None else cfg.n_train
    n_test = spec.n_test if cfg.n_test is None else cfg.n_test
    return n, n_test


def load_sine(cfg) -> TrainingData:
    """x_i ~ U[-1, 1], y_i = 1{sin(20 x_i) < 0} (paper §2.2, "a sine wave with a high frequency")."""
    n, n_test = _sizes(cfg)

    def draw(m: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(m, 1, generator=_gen(cfg.seed, stream), dtype=torch.float64) * 2 - 1  # (m, 1)
        y = (torch.sin(20 * x[:, 0]) < 0).long()  # (m,)
        return x.float(), y

    x, y = draw(n, 1)
    xt, yt = draw(n_test, 2)
    return TrainingData(DATASETS["sine"], x, y, xt, yt, info={"generator": "U[-1,1], 1{sin(20x)<0}",
                                                              "seed": cfg.seed})


def load_moons(cfg) -> TrainingData:
    """sklearn.datasets.make_moons(n, noise, shuffle=True, random_state=seed) (docs/paper-choices.md (C19))."""
    from sklearn.datasets import make_moons

    n, n_test = _sizes(cfg)
    x, y = make_moons(n_samples=n, noise=cfg.moons_noise, shuffle=True, random_state=cfg.seed)
    xt, yt = make_moons(n_samples=n_test, noise=cfg.moons_noise, shuffle=True, random_state=cfg.seed + 10_000)
    as_t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return TrainingData(DATASETS["moons"], as_t(x, torch.float32), as_t(y, torch.long), as_t(xt, torch.float32),
                        as_t(yt, torch.long), info={"noise": cfg.moons_noise, "seed": cfg.seed})


def load_random16(cfg) -> TrainingData:
    """16x16x1 images with N(0, 1) pixels and labels uniform on {0, 1} (paper §2.2): nothing to learn but
    memorisation, which is what makes it a test of optimisation."""
    n, n_test = _sizes(cfg)

    def draw(m: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = _gen(cfg.seed, stream)
        x = torch.randn(m, 1, 16, 16, generator=g)  # (m, 1, 16, 16)
        y = torch.randint(0, 2, (m,), generator=g)  # (m,)
        return x, y

    x, y = draw(n, 1)
    xt, yt = draw(n_test, 2)
    return TrainingData(DATASETS["random16"], x, y, xt, yt, info={"seed": cfg.seed})


def load_cifar_sized(cfg) -> TrainingData:
    """Random N(0, 1) images of CIFAR-10's shape with random labels: the same tensors, kernels and augmentation
    as CIFAR-10 for speed measurements on machines without the dataset. Nothing here is learnable."""
    n, n_test = _sizes(cfg)
    g = _gen(cfg.seed, 1)
    x = torch.randn(n + n_test, 3, 32, 32, generator=g)  # (n + n_test, 3, 32, 32)
    y = torch.randint(0, 10, (n + n_test,), generator=g)
    return TrainingData(DATASETS["cifar_sized"], x[:n], y[:n], x[n:], y[n:],
                        info={"seed": cfg.seed, "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}})


def _digits(cfg, size: int, name: str) -> TrainingData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)  # (1797, 1, s, s)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    perm = torch.as_tensor(np.random.default_rng(cfg.seed).permutation(len(y)))
    spec = DATASETS[name]
    tr, te = perm[: spec.n_train], perm[spec.n_train:]
    mean, std = float(x[tr].mean()), float(x[tr].std())
    if cfg.normalize:
        x = (x - mean) / std
    return TrainingData(spec, x[tr], y[tr], x[te], y[te],
                        info={"source": "sklearn.datasets.load_digits", "split": f"{len(tr)}/{len(te)} seed {cfg.seed}",
                              "normalization": {"mean": [mean], "std": [std]} if cfg.normalize else None})


def load_digits(cfg) -> TrainingData:
    return _digits(cfg, 8, "digits")


def load_digits16(cfg) -> TrainingData:
    return _digits(cfg, 16, "digits16")
