"""The alignment report (Definition 2, docs/paper-choices.md (D25–D27)): is vec(Y_ℓ) ∈ Col(J(θ))?

Dense: M = JJᵀ in float64 (chunked, :mod:`eeray.diagnostics.gram`), ``eigh``, rank r = #{λ_i > λ_max·N·eps64},
ρ = ‖(I − P)v‖²/‖v‖², aligned ⟺ ρ ≤ tol; second test: rank augmentation (:mod:`.spectral`).
Matrix-free: ρ from LSQR on J (an upper bound on the exact ρ), second test LSMR; λ_max/λ_min by Lanczos.
The method is chosen from (N, d, budget) when ``method="auto"`` and recorded. All products, decisions and
continuous quantities are logged so Q_T can be recomputed at any tolerance from the records alone.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from eeray.diagnostics.certificate import Certificate, certify, default_linear_params
from eeray.diagnostics.errors import DiagnosticsError, MemoryBudgetError
from eeray.diagnostics.gram import dense_bytes
from eeray.diagnostics.jacobian import check_inputs, vec_sample_major
from eeray.diagnostics.local import LocalBackend
from eeray.diagnostics.matrix_free import extreme_eigenvalues, gram_operator, krylov_residual
from eeray.diagnostics.spectral import KAPPAS, augmented_rank, decide, pinv_quadratic
from eeray.errors import is_integer
from eeray.losses import check_loss, modified_targets, targets

METHODS = ("auto", "dense", "matrix_free")
DEFAULT_BUDGET = 2 * 2**30


@dataclass(frozen=True)
class AlignmentOptions:
    """How an alignment report is computed: the one place for these defaults. :func:`alignment_report`,
    :class:`eeray.diagnostics.q_tracker.AlignmentTracker` and the actor pool take one of these (or keyword
    changes to the defaults, e.g. ``method="dense"``); a trial builds its own from ``DiagConfig``
    (:func:`eeray.trial_diagnostics.alignment_options`). Invalid values fail here, before any work."""
    tol: float = 1e-8  # aligned ⟺ ρ ≤ tol
    memory_budget_bytes: int = DEFAULT_BUDGET  # for M, its eigendecomposition and the Jacobian chunks
    method: str = "auto"  # auto (dense when 7·N²·8 bytes and the chunking fit the budget) | dense | matrix_free
    certificate: bool = False  # also the Theorem-3 certificate (docs/paper-choices.md, D6)
    linear_params: tuple[str, ...] | None = None  # S of the certificate (None: default_linear_params(model))
    batch_size: int = 256  # samples per batched forward / jvp / vjp in-process (an actor pool has its own)
    krylov_max_iter: int = 1000  # LSQR/LSMR iteration cap (matrix-free)
    # matrix-free only: Lanczos estimate of λ_min (up to ~600 extra M·v products; off: λ_min is NaN). Dense mode
    # always has the exact λ_min.
    estimate_lambda_min: bool = False
    seed: int = 0  # the NTK check's probe, Lanczos and Hutchinson starts
    delta_m: bool = True  # tracker only: ‖M_T − M_0‖_F² and ‖·‖₂² against the first evaluated snapshot
    hutchinson_probes: int = 16  # tracker only, matrix-free ΔM

    def __post_init__(self):
        if self.method not in METHODS:
            raise DiagnosticsError("method", self.method, f"must be one of {METHODS}")
        if not (self.tol > 0):
            raise DiagnosticsError("tol", self.tol, "must be > 0 (e.g. 1e-8)")
        for name in ("batch_size", "krylov_max_iter", "hutchinson_probes"):  # a too small budget: MemoryBudgetError
            value = getattr(self, name)
            if not (is_integer(value) and value >= 1):
                raise DiagnosticsError(name, value, "must be an integer >= 1")
        if self.linear_params is not None:  # a list from the caller; a tuple keeps the options hashable
            object.__setattr__(self, "linear_params", tuple(self.linear_params))

    def replace(self, **changes: Any) -> "AlignmentOptions":
        """A copy with ``changes``; a name that is not an option is an error listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(self)]
        for name, value in changes.items():
            if name not in valid:
                raise DiagnosticsError(name, value, f"is not an alignment option; valid: {', '.join(valid)}")
        return dataclasses.replace(self, **changes) if changes else self


def resolve_options(options: AlignmentOptions | None, changes: dict[str, Any]) -> AlignmentOptions:
    """``options`` (default: the defaults) with keyword ``changes`` applied."""
    return (options or AlignmentOptions()).replace(**changes)


