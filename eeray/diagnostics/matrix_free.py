"""Matrix-free diagnostics for when M (N × N) does not fit: everything from J·u (jvp) and Jᵀ·w (vjp).

We use scipy's maintained solvers on ``scipy.sparse.linalg.LinearOperator`` rather than hand-written Krylov
code: LSQR and LSMR for min_β ‖Jβ − v‖ (on J itself, so the conditioning is κ(J) = √κ(M)), ARPACK ``eigsh``
(implicitly restarted Lanczos) for extreme eigenvalues of M and ΔM. Only the Hutchinson estimator of
‖ΔM‖_F² is written here: it is three lines (E‖ΔM z‖² = ‖ΔM‖_F² for Rademacher z) and scipy has none.

Products take and return float64 numpy vectors; the network runs in its own dtype (so with a float32 model
the products carry ~1e-7 relative error, which bounds how small a Krylov residual can get).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh, lsmr, lsqr

from eeray.diagnostics.jacobian import FunctionalModel, eval_mode


@dataclass
class Products:
    """The two primitive products of a Jacobian J (N × d); local or distributed (see eeray.raytune.diagnostics_pool)."""
    N: int
    d: int
    jvp: Callable[[np.ndarray], np.ndarray]  # u (d,) -> J u (N,)
    vjp: Callable[[np.ndarray], np.ndarray]  # w (N,) -> Jᵀ w (d,)


def local_products(fm: FunctionalModel, x: torch.Tensor, m_y: int, batch_size: int = 1024) -> Products:
    """J·u and Jᵀ·w of ``fm`` over the samples ``x`` (eval mode, chunks of ``batch_size`` samples)."""

    def jv(u: np.ndarray) -> np.ndarray:
        with eval_mode(fm.model):
            return fm.jvp(x, torch.from_numpy(np.ascontiguousarray(u)), batch_size).cpu().numpy()

    def vj(w: np.ndarray) -> np.ndarray:
        with eval_mode(fm.model):
            return fm.vjp(x, torch.from_numpy(np.ascontiguousarray(w)), batch_size).cpu().numpy()

    return Products(x.shape[0] * m_y, fm.d, jv, vj)


def jacobian_operator(p: Products) -> LinearOperator:
    return LinearOperator((p.N, p.d), matvec=lambda u: p.jvp(np.ravel(u)), rmatvec=lambda w: p.vjp(np.ravel(w)),
                          dtype=np.float64)


def gram_operator(p: Products) -> LinearOperator:
    """M v = J(Jᵀv), symmetric positive semi-definite (N × N)."""
    return LinearOperator((p.N, p.N), matvec=lambda v: p.jvp(p.vjp(np.ravel(v))), rmatvec=None, dtype=np.float64)


def delta_gram_operator(p_t: Products, p_0: Products) -> LinearOperator:
    """(M_T − M_0) v for two snapshots over the same samples; symmetric, indefinite."""
    def mv(v):
        v = np.ravel(v)
        return p_t.jvp(p_t.vjp(v)) - p_0.jvp(p_0.vjp(v))
    return LinearOperator((p_t.N, p_t.N), matvec=mv, rmatvec=mv, dtype=np.float64)


@dataclass
class KrylovResult:
    residual: float  # ρ = ‖v − Jβ‖²/‖v‖², an upper bound on the exact ρ (Krylov residuals only decrease to it)
    iterations: int
    converged: bool  # stopped by a tolerance, not by the iteration cap
    stop_reason: int  # scipy's istop
    solution: np.ndarray  # β (d,), the minimum-norm least-squares iterate (x0 = 0)


def krylov_residual(p: Products, v: np.ndarray, *, solver: str = "lsqr", tol: float = 1e-8,
                    atol: float = 1e-10, max_iter: int = 1000) -> KrylovResult:
    """min_β ‖Jβ − v‖ by LSQR or LSMR started at 0 (so β is the minimum-norm β̂, docs/paper-choices.md).

    Args:
      v: (N,) target vector. tol: the membership tolerance; the consistent-system stop is
        ‖r‖ ≤ 0.1·√tol·‖v‖, i.e. ρ ≤ tol/100, which already decides "aligned".
      atol: least-squares stop ‖Jᵀr‖ ≤ atol·‖J‖·‖r‖ (the residual has converged to the projection).
      max_iter: iteration cap (each iteration is one J·u and one Jᵀ·w).
    """
    op = jacobian_operator(p)
    btol = 0.1 * math.sqrt(tol)
    # conlim=0: no condition-number stop; a rank-deficient J has κ = ∞ and must still reach its projection
    if solver == "lsqr":
        x, istop, itn = lsqr(op, v, atol=atol, btol=btol, conlim=0, iter_lim=max_iter)[:3]
    elif solver == "lsmr":
        x, istop, itn = lsmr(op, v, atol=atol, btol=btol, conlim=0, maxiter=max_iter)[:3]
    else:
        raise ValueError(f"solver = {solver!r} is invalid: must be 'lsqr' or 'lsmr'")
    r = v - op.matvec(x)  # the true residual, not the recurrence's estimate
    rho = float(r @ r / (v @ v))
    return KrylovResult(rho, int(itn), istop in (0, 1, 2, 4, 5), int(istop), x)


def extreme_eigenvalues(op: LinearOperator, *, smallest: bool = True, tol: float = 1e-8, max_iter: int = 300,
                        smallest_tol: float = 1e-4, smallest_max_iter: int = 30,
                        seed: int = 0) -> tuple[float, float, bool]:
    """(λ_max, λ_min, converged) of a symmetric operator by ARPACK Lanczos.

    λ_max converges in a few dozen products. λ_min of a (near-)singular PSD M sits in a cluster of tiny
    eigenvalues and can take thousands of products (measured: ~5000 for N = 90), so it gets a looser
    tolerance and a restart cap (``smallest_max_iter`` restarts of ≤ 20 products each); when that is not
    enough the best Ritz value found is returned with ``converged`` = False (NaN if there is none).
    """
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    lam_max = float(eigsh(op, k=1, which="LA", tol=tol, maxiter=max_iter, v0=v0, return_eigenvectors=False)[0])
    if not smallest:
        return lam_max, math.nan, True
    try:
        lam_min = float(eigsh(op, k=1, which="SA", tol=smallest_tol, maxiter=smallest_max_iter, v0=v0,
                              return_eigenvectors=False)[0])
        return lam_max, lam_min, True
    except ArpackNoConvergence as err:
        vals = err.eigenvalues
        return lam_max, (float(vals[0]) if len(vals) else math.nan), False


def spectral_norm(op: LinearOperator, *, tol: float = 1e-6, max_iter: int = 300, seed: int = 0) -> float:
    """‖A‖₂ = max |λ| of a symmetric operator (Lanczos, largest magnitude)."""
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    return float(abs(eigsh(op, k=1, which="LM", tol=tol, maxiter=max_iter, v0=v0, return_eigenvectors=False)[0]))


def hutchinson_frobenius_sq(op: LinearOperator, *, probes: int = 16, seed: int = 0) -> tuple[float, float]:
    """(estimate, standard error) of ‖A‖_F² = E‖A z‖² with Rademacher z (unbiased; exact in expectation)."""
    rng = np.random.default_rng(seed)
    samples = np.array([float(np.sum(op.matvec(rng.choice([-1.0, 1.0], op.shape[0])) ** 2)) for _ in range(probes)])
    stderr = float(samples.std(ddof=1) / math.sqrt(probes)) if probes > 1 else math.nan
    return float(samples.mean()), stderr
