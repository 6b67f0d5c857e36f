"""The n × n Gram (ZZᵀ)∘(S Sᵀ) = φφᵀ (docs/paper-choices.md (D2)) and its full-rank certificate, without forming φ
(n × m_H·m_{H−1}).

* Formation: the lower triangle only, in row blocks, into one preallocated n × n float64 matrix; the row sums
  of |Gram| (for ‖Gram‖₁) are accumulated on the way, so the peak is one n×n matrix + O(block·n).
* Certificate: Cholesky of Gram − δI with δ = n·eps·‖Gram‖₁, **in place**: ``cholesky_ex`` on the
  column-major view (``Gram.mT``, upper=True) overwrites the storage with the factor (measured: no extra n×n
  copy; the row-major call copies). Success ⟹ λ_min(Gram) > 0 beyond round-off, i.e. rank φ = n.
* Second method (the paper's "verified twice"): ``eigvalsh`` rank #{λ > λ_max·n·eps} when a second n×n fits
  the budget, else LAPACK pivoted Cholesky (``dpstrf``, in place, CPU) with its default tolerance
  n·eps·max diag. The Gram is formed again for it (the first one now holds the factor).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from eeray.diagnostics.errors import DiagnosticsError, MemoryBudgetError

EPS64 = float(torch.finfo(torch.float64).eps)
F64 = 8
SECOND_METHODS = ("auto", "eigvalsh", "pivoted_cholesky", "none")


@dataclass
class GramRankReport:
    n: int
    certified: bool  # shifted in-place Cholesky succeeded: the Gram is positive definite (rank n)
    shift: float  # δ = n·eps·‖Gram‖₁
    failed_pivot: int  # 1-based order of the first non-positive leading minor; 0 when certified
    second_method: str  # eigvalsh | pivoted_cholesky | none
    second_rank: int  # -1 when not computed
    lambda_min: float  # eigvalsh only (NaN otherwise)
    lambda_max: float
    agree: bool | None  # certified == (second_rank == n); None without a second method
    seconds_gram: float
    seconds_cholesky: float
    seconds_second: float
    peak_bytes_estimate: int
    note: str = ""


def gram_rows_block(n: int, budget: int, fixed: int) -> int:
    """Rows per formation block: the two (block × n) temporaries take what the budget leaves (≤ 4096 rows)."""
    return int(max(1, min(n, 4096, (budget - fixed) // (2 * n * F64))))


def form_hadamard_gram(z: torch.Tensor, s: torch.Tensor, out: torch.Tensor, block: int) -> torch.Tensor:
    """Fill the lower triangle of ``out`` (n, n) with (Z Zᵀ)∘(S Sᵀ); return the row sums of |Gram| (n,).

    Args: z (n, m_{H−1}) and s (n, m_H) float64 on the same device as ``out``.
    """
    n = z.shape[0]
    abs_rows = torch.zeros(n, dtype=torch.float64, device=z.device)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        view = out[r0:r1, :r1]  # (b, r1) strided view: the block row up to and including the diagonal block
        view.addmm_(z[r0:r1], z[:r1].T, beta=0.0)  # Z_r Zᵀ written in place
        view.mul_(s[r0:r1] @ s[:r1].T)  # ∘ S_r Sᵀ: one (b, r1) temporary
        part = view.abs()
        abs_rows[r0:r1] += part.sum(1)  # |G_ij| for j < r1 (incl. the whole diagonal block)
        abs_rows[:r0] += part[:, :r0].sum(0)  # the same entries as G_ji (j < r0) by symmetry
    return abs_rows


def shifted_cholesky_in_place(gram: torch.Tensor, norm1: float) -> tuple[bool, int, float]:
    """Cholesky of (Gram − δI) on the lower triangle, in place; (success, failed pivot, δ)."""
    n = gram.shape[0]
    delta = n * EPS64 * norm1
    gram.diagonal().sub_(delta)
    col_major = gram.mT  # same storage; its upper triangle is our lower one
    info = torch.empty((), dtype=torch.int32, device=gram.device)
    torch.linalg.cholesky_ex(col_major, upper=True, out=(col_major, info))
    failed = int(info)
    return failed == 0, failed, delta


def eig_rank(gram: torch.Tensor) -> tuple[int, float, float]:
    """(rank, λ_min, λ_max) from ``eigvalsh`` of the lower triangle; rank = #{λ > λ_max·n·eps}."""
    lam = torch.linalg.eigvalsh(gram, UPLO="L")
    lam_max = max(float(lam[-1]), 0.0)
    return int((lam > lam_max * gram.shape[0] * EPS64).sum()), float(lam[0]), lam_max


