"""The per-iterate optimality certificate of Lemma 1 / Theorem 3 (docs/paper-choices.md: Definitions, D6):

    L(θ) ≤ L*(ηY_ℓ) + ‖ν(θ) − β̂(θ, η)‖ · ‖∇L(θ)‖,   valid when vec(Y_ℓ) ∈ Col(J),

with ν(θ) the last-layer parameters S (zeros elsewhere), β̂ = η J^† vec(Y_ℓ), and
‖ν − β̂‖² = ‖ν‖² − 2η (Jν)ᵀM^† y + η² yᵀM^† y. Jν is computed by one jvp (not assumed to equal vec(f_X)),
so the distance is exact for any S; ‖Jν − vec(f_X)‖/‖f_X‖ is reported as the Assumption-1 check. η = 1 for
"mse"; for "bce"/"ce" the bound is minimised over η ≥ 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.optimize import minimize_scalar
from torch import nn

from eeray.diagnostics.jacobian import FunctionalModel, eval_mode
from eeray.losses import loss_value, optimal_loss


@dataclass
class Certificate:
    eta: float
    bound: float  # L*(ηY_ℓ) + ‖ν − β̂‖·‖∇L‖, an upper bound on L(θ) when valid
    loss: float  # L(θ) on the same samples (eval mode)
    optimal_loss: float  # L*(ηY_ℓ)
    distance: float  # ‖ν − β̂(θ, η)‖
    grad_norm: float  # ‖∇L(θ)‖ over the parameters P of the Jacobian
    valid: bool  # vec(Y_ℓ) ∈ Col(J) by the membership test (the bound's hypothesis)
    assumption1_residual: float  # ‖Jν − vec(f_X)‖ / ‖vec(f_X)‖ (0 under Assumption 1)


def default_linear_params(model: nn.Module) -> list[str]:
    """S of Assumption 1: the EE model's W^(H) (and its bias if any); otherwise the last ``nn.Linear`` that
    ``model.modules()`` lists, weight and bias."""
    named = dict(model.named_parameters())
    if "head.out_weight" in named:
        return [k for k in ("head.out_weight", "head.out_bias") if k in named]
    last = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("no nn.Linear in the model: pass linear_params=[names of the last layer's parameters]")
    prefix = f"{last[-1]}." if last[-1] else ""
    return [k for k in (prefix + "weight", prefix + "bias") if k in named]


def nu_vector(fm: FunctionalModel, linear_params: list[str]) -> torch.Tensor:
    """ν(θ) (d,) float64: θ_k for k ∈ S, 0 elsewhere (S must be among the Jacobian's parameters)."""
    missing = [k for k in linear_params if k not in fm.names]
    if missing:
        raise ValueError(f"linear_params {missing} are not among the Jacobian's parameters {fm.names[:6]}…; the "
                         "certificate needs S ⊆ params")
    theta = fm.theta()
    parts = {k: (theta[k] if k in linear_params else torch.zeros_like(theta[k])) for k in fm.names}
    return fm.flatten(parts).to(torch.float64)


def loss_and_grad(fm: FunctionalModel, x: torch.Tensor, big_y: torch.Tensor, loss: str,
                  batch_size: int = 1024) -> tuple[float, torch.Tensor]:
    """(L(θ), ∇_P L(θ) (d,) float64) over all samples, eval mode, accumulated over chunks."""
    n = x.shape[0]
    total, grads = 0.0, torch.zeros(fm.d, dtype=torch.float64, device=fm.device)
    base = fm.state()
    with eval_mode(fm.model):
        for i in range(0, n, batch_size):
            p = {k: t.detach().clone().requires_grad_(True) for k, t in fm.theta().items()}
            out = fm._call({**base, **p}, x[i:i + batch_size]).to(torch.float64)
            part = loss_value(loss, out, big_y[i:i + batch_size]) * (out.shape[0] / n)
            g = torch.autograd.grad(part, [p[k] for k in fm.names])
            grads += torch.cat([t.reshape(-1).to(torch.float64) for t in g])
            total += float(part.detach())
    return total, grads


def loss_and_grad_norm(fm: FunctionalModel, x: torch.Tensor, big_y: torch.Tensor, loss: str,
                       batch_size: int = 1024) -> tuple[float, float]:
    value, grads = loss_and_grad(fm, x, big_y, loss, batch_size)
    return value, float(torch.linalg.vector_norm(grads))


def certify(nu_sq: float, cross: float, quad: float, loss: str, m_y: int, y_sq_norm_per_sample: float,
            loss_now: float, grad_norm: float, valid: bool, assumption1_residual: float) -> Certificate:
    """Minimise the bound over η (η = 1 for mse). ``cross`` = (Jν)ᵀM^†y, ``quad`` = yᵀM^†y."""

    def distance(eta: float) -> float:
        return math.sqrt(max(nu_sq - 2 * eta * cross + eta * eta * quad, 0.0))

    def bound(eta: float) -> float:
        return optimal_loss(loss, eta, m_y, y_sq_norm_per_sample) + distance(eta) * grad_norm

    if loss == "mse":
        eta = 1.0
    else:  # the bound is L*(η) (decreasing) + a convex term: one bounded 1-D minimisation, plus η = 0 checked
        eta = float(minimize_scalar(bound, bounds=(0.0, 60.0), method="bounded", options={"xatol": 1e-6}).x)
        eta = 0.0 if bound(0.0) < bound(eta) else eta
    return Certificate(eta, bound(eta), loss_now, optimal_loss(loss, eta, m_y, y_sq_norm_per_sample), distance(eta),
                       grad_norm, valid, assumption1_residual)
