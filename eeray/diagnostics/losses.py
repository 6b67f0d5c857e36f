"""Losses as the diagnostics see them: Y_ℓ (docs/paper-choices.md, Definitions), L(θ), L_ℓ (Assumption 5) and the
closed forms of L*(ηY_ℓ) (docs/paper-choices.md (D5)).

Conventions (one per loss name, used everywhere in :mod:`eeray.diagnostics`):
  * ``"bce"``: m_y = 1, labels 0/1, ℓ = BCE-with-logits, Y_ℓ = 2y − 1 (an (n, 1) matrix of ±1).
  * ``"ce"``:  m_y ≥ 2, integer class labels, ℓ = softmax cross-entropy, Y_ℓ = 2·onehot − 1.
  * ``"mse"``: ℓ(q, y) = ‖q − y‖² (summed over outputs, averaged over samples, so L_ℓ = 2); Y is one-hot for
    integer labels with m_y ≥ 2, the raw value for m_y = 1 or for float targets of shape (n, m_y); Y_ℓ = Y.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eeray.diagnostics.errors import DiagnosticsError, TargetEncodingError

LOSSES = ("bce", "ce", "mse")
LIPSCHITZ = {"bce": 0.25, "ce": 0.5, "mse": 2.0}  # L_ℓ of Assumption 5 (docs/paper-choices.md (D4))


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise DiagnosticsError("loss", loss, f"must be one of {LOSSES}")
    return loss


def targets(y: torch.Tensor, loss: str, m_y: int) -> torch.Tensor:
    """The target matrix Y (n, m_y) in float64 that the loss compares the outputs with.

    Args:
      y: labels (n,) int64 (all losses), or float targets (n,) / (n, m_y) for "mse".
      loss: "bce" | "ce" | "mse".
      m_y: the model's number of outputs.
    Returns:
      Y, (n, m_y) float64: 0/1 for bce, one-hot for ce (and mse with labels), raw values otherwise.
    """
    check_loss(loss)
    if y.dim() == 0:
        raise TargetEncodingError("y.shape", tuple(y.shape), "labels need a sample dimension: (n,) or (n, m_y)")
    integer = not (y.dtype.is_floating_point or y.dtype.is_complex)
    if loss in ("bce", "ce") or (integer and m_y >= 2):
        return _from_labels(y, loss, m_y, integer)
    values = y.to(torch.float64)
    values = values[:, None] if values.dim() == 1 else values
    if values.dim() != 2 or values.shape[1] != m_y:
        raise TargetEncodingError("y.shape", tuple(y.shape), f"mse targets must be (n,) or (n, {m_y}) for m_y = {m_y}")
    return values


def _from_labels(y: torch.Tensor, loss: str, m_y: int, integer: bool) -> torch.Tensor:
    if not integer:
        raise TargetEncodingError("y.dtype", y.dtype, f"loss '{loss}' needs integer class labels (int64, shape (n,))")
    labels = y.reshape(-1) if (y.dim() == 2 and y.shape[1] == 1) else y
    if labels.dim() != 1:
        raise TargetEncodingError("y.shape", tuple(y.shape), f"loss '{loss}' needs labels of shape (n,)")
    if loss == "bce":
        if m_y != 1:
            raise TargetEncodingError("m_y", m_y, "loss 'bce' needs a model with one output (m_y = 1); use 'ce' "
                                      "for m_y >= 2")
        bad = labels[(labels != 0) & (labels != 1)]
        if bad.numel():
            raise TargetEncodingError("y", int(bad[0]), "loss 'bce' needs labels in {0, 1}")
        return labels.to(torch.float64)[:, None]
    if m_y < 2:
        raise TargetEncodingError("m_y", m_y, f"loss '{loss}' with class labels needs m_y >= 2 outputs; use 'bce' "
                                  "for binary tasks with one output")
    bad = labels[(labels < 0) | (labels >= m_y)]
    if bad.numel():
        raise TargetEncodingError("y", int(bad[0]), f"class labels must lie in [0, {m_y - 1}] for m_y = {m_y}")
    return F.one_hot(labels.long(), m_y).to(torch.float64)


def modified_targets(y: torch.Tensor, loss: str, m_y: int) -> torch.Tensor:
    """Y_ℓ (n, m_y) float64: 2Y − 1 for "bce"/"ce" (entries ±1), Y for "mse" (docs/paper-choices.md, Definitions)."""
    big_y = targets(y, loss, m_y)
    return big_y if loss == "mse" else 2.0 * big_y - 1.0


def loss_value(out: torch.Tensor, big_y: torch.Tensor, loss: str) -> torch.Tensor:
    """L = (1/n) Σ_i ℓ(f(x_i), y_i) with the conventions above; ``out`` (n, m_y), ``big_y`` from :func:`targets`."""
    check_loss(loss)
    big_y = big_y.to(out.dtype)
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, big_y, reduction="mean")
    if loss == "ce":
        return F.cross_entropy(out, big_y.argmax(1), reduction="mean")
    return ((out - big_y) ** 2).sum(1).mean()


def optimal_loss(eta: float, loss: str, m_y: int, y_sq_norm_per_sample: float = 0.0) -> float:
    """L*(ηY_ℓ) in closed form (docs/paper-choices.md (D5)); ``y_sq_norm_per_sample`` = ‖Y‖_F²/n, used by "mse" only."""
    check_loss(loss)
    if loss == "mse":
        return (eta - 1.0) ** 2 * y_sq_norm_per_sample
    if loss == "bce":
        return math.log1p(math.exp(-eta))
    return math.log1p((m_y - 1) * math.exp(-2.0 * eta))
