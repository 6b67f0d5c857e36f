"""The losses ℓ, on the pre-activation output f (paper §2.1: the output nonlinearity belongs to ℓ), for training
and for the diagnostics alike. Every function takes the loss name first.

One convention per name (``eeray.config.LOSSES``):
  * ``"bce"``: m_y = 1, labels {0, 1}, ℓ = BCE-with-logits (docs/paper-choices.md (B15)); Y = y as an (n, 1)
    matrix, Y_ℓ = 2Y − 1 (entries ±1).
  * ``"ce"``: m_y ≥ 2, integer class labels, ℓ = softmax cross-entropy; Y = one-hot, Y_ℓ = 2Y − 1.
  * ``"mse"``: ℓ(q, y) = ‖q − y‖² (summed over outputs, averaged over samples, so L_ℓ = 2); Y is one-hot for
    integer labels with m_y ≥ 2, the raw value for m_y = 1 or for float targets of shape (n, m_y); Y_ℓ = Y.

Also here: L_ℓ, the Lipschitz constant of ∇ℓ in the output (Assumption 5), and L*(ηY_ℓ) in closed form.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eeray.config import LOSSES
from eeray.errors import FieldError

# L_ℓ of Assumption 5 (docs/paper-choices.md (D4)): α = 1/L̂ for the exploitation phase's GD
LIPSCHITZ = {"bce": 0.25, "ce": 0.5, "mse": 2.0}


class LossError(FieldError):
    """A loss name, or labels that do not fit the loss: ``field`` was ``value``; ``valid`` says what would work."""


class TargetEncodingError(LossError):
    """The labels / targets do not fit the loss (e.g. label 3 for 'bce', or an (n, 2) Y for m_y = 1)."""


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise LossError("loss", loss, f"must be one of {LOSSES}")
    return loss


def resolve_loss(loss: str, m_y: int) -> str:
    """'auto' -> 'bce' for m_y = 1, 'ce' otherwise; any other name must be one of LOSSES."""
    if loss == "auto":
        return "bce" if m_y == 1 else "ce"
    if loss not in LOSSES:
        raise LossError("loss", loss, f"must be 'auto' or one of {LOSSES}")
    return loss


def targets(loss: str, y: torch.Tensor, m_y: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The target matrix Y (n, m_y) that the loss compares the outputs with, after checking that ``y`` fits.

    Args:
      loss: "bce" | "ce" | "mse".
      y: labels (n,) int64 (all losses), or float targets (n,) / (n, m_y) for "mse".
      m_y: the model's number of outputs.
    Returns:
      Y, (n, m_y) in ``dtype``: 0/1 for bce, one-hot for ce (and mse with labels), raw values otherwise.
    The check reads the labels on the host: call this once per data set, not per training batch.
    """
    check_targets(loss, y, m_y)
    return _encode(loss, y, m_y, dtype)


def modified_targets(loss: str, y: torch.Tensor, m_y: int) -> torch.Tensor:
    """Y_ℓ (n, m_y) float64: 2Y − 1 for "bce"/"ce" (entries ±1), Y for "mse" (paper §2.1)."""
    big_y = targets(loss, y, m_y)
    return big_y if loss == "mse" else 2.0 * big_y - 1.0


