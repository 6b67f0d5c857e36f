"""The actor class of :mod:`eeray.raytune.diagnostics_pool`, kept free of Ray so it can be tested and read alone:
one shard of the samples, the model structure, and the snapshots sent to it (by id). ``eeray.raytune.diagnostics_pool`` wraps it with
``ray.remote``; every method is the local computation on the shard."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from eeray import cpu_kernels
from eeray.diagnostics import safety
from eeray.diagnostics.certificate import loss_and_grad
from eeray.diagnostics.gram import build_gram
from eeray.diagnostics.jacobian import eval_mode
from eeray.diagnostics.local import LocalBackend


class ShardWorker:
    """One actor: a shard of x, the model structure, and the snapshots it has been sent (by id)."""

    def __init__(self, template: nn.Module, shard: torch.Tensor, params, batch_size: int, device: str, threads: int):
        cpu_kernels.apply()  # a worker of a cluster started elsewhere: the trial's arithmetic (eeray.cpu_kernels)
        torch.set_num_threads(max(1, threads))
        self.device = torch.device(device)
        self.template, self.params, self.batch_size = template.to(self.device), params, batch_size
        self.shard = shard.to(self.device)
        self.snapshots: dict[int, LocalBackend] = {}

    def load(self, snap_id: int, state: dict) -> None:
        model = copy.deepcopy(self.template)
        model.load_state_dict(state)
        self.snapshots = {k: v for k, v in self.snapshots.items() if k >= snap_id - 2}  # θ_0 is re-sent if evicted
        self.snapshots[snap_id] = LocalBackend(model, self.shard, self.params, self.batch_size)

    def outputs(self, snap_id: int) -> torch.Tensor:
        return self.snapshots[snap_id].outputs().cpu()

    def gram_block(self, snap_id: int, other: torch.Tensor | None, m_y: int, budget: int) -> torch.Tensor:
        b = self.snapshots[snap_id]
        cols = None if other is None else other.to(self.device)
        return build_gram(b.fm, self.shard, m_y, budget, x_cols=cols).cpu()

    def jvp(self, snap_id: int, u: np.ndarray) -> np.ndarray:
        return self.snapshots[snap_id].jvp_vector(torch.from_numpy(np.array(u)), 0).cpu().numpy()  # own copy

    def vjp(self, snap_id: int, w: np.ndarray) -> np.ndarray:
        b = self.snapshots[snap_id]
        with eval_mode(b.model):
            return b.fm.vjp(self.shard, torch.from_numpy(np.array(w)), self.batch_size).cpu().numpy()

    def loss_and_grad(self, snap_id: int, big_y: torch.Tensor, loss: str) -> tuple[float, np.ndarray]:
        b = self.snapshots[snap_id]
        value, grads = loss_and_grad(b.fm, self.shard, big_y.to(self.device), loss, self.batch_size)
        return value, grads.cpu().numpy()

    def features(self, snap_id: int) -> torch.Tensor:
        return safety.backbone_features(self.snapshots[snap_id].model, self.shard, self.batch_size).cpu()

    def hadamard_block(self, z_a, s_a, z_b, s_b) -> torch.Tensor:  # (n_a, n_b) float64
        return (z_a @ z_b.T) * (s_a @ s_b.T)