def pivoted_cholesky_rank(gram: torch.Tensor) -> int:
    """Rank from LAPACK dpstrf (pivoted Cholesky, default tol n·eps·max diag), in place on a CPU matrix."""
    from scipy.linalg import lapack

    a = gram.numpy().T  # Fortran-ordered view of the same storage; our lower triangle is its upper one
    _, _, rank, info = lapack.dpstrf(a, lower=0, overwrite_a=1)
    if info < 0:
        raise RuntimeError(f"dpstrf argument error {info}")
    return int(rank)


def minimum_bytes(n: int, m_hm1: int, m_H: int) -> int:
    """The least memory :func:`gram_certificate` runs in: the n×n float64 Gram (formed once, in place), Z (n ×
    m_(H−1)) and S (n × m_H) in float64, and one row of each formation block."""
    return (n * n + n * (m_hm1 + m_H) + 2 * n) * F64


def gram_certificate(z: torch.Tensor, s: torch.Tensor, *, memory_budget_bytes: int | None = None,
                     second_method: str = "auto", former=None) -> GramRankReport:
    """Is (Z Zᵀ)∘(S Sᵀ) (n × n) positive definite, i.e. rank φ = n? Two methods, both in float64.

    Args:
      z: (n, m_{H−1}) rows z_iᵀ (constant neuron included); s: (n, m_H) gate values (for Lemma 5, already
        scaled by w_j: S_j diag(w_j)).
      memory_budget_bytes: None = no limit. The Gram alone needs n²·8; eigvalsh needs about a second n².
      second_method: "auto" (eigvalsh if it fits, else pivoted Cholesky on CPU, else none) or one of them.
      former: ``former(z, s, out, block) -> |Gram| row sums`` filling the lower triangle of ``out``; default
        :func:`form_hadamard_gram` (the actor pool passes one that computes the blocks on actors).
    """
    if second_method not in SECOND_METHODS:
        raise DiagnosticsError("second_method", second_method, f"must be one of {SECOND_METHODS}")
    if z.shape[0] != s.shape[0]:
        raise DiagnosticsError("s.shape", tuple(s.shape), f"must have n = {z.shape[0]} rows like z")
    n = z.shape[0]
    z, s = z.to(torch.float64), s.to(torch.float64)
    fixed = n * n * F64 + (z.numel() + s.numel()) * F64
    unlimited = memory_budget_bytes is None
    budget = fixed + 2 * min(n, 4096) * n * F64 if unlimited else memory_budget_bytes
    need = minimum_bytes(n, z.shape[1], s.shape[1])  # fixed + one row of each block
    if budget < need:
        raise MemoryBudgetError(budget, need, f"the {n}×{n} float64 Gram (formed once, in place)")
    method = second_method
    if method == "auto":
        fits = unlimited or budget >= 2 * n * n * F64 + fixed
        method = "eigvalsh" if fits else ("pivoted_cholesky" if z.device.type == "cpu" else "none")
    block = gram_rows_block(n, budget, fixed)
    former = former or form_hadamard_gram
    gram = torch.empty(n, n, dtype=torch.float64, device=z.device)
    t0 = _now(z.device)
    abs_rows = former(z, s, gram, block)
    t1 = _now(z.device)
    ok, failed, delta = shifted_cholesky_in_place(gram, float(abs_rows.max()))
    t2 = _now(z.device)
    rank2, lam_min, lam_max, note = -1, math.nan, math.nan, ""
    if method != "none":
        former(z, s, gram, block)  # the first copy now holds the Cholesky factor
        if method == "eigvalsh":
            rank2, lam_min, lam_max = eig_rank(gram)
        else:
            rank2 = pivoted_cholesky_rank(gram if gram.device.type == "cpu" else gram.cpu())
    else:
        note = f"no second method: a second {n}×{n} float64 matrix does not fit memory_budget_bytes={budget}"
    t3 = _now(z.device)
    del gram
    peak = fixed + 2 * block * n * F64 + (n * n * F64 if method == "eigvalsh" else 0)
    agree = None if rank2 < 0 else (ok == (rank2 == n))
    return GramRankReport(n, ok, delta, failed, method, rank2, lam_min, lam_max, agree, t1 - t0, t2 - t1, t3 - t2,
                          int(peak), note)


def _now(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