@dataclass
class AlignmentReport:
    """One alignment evaluation. ``to_record()`` flattens it to one row (Parquet/MLflow friendly)."""
    method: str  # dense | matrix_free
    loss: str
    n: int
    m_y: int
    gram_size: int  # N = n·m_y, the size of M (not "N": a column beside "n" to case-blind readers)
    d: int  # number of parameters in the Jacobian
    tol: float  # membership tolerance: aligned ⟺ residual ≤ tol
    residual: float  # ρ = ‖(I − P)vec(Y_ℓ)‖² / ‖vec(Y_ℓ)‖²
    aligned: bool
    rank: int  # numerical rank of M (dense); -1 in matrix-free mode (not computed)
    rank_threshold: float  # λ_max·N·eps64 (dense); NaN in matrix-free mode
    lambda_min: float
    lambda_max: float
    energy: dict[float, float]  # e(κ) for κ in KAPPAS (dense; NaN in matrix-free mode)
    second_test: str  # rank_augmentation | lsmr
    second_value: float  # augmented rank (dense) or LSMR residual (matrix-free)
    second_aligned: bool
    disagree: bool  # the two membership tests disagree
    krylov_iterations: int = 0
    krylov_converged: bool = True
    lambda_min_converged: bool = True  # False: λ_min is a non-converged Lanczos value or NaN (not estimated)
    seconds_gram: float = 0.0  # building M (dense) / nothing (matrix-free)
    seconds_decision: float = 0.0  # eigh + projections, or the Krylov solve
    seconds_second_test: float = 0.0
    seconds_total: float = 0.0
    ntk_check: float = math.nan  # dense: ‖M z − J(Jᵀz)‖/‖M z‖ for one Rademacher z (M vs NTK-vector products)
    memory_budget_bytes: int = 0
    certificate: Certificate | None = None
    step: int | None = None
    extra: dict[str, float] = field(default_factory=dict)  # e.g. ΔM norms, Q_T (set by AlignmentTracker)

    def to_record(self) -> dict:
        rec = {k: v for k, v in asdict(self).items() if k not in ("energy", "certificate", "extra")}
        for kappa in KAPPAS:
            rec[f"energy_{kappa:.0e}"] = self.energy.get(kappa, math.nan)
        cert = asdict(self.certificate) if self.certificate is not None else {}
        for k in Certificate.__dataclass_fields__:
            rec[f"cert_{k}"] = cert.get(k, math.nan)
        rec.update(self.extra)
        return rec


def alignment_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                     options: AlignmentOptions | None = None, *, params: Sequence[str] | None = None,
                     **changes: Any) -> AlignmentReport:
    """Alignment report of ``model`` at its current parameters on (x, y).

    Args:
      model: an EE model or any ``nn.Module`` (B, ...) -> (B, m_y); evaluated in eval mode (restored after).
      x: (n, ...) inputs on the model's device. y: (n,) int64 labels (or float targets for "mse").
      loss: "bce" | "ce" | "mse" (see :mod:`eeray.losses` for Y_ℓ).
      options: :class:`AlignmentOptions` (default: its defaults); ``changes`` (e.g. ``method="dense"``) replace
        fields of it.
      params: parameter names of the Jacobian (default: all trainable parameters).
    Returns:
      :class:`AlignmentReport`.
    """
    opts = resolve_options(options, changes)
    check_inputs(x, y)
    backend = LocalBackend(model, x, params, opts.batch_size)
    return report_from_backend(backend, y, loss, opts)[0]


def report_from_backend(backend, y: torch.Tensor, loss: str, options: AlignmentOptions, *,
                        keep_gram: bool = False) -> tuple[AlignmentReport, torch.Tensor | None]:
    """The report for any backend (local or the actor pool); also returns M when ``keep_gram`` (dense)."""
    check_loss(loss)
    tol, memory_budget_bytes, method, certificate = (options.tol, options.memory_budget_bytes, options.method,
                                                     options.certificate)
    t0 = _now(backend.device)
    out = backend.outputs()  # (n, m_y); raises on NaN/inf
    n, m_y = out.shape
    y_l = modified_targets(loss, y.cpu(), m_y).to(backend.device)  # (n, m_y) float64
    v = vec_sample_major(y_l)  # (N,)
    chosen = _choose(backend, m_y, memory_budget_bytes, method)
    nu = backend.nu(list(options.linear_params or default_linear_params(backend.model))) if certificate else None
    j_nu = backend.jvp_vector(nu, m_y) if nu is not None else None  # (N,) Jν
    common = dict(loss=loss, n=n, m_y=m_y, gram_size=n * m_y, d=backend.d, tol=tol,
                  memory_budget_bytes=memory_budget_bytes)
    if chosen == "dense":
        rep, gram, quad = _dense(backend, v, m_y, memory_budget_bytes, j_nu, common, keep_gram, options.seed)
    else:
        rep, quad = _matrix_free(backend, v, m_y, memory_budget_bytes, nu, common, options.krylov_max_iter,
                                 options.seed, options.estimate_lambda_min)
        gram = None
    if certificate:
        big_y = targets(loss, y.cpu(), m_y).to(backend.device)
        loss_now, grad_norm = backend.loss_and_grad_norm(big_y, loss)
        f = vec_sample_major(out.to(torch.float64))
        a1 = float(torch.linalg.vector_norm(j_nu - f) / torch.linalg.vector_norm(f).clamp_min(1e-300))
        rep.certificate = certify(float(nu @ nu), quad[0], quad[1], loss, m_y, float((big_y ** 2).sum()) / n,
                                  loss_now, grad_norm, rep.aligned, a1)
    rep.seconds_total = _now(backend.device) - t0
    return rep, gram


