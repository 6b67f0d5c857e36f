"""What every loader returns: a dataset as in-memory tensors (:class:`TrainingData`).

Its own module so that the loaders (``synthetic.py``, ``real.py``) import it without importing the package that
dispatches to them (``eeray.data``): no import circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from eeray.datasets import DatasetSpec

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (B, C, H, W) -> (B, C, H, W), per sample


@dataclass
class TrainingData:
    spec: DatasetSpec
    x_train: torch.Tensor  # (n, *input_shape) float32, normalised
    y_train: torch.Tensor  # (n,) int64 class labels (binary: 0/1)
    x_test: torch.Tensor  # (n_test, *input_shape) float32 (the validation part under val_fraction)
    y_test: torch.Tensor  # (n_test,) int64
    augment: Augment | None = None  # set when DataConfig.augment
    info: dict[str, Any] = field(default_factory=dict)  # provenance: files, split seeds, normalisation

    @property
    def n(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: torch.device | str) -> "TrainingData":
        return TrainingData(self.spec, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                            self.y_test.to(device), self.augment, self.info)