def check_targets(loss: str, y: torch.Tensor, m_y: int) -> None:
    """Raise :class:`TargetEncodingError` (naming the field, the value and what fits) unless ``y`` fits the loss."""
    check_loss(loss)
    if y.dim() == 0:
        raise TargetEncodingError("y.shape", tuple(y.shape), "labels need a sample dimension: (n,) or (n, m_y)")
    if not _labels(loss, y, m_y):
        width = 1 if y.dim() == 1 else y.shape[-1]
        if y.dim() > 2 or width != m_y:
            raise TargetEncodingError("y.shape", tuple(y.shape),
                                      f"mse targets must be (n,) or (n, {m_y}) for m_y = {m_y}")
        return
    if y.dtype.is_floating_point or y.dtype.is_complex:
        raise TargetEncodingError("y.dtype", y.dtype, f"loss '{loss}' needs integer class labels (int64, shape (n,))")
    labels = _flat_labels(y)
    if labels.dim() != 1:
        raise TargetEncodingError("y.shape", tuple(y.shape), f"loss '{loss}' needs labels of shape (n,)")
    if loss == "bce":
        if m_y != 1:
            raise TargetEncodingError("m_y", m_y, "loss 'bce' needs a model with one output (m_y = 1); use 'ce' "
                                      "for m_y >= 2")
        bad = labels[(labels != 0) & (labels != 1)]
        if bad.numel():
            raise TargetEncodingError("y", int(bad[0]), "loss 'bce' needs labels in {0, 1}")
        return
    if m_y < 2:
        raise TargetEncodingError("m_y", m_y, f"loss '{loss}' with class labels needs m_y >= 2 outputs; use 'bce' "
                                  "for binary tasks with one output")
    bad = labels[(labels < 0) | (labels >= m_y)]
    if bad.numel():
        raise TargetEncodingError("y", int(bad[0]), f"class labels must lie in [0, {m_y - 1}] for m_y = {m_y}")


def per_sample_loss(loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, m_y) outputs, (B,) labels -> (B,) losses. The training path: no label check (the data set's labels
    are checked when it is loaded; a check here would sync the device every step and break CUDA-graph capture)."""
    if loss == "ce":
        return _per_sample("ce", out, y)
    return _per_sample(loss, out, _encode(loss, y, out.shape[1], out.dtype))


def mean_loss(loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return per_sample_loss(loss, out, y).mean()


def loss_value(loss: str, out: torch.Tensor, big_y: torch.Tensor) -> torch.Tensor:
    """L = (1/n) Σ_i ℓ(f(x_i), y_i): ``out`` (n, m_y), ``big_y`` the (n, m_y) matrix from :func:`targets`."""
    check_loss(loss)
    t = big_y.argmax(1) if loss == "ce" else big_y.to(out.dtype)
    return _per_sample(loss, out, t).mean()


def predictions(loss: str, out: torch.Tensor) -> torch.Tensor:
    """(B, m_y) -> (B,) predicted labels (0-1 error = predictions != labels)."""
    if out.shape[1] == 1:
        threshold = 0.0 if loss == "bce" else 0.5  # logit 0 <=> p = 1/2; mse regresses on {0, 1}
        return (out[:, 0] > threshold).long()
    return out.argmax(1)


def optimal_loss(loss: str, eta: float, m_y: int, y_sq_norm_per_sample: float = 0.0) -> float:
    """L*(ηY_ℓ) in closed form (docs/paper-choices.md, D5); ``y_sq_norm_per_sample`` = ‖Y‖_F²/n, "mse" only."""
    check_loss(loss)
    if loss == "mse":
        return (eta - 1.0) ** 2 * y_sq_norm_per_sample
    if loss == "bce":
        return math.log1p(math.exp(-eta))
    return math.log1p((m_y - 1) * math.exp(-2.0 * eta))


def _per_sample(loss: str, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ℓ per sample (B,): ``t`` is the class labels (B,) for "ce", the matrix Y (B, m_y) otherwise."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(out, t, reduction="none").sum(1)
    if loss == "ce":
        return F.cross_entropy(out, t, reduction="none")
    return ((out - t) ** 2).sum(1)


def _labels(loss: str, y: torch.Tensor, m_y: int) -> bool:
    """Is ``y`` read as class labels (one-hot / 0-1 encoded), rather than as raw mse targets?"""
    return loss in ("bce", "ce") or (not (y.dtype.is_floating_point or y.dtype.is_complex) and m_y >= 2)


def _flat_labels(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(-1) if (y.dim() == 2 and y.shape[1] == 1) else y  # (n, 1) labels -> (n,)


def _encode(loss: str, y: torch.Tensor, m_y: int, dtype: torch.dtype) -> torch.Tensor:
    """Y (n, m_y) from ``y`` without checks (no host sync)."""
    if not _labels(loss, y, m_y):
        values = y.to(dtype)
        return values[:, None] if values.dim() == 1 else values
    labels = _flat_labels(y)
    if loss == "bce":
        return labels.to(dtype)[:, None]  # (n, 1)
    return F.one_hot(labels.long(), m_y).to(dtype)  # (n, m_y)
