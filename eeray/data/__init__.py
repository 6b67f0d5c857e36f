"""Datasets: a registry of what eeray can load, and one entry point, :func:`load_dataset`.

Synthetic sets from the paper need no files (``synthetic.py``); real sets are read from local files under a
data root (``real.py``); the paper's augmentations run batched, per sample, on the batch's device
(``augment.py``). Everything returns a :class:`TrainingData` of in-memory tensors, so a trial's data order is
a pure function of its seed and epoch (resumable) and a GPU trial never waits on a loader process.
"""
from __future__ import annotations

import importlib
from typing import Mapping, Sequence
from dataclasses import dataclass

import torch

from eeray.data.training_data import Augment, TrainingData
from eeray.datasets import DATASETS, DatasetSpec

__all__ = ["Augment", "DATASETS", "DatasetSpec", "TrainingData", "load_dataset", "select_datasets"]

def load_dataset(cfg) -> TrainingData:
    """Load ``cfg`` (a :class:`eeray.config.DataConfig`): subset, split and augmentation applied."""
    spec = DATASETS[cfg.name]
    module, _, fn = spec.loader.partition(":")
    data: TrainingData = getattr(importlib.import_module(module), fn)(cfg)
    data = _subset(data, cfg)
    if cfg.val_fraction > 0:
        data = _validation_split(data, cfg)
    if cfg.augment:
        from eeray.data.augment import paper_augmentation

        data.augment = paper_augmentation(cfg.name, data.info.get("normalization"))
    return data


def _subset(data: TrainingData, cfg) -> TrainingData:
    """A seeded subset of the training set (and of the test set) when fewer samples are asked for."""
    g = torch.Generator().manual_seed(10_007 * cfg.seed + 17)
    x, y, xt, yt = data.x_train, data.y_train, data.x_test, data.y_test
    if cfg.n_train is not None and cfg.n_train < x.shape[0]:
        idx = torch.randperm(x.shape[0], generator=g)[: cfg.n_train]
        x, y = x[idx], y[idx]
        data.info["train_subset"] = f"{cfg.n_train} of {data.spec.n_train}, seed {cfg.seed}"
    elif cfg.n_train is not None and cfg.n_train > x.shape[0]:
        from eeray.config import ConfigError

        raise ConfigError("data.n_train", cfg.n_train, f"dataset '{cfg.name}' has {x.shape[0]} training samples")
    if cfg.n_test is not None and cfg.n_test < xt.shape[0]:
        idx = torch.randperm(xt.shape[0], generator=g)[: cfg.n_test]
        xt, yt = xt[idx], yt[idx]
    data.x_train, data.y_train, data.x_test, data.y_test = x, y, xt, yt
    return data


def _validation_split(data: TrainingData, cfg) -> TrainingData:
    """The paper's grid-search split: a seeded 80/20 (val_fraction) split of the training set; the held-out
    part takes the place of the test set (paper §3.4.2: hyper-parameters chosen "by only using training data")."""
    g = torch.Generator().manual_seed(20_011 * cfg.seed + 3)
    n = data.n
    n_val = max(1, round(cfg.val_fraction * n))
    perm = torch.randperm(n, generator=g)
    val, tr = perm[:n_val], perm[n_val:]
    data.info["validation_split"] = f"{n - n_val}/{n_val} (val_fraction {cfg.val_fraction}, seed {cfg.seed})"
    data.info["n_before_split"] = n
    data.x_test, data.y_test = data.x_train[val], data.y_train[val]
    data.x_train, data.y_train = data.x_train[tr], data.y_train[tr]
    return data




@dataclass(frozen=True)
class DatasetSelection:
    present: list[str]  # in the order asked for
    skipped: dict[str, str]  # absent dataset -> why (the study runs without it only with --present-datasets-only)


def select_datasets(names) -> DatasetSelection:
    """The datasets among ``names`` that can be loaded here (synthetic and bundled ones always; real ones when
    their files are under the data root).

    A study asks for its datasets and records the absent ones, with why, in ``Study.skipped_datasets``; the
    command line then refuses it, naming each absent dataset and its first missing file
    (:func:`absent_datasets_error`), unless the user asked for the datasets present (``--present-datasets-only``),
    so a paper study never quietly becomes a smaller one. None present is an error here. Whether the present
    files are well formed is checked later, with the study (:func:`eeray.data.real.check_data`): a corrupt file is
    an error, never a reason to skip."""
    from eeray.data.real import LAYOUT, DatasetFilesError, _missing, check_files, data_root
    from eeray.config import DataConfig

    found, absent = [], {}
    for name in names:
        if DATASETS[name].kind != "real":
            found.append(name)
            continue
        try:
            check_files(DataConfig(name=name))
            found.append(name)
        except DatasetFilesError:
            root = data_root(DataConfig(name=name), required=False)
            if root is None:
                absent[name] = "no data root set"
            else:
                missing = _missing(name, root / LAYOUT[name][0])
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                absent[name] = f"missing {root / LAYOUT[name][0] / missing[0]}{more}; get it from {LAYOUT[name][2]}"
    if not found:
        raise DatasetFilesError(f"none of the study's datasets ({', '.join(names)}) is present: "
                                + "; ".join(f"{n}: {why}" for n, why in absent.items()))
    return DatasetSelection(found, absent)


def absent_datasets_error(skipped: Mapping[str, str], present: Sequence[str]):
    """The refusal of a study whose datasets ``skipped`` (name -> why) are absent, when the user did not pass
    --present-datasets-only: a :class:`eeray.data.real.DatasetFilesError` naming each and what is present."""
    from eeray.data.real import DatasetFilesError

    what = "; ".join(f"{n}: {why}" for n, why in skipped.items())
    return DatasetFilesError(f"datasets not found: {what}. Put their files under the data root (--data-root or "
                             f"EERAY_DATA_ROOT), or pass --present-datasets-only to run only the datasets present "
                             f"({', '.join(present) or 'none'})")
