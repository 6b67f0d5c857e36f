"""The in-process backend of the alignment report: everything on the model's own device.

A backend answers the few questions the report asks (outputs, M, J·u / Jᵀ·w, L and ‖∇L‖, ν); the actor pool
(:mod:`eeray.raytune.diagnostics_pool`) answers the same questions with data shards on Ray actors, so both run the
same decision code and give the same answers.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from eeray.diagnostics.certificate import loss_and_grad_norm, nu_vector
from eeray.diagnostics.errors import MemoryBudgetError
from eeray.diagnostics.gram import F64, build_gram, plan_gram
from eeray.diagnostics.jacobian import FunctionalModel, eval_mode
from eeray.diagnostics.matrix_free import Products, local_products

KRYLOV_VECTORS = 6  # float64 vectors of length d and of length N that LSQR/LSMR/ARPACK keep (upper estimate)


def matrix_free_bytes(d: int, N: int, act_per_sample: int, batch: int) -> int:
    """Driver vectors of the Krylov solvers + activations of one jvp/vjp batch (≈ 3× a forward)."""
    return KRYLOV_VECTORS * F64 * (d + N) + 3 * act_per_sample * batch


class LocalBackend:
    def __init__(self, model: nn.Module, x: torch.Tensor, params: Sequence[str] | None = None, batch_size: int = 256):
        self.model, self.x, self.batch_size = model, x, batch_size
        self.fm = FunctionalModel(model, params)
        self.n, self.d, self.device = x.shape[0], self.fm.d, self.fm.device
        self._plan = None

    def outputs(self) -> torch.Tensor:  # (n, m_y)
        return self.fm.outputs(self.x, self.batch_size)

    def gram_bytes(self, m_y: int, budget: int) -> int:
        self._plan = plan_gram(self.fm, self.x, m_y, budget)
        return self._plan.bytes_estimate

    def gram(self, m_y: int, budget: int) -> torch.Tensor:  # (N, N) float64
        plan = self._plan if self._plan is not None else plan_gram(self.fm, self.x, m_y, budget)
        return build_gram(self.fm, self.x, m_y, budget, plan=plan)

    def matrix_free_batch(self, m_y: int, budget: int | None) -> int:
        """Samples per jvp/vjp batch that fit the budget (at most ``batch_size``; None: no budget check)."""
        if budget is None:
            return self.batch_size
        act = self.fm.activation_bytes_per_sample(self.x)
        fixed = matrix_free_bytes(self.d, self.n * m_y, act, 0)
        need = matrix_free_bytes(self.d, self.n * m_y, act, 1)
        if budget < need:
            raise MemoryBudgetError(budget, need, f"matrix-free products (d = {self.d:,}, N = {self.n * m_y:,})")
        return int(max(1, min(self.batch_size, (budget - fixed) // (3 * act))))

    def products(self, m_y: int, budget: int | None) -> Products:
        return local_products(self.fm, self.x, m_y, self.matrix_free_batch(m_y, budget))

    def jvp_vector(self, u: torch.Tensor, m_y: int) -> torch.Tensor:  # (d,) -> (N,) float64
        with eval_mode(self.model):
            return self.fm.jvp(self.x, u, self.batch_size)

    def loss_and_grad_norm(self, big_y: torch.Tensor, loss: str) -> tuple[float, float]:
        return loss_and_grad_norm(self.fm, self.x, big_y, loss, self.batch_size)

    def nu(self, linear_params: list[str]) -> torch.Tensor:
        return nu_vector(self.fm, linear_params)
