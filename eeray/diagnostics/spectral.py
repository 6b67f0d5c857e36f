"""Decisions from a dense float64 M: eigendecomposition, numerical rank, residual ρ, the spectral energy
profile e(κ), the rank-augmentation test (docs/paper-choices.md (D25–D27)). Shared by the local report and the pool
(which builds M on actors and decides on the driver)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

EPS64 = float(torch.finfo(torch.float64).eps)
KAPPAS = (1e-4, 1e-6, 1e-8, 1e-10, 1e-12)


@dataclass
class SpectralDecision:
    rank: int  # #{λ_i > λ_max·N·eps64} (numpy's hermitian matrix_rank default)
    threshold: float  # λ_max·N·eps64, the absolute eigenvalue cut used for the rank
    lambda_min: float
    lambda_max: float
    residual: float  # ρ = ‖(I − P)v‖²/‖v‖², P the projection on the eigenvectors above the threshold
    energy: dict[float, float]  # e(κ) = Σ_{λ_i/λ_max < κ} (u_iᵀv)²/‖v‖²
    coeffs: torch.Tensor  # Uᵀv (N,), for the certificate
    coeffs_other: torch.Tensor | None  # Uᵀw for an optional second vector w (the certificate's Jν)
    eigenvalues: torch.Tensor  # (N,) ascending, float64


def decide(gram: torch.Tensor, v: torch.Tensor, other: torch.Tensor | None = None) -> SpectralDecision:
    """Eigendecompose ``gram`` (N × N, float64, symmetric; not modified) and project ``v`` (N,) onto it.

    The eigenvectors are freed before returning: only Uᵀv (and Uᵀ·other) are kept.
    """
    n_rows = gram.shape[0]
    lam, vecs = torch.linalg.eigh(gram)  # ascending; (N,), (N, N)
    coeffs = vecs.T @ v  # (N,)
    coeffs_other = vecs.T @ other if other is not None else None
    del vecs
    lam_max = max(float(lam[-1]), 0.0)
    threshold = lam_max * n_rows * EPS64
    norm_sq = float(v @ v)
    outside = lam <= threshold
    residual = float((coeffs[outside] ** 2).sum()) / norm_sq
    energy = {}
    for kappa in KAPPAS:
        below = lam < kappa * lam_max if lam_max > 0 else torch.ones_like(outside)
        energy[kappa] = float((coeffs[below] ** 2).sum()) / norm_sq
    return SpectralDecision(int((~outside).sum()), threshold, float(lam[0]), lam_max, residual, energy, coeffs,
                            coeffs_other, lam)


def augmented_rank(gram: torch.Tensor, v: torch.Tensor, decision: SpectralDecision) -> int:
    """rank(M + (λ_max/‖v‖²) v vᵀ) with rank(M)'s absolute threshold (docs/paper-choices.md (D25): second test).
    By eigenvalue interlacing it is rank(M) or rank(M) + 1; +1 means v has a component outside Col(M) that
    is at least the threshold's order. Peak memory: one extra N × N copy (plus LAPACK's own)."""
    scale = decision.lambda_max / float(v @ v) if decision.lambda_max > 0 else 1.0
    aug = gram.clone()
    aug.addr_(v, v, alpha=scale)  # (N, N) in place: M + s v vᵀ
    mu = torch.linalg.eigvalsh(aug)
    del aug
    return int((mu > decision.threshold).sum())


def pinv_quadratic(decision: SpectralDecision) -> tuple[float, float]:
    """(wᵀM^†v, vᵀM^†v) on the numerical range (eigenvalues above the threshold), for the certificate."""
    keep = decision.eigenvalues > decision.threshold
    lam = decision.eigenvalues[keep]
    c = decision.coeffs[keep]
    cross = float((decision.coeffs_other[keep] * c / lam).sum()) if decision.coeffs_other is not None else float("nan")
    return cross, float((c * c / lam).sum())