def _choose(backend, m_y: int, budget: int, method: str) -> str:
    """"dense" when building M and its eigendecomposition fit the budget (method "auto" or "dense"), else
    "matrix_free"; a budget that fits neither raises with the smaller of the two needed budgets."""
    N = backend.n * m_y
    if method == "matrix_free":
        backend.matrix_free_batch(m_y, budget)  # raises with the needed budget
        return "matrix_free"
    try:
        build_need, build_ok = backend.gram_bytes(m_y, budget), True
    except MemoryBudgetError as err:
        build_need, build_ok = err.needed_bytes, False
    if build_ok and budget >= dense_bytes(N):
        return "dense"
    dense_err = MemoryBudgetError(budget, max(dense_bytes(N), build_need),
                                  f"the dense report (building M, {N}×{N} float64, and its eigendecomposition)")
    if method == "dense":
        raise dense_err
    try:
        backend.matrix_free_batch(m_y, budget)
    except MemoryBudgetError as err_mf:
        raise MemoryBudgetError(budget, min(dense_err.needed_bytes, err_mf.needed_bytes),
                                "the alignment report (dense or matrix-free)") from err_mf
    return "matrix_free"


def _dense(backend, v, m_y, budget, j_nu, common, keep_gram, seed):
    t0 = _now(backend.device)
    gram = backend.gram(m_y, budget)  # (N, N) float64
    t1 = _now(backend.device)
    # one jvp + one vjp (two vectors, one batch of activations: negligible next to M), so no budget check
    check = ntk_check(gram, backend.products(m_y, None), seed)
    dec = decide(gram, v, j_nu)
    t2 = _now(backend.device)
    rank_aug = augmented_rank(gram, v, dec)
    t3 = _now(backend.device)
    aligned = dec.residual <= common["tol"]
    second = rank_aug == dec.rank
    rep = AlignmentReport(method="dense", residual=dec.residual, aligned=aligned, rank=dec.rank,
                          rank_threshold=dec.threshold, lambda_min=dec.lambda_min, lambda_max=dec.lambda_max,
                          energy=dec.energy, second_test="rank_augmentation", second_value=float(rank_aug),
                          second_aligned=second, disagree=aligned != second, seconds_gram=t1 - t0,
                          seconds_decision=t2 - t1, seconds_second_test=t3 - t2, ntk_check=check, **common)
    quad = pinv_quadratic(dec) if j_nu is not None else (math.nan, math.nan)
    return rep, (gram if keep_gram else None), quad


def _matrix_free(backend, v, m_y, budget, nu, common, max_iter, seed, smallest):
    products = backend.products(m_y, budget)
    v_np = v.cpu().numpy()
    t1 = _now(backend.device)
    first = krylov_residual(products, v_np, solver="lsqr", tol=common["tol"], max_iter=max_iter)
    t2 = _now(backend.device)
    second = krylov_residual(products, v_np, solver="lsmr", tol=common["tol"], max_iter=max_iter)
    lam_max, lam_min, lam_ok = extreme_eigenvalues(gram_operator(products), smallest=smallest, seed=seed)
    t3 = _now(backend.device)
    aligned, second_aligned = first.residual <= common["tol"], second.residual <= common["tol"]
    rep = AlignmentReport(method="matrix_free", residual=first.residual, aligned=aligned, rank=-1,
                          rank_threshold=math.nan, lambda_min=lam_min, lambda_max=lam_max,
                          energy={k: math.nan for k in KAPPAS}, second_test="lsmr", second_value=second.residual,
                          second_aligned=second_aligned, disagree=aligned != second_aligned,
                          krylov_iterations=first.iterations, krylov_converged=first.converged,
                          lambda_min_converged=lam_ok and smallest, seconds_decision=t2 - t1,
                          seconds_second_test=t3 - t2, **common)
    quad = (math.nan, math.nan)
    if nu is not None:  # β = J^†v from LSQR (x0 = 0: minimum norm): νᵀβ and ‖β‖² play (Jν)ᵀM^†y and yᵀM^†y
        beta = first.solution
        quad = (float(nu.cpu().numpy() @ beta), float(beta @ beta))
    return rep, quad


def ntk_check(gram: torch.Tensor, products, seed: int = 0) -> float:
    """Relative difference between the built M and the NTK-vector product J(Jᵀz), z Rademacher (seeded)."""
    z = np.random.default_rng(seed).choice([-1.0, 1.0], gram.shape[0])
    dense = (gram @ torch.from_numpy(z).to(gram.device)).cpu().numpy()
    free = products.jvp(products.vjp(z))
    return float(np.linalg.norm(dense - free) / max(np.linalg.norm(dense), 1e-300))


def _now(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
