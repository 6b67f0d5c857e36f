"""Losses ℓ on the pre-activation output f (paper §2.1): the output nonlinearity belongs to ℓ.

``bce``: binary tasks with m_y = 1 and labels {0, 1} (BCE-with-logits; docs/paper-choices.md (B15)). ``ce``: softmax
cross-entropy on m_y ≥ 2 logits. ``mse``: Σ_j (f_j − y_j)² per sample, one-hot targets for classes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "ce", "mse")
# L_ℓ: Lipschitz constant of ∇ℓ in the output (docs/paper-choices.md (D4)), for α = 1/L̂
LOSS_SMOOTHNESS = {"bce": 0.25, "ce": 0.5, "mse": 2.0}


def resolve_loss(name: str, m_y: int) -> str:
    """'auto' -> 'bce' for m_y = 1, 'ce' otherwise."""
    if name == "auto":
        return "bce" if m_y == 1 else "ce"
    if name not in LOSSES:
        raise ValueError(f"loss = {name!r} is invalid: must be 'auto' or one of {LOSSES}")
    return name


def targets(name: str, y: torch.Tensor, m_y: int) -> torch.Tensor:
    """Labels (B,) int64 -> the tensor ℓ compares f with."""
    if name == "ce":
        return y
    if m_y == 1:
        return y.to(torch.float32).unsqueeze(1)  # (B, 1)
    return F.one_hot(y, m_y).to(torch.float32)  # (B, m_y)


def per_sample_loss(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, m_y) outputs, (B,) labels -> (B,) losses."""
    t = targets(name, y, out.shape[1])
    if name == "bce":
        return F.binary_cross_entropy_with_logits(out, t, reduction="none").sum(1)
    if name == "ce":
        return F.cross_entropy(out, t, reduction="none")
    return ((out - t) ** 2).sum(1)


def mean_loss(name: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return per_sample_loss(name, out, y).mean()


def predictions(name: str, out: torch.Tensor) -> torch.Tensor:
    """(B, m_y) -> (B,) predicted labels (0-1 error = predictions != labels)."""
    if out.shape[1] == 1:
        threshold = 0.0 if name == "bce" else 0.5  # logit 0 <=> p = 1/2; mse regresses on {0, 1}
        return (out[:, 0] > threshold).long()
    return out.argmax(1)
