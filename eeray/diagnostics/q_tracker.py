"""Diagnostics over training: the evaluation schedule, Q_T (eq 7), ‖M(θ_T) − M(θ_0)‖ and the tracker that
joins them to :func:`eeray.diagnostics.alignment.alignment_report` for a training loop.

Q_T = Σ_{t ∈ schedule, t ≤ T} 1{vec(Y_ℓ) ∉ Col(J(θ^t))}: eq 7 counts t = 0..T inclusive; with a sparse
schedule it counts the evaluated steps (docs/paper-choices.md (D23–D24)), and the schedule is logged with it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from eeray.diagnostics.alignment import AlignmentOptions, AlignmentReport, report_from_backend, resolve_options
from eeray.diagnostics.errors import DiagnosticsError
from eeray.diagnostics.gram import F64
from eeray.diagnostics.jacobian import check_inputs
from eeray.diagnostics.local import LocalBackend
from eeray.diagnostics.matrix_free import delta_gram_operator, hutchinson_frobenius_sq, spectral_norm

UNITS = ("steps", "epochs", "log")


@dataclass(frozen=True)
class Schedule:
    steps: tuple[int, ...]  # sorted optimizer steps at which to evaluate (0 and the last step included)
    description: str  # logged next to Q_T, e.g. "every 1 epochs (10 steps/epoch) over 4000 steps"

    def __contains__(self, step: int) -> bool:
        return step in set(self.steps)


def evaluation_schedule(total_steps: int, *, unit: str = "steps", every: int = 1,
                        steps_per_epoch: int | None = None) -> Schedule:
    """Steps at which diagnostics run: every ``every`` steps, every ``every`` epochs, or ``every`` log-spaced
    points; always including step 0 and ``total_steps``."""
    if unit not in UNITS:
        raise DiagnosticsError("unit", unit, f"must be one of {UNITS}")
    if not (isinstance(every, int) and every >= 1):
        raise DiagnosticsError("every", every, "must be an integer >= 1")
    if total_steps < 0:
        raise DiagnosticsError("total_steps", total_steps, "must be >= 0")
    if unit == "epochs" and not steps_per_epoch:
        raise DiagnosticsError("steps_per_epoch", steps_per_epoch, "unit 'epochs' needs steps_per_epoch >= 1")
    if unit == "log":
        points = np.geomspace(1, max(total_steps, 1), num=every) if total_steps > 0 else np.array([])
        steps = {0, total_steps} | {int(round(p)) for p in points}
        desc = f"{every} log-spaced points over {total_steps} steps"
    else:
        stride = every * (steps_per_epoch if unit == "epochs" else 1)
        steps = set(range(0, total_steps + 1, stride)) | {total_steps}
        desc = f"every {every} {unit}" + (f" ({steps_per_epoch} steps/epoch)" if unit == "epochs" else "") + \
            f" over {total_steps} steps"
    return Schedule(tuple(sorted(steps)), desc)


@dataclass
class QTracker:
    """Q_T of eq 7 on the evaluated steps; keeps the residuals so Q_T can be recomputed at any tolerance."""
    steps: list[int] = field(default_factory=list)
    aligned: list[bool] = field(default_factory=list)
    residuals: list[float] = field(default_factory=list)

    def update(self, step: int, aligned: bool, residual: float = math.nan) -> int:
        if self.steps and step <= self.steps[-1]:
            raise DiagnosticsError("step", step, f"must increase (last evaluated step: {self.steps[-1]})")
        self.steps.append(int(step))
        self.aligned.append(bool(aligned))
        self.residuals.append(float(residual))
        return self.q_t

    @property
    def q_t(self) -> int:
        return sum(not a for a in self.aligned)

    def q_t_at(self, tol: float) -> int:
        """Q_T had the membership tolerance been ``tol`` (from the logged residuals)."""
        return sum(not (r <= tol) for r in self.residuals)

    def to_record(self) -> dict:
        return {"q_t": self.q_t, "q_evaluations": len(self.steps)}


class AlignmentTracker:
    """Alignment reports on a schedule, with Q_T and ΔM relative to the first evaluated snapshot θ_0.

    Args: as :func:`alignment_report` (``options`` and keyword ``changes`` to it); the options' ``delta_m``
      asks for ‖M_T − M_0‖_F² and ‖·‖₂² (exact in dense mode, which stores M_0 (N²·8 bytes, taken from the
      budget); Hutchinson with ``hutchinson_probes`` probes and Lanczos in matrix-free mode, which keeps a copy
      of the θ_0 model). ``backend_factory(model)``: default in-process;
      :class:`eeray.raytune.diagnostics_pool.DiagnosticsPool` supplies its own.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, loss: str, options: AlignmentOptions | None = None, *,
                 params: Sequence[str] | None = None, backend_factory: Callable[[nn.Module], object] | None = None,
                 **changes: Any):
        check_inputs(x, y)
        self.options = resolve_options(options, changes)
        self.y, self.loss = y, loss
        self.budget = self.options.memory_budget_bytes
        batch_size = self.options.batch_size
        self.factory = backend_factory or (lambda model: LocalBackend(model, x, params, batch_size))
        self.q = QTracker()
        self.gram_0: torch.Tensor | None = None
        self.model_0: nn.Module | None = None
        self.step_0: int | None = None

    def evaluate(self, model: nn.Module, step: int) -> AlignmentReport:
        """Report at ``step``; ``extra`` holds q_t, q_evaluations and (with delta_m) the ΔM norms."""
        backend = self.factory(model)
        first = self.step_0 is None
        method = self.options.method
        if not first and method == "auto":  # keep θ_0's method, so M_0 or the θ_0 model exists for ΔM
            method = "dense" if self.gram_0 is not None else "matrix_free"
        budget = self.budget - (self.gram_0.numel() * F64 if self.gram_0 is not None else 0)
        report, gram = report_from_backend(backend, self.y, self.loss,
                                           self.options.replace(method=method, memory_budget_bytes=budget),
                                           keep_gram=self.options.delta_m)
        report.step = int(step)
        self.q.update(step, report.aligned, report.residual)
        report.extra.update(self.q.to_record())
        if self.options.delta_m:
            report.extra.update(self._delta(report, gram, model, first))
        if first:
            self.step_0 = int(step)
        return report

    def _delta(self, report: AlignmentReport, gram: torch.Tensor | None, model: nn.Module, first: bool) -> dict:
        out = {"delta_m_ref_step": self.step_0 if not first else report.step}
        if report.method == "dense":
            if first:
                self.gram_0 = gram
                return {**out, "delta_m_fro_sq": 0.0, "delta_m_spec_sq": 0.0, "delta_m_fro_sq_stderr": 0.0}
            diff = gram.sub_(self.gram_0)  # in place: M_T − M_0 (N, N)
            fro_sq = float(torch.linalg.vector_norm(diff)) ** 2
            lam = torch.linalg.eigvalsh(diff)
            spec = max(abs(float(lam[0])), abs(float(lam[-1])))
            return {**out, "delta_m_fro_sq": fro_sq, "delta_m_spec_sq": spec ** 2, "delta_m_fro_sq_stderr": 0.0}
        if first:
            self.model_0 = copy.deepcopy(model)
            return {**out, "delta_m_fro_sq": 0.0, "delta_m_spec_sq": 0.0, "delta_m_fro_sq_stderr": 0.0}
        m_y = report.m_y
        op = delta_gram_operator(self.factory(model).products(m_y, self.budget),
                                 self.factory(self.model_0).products(m_y, self.budget))
        fro_sq, stderr = hutchinson_frobenius_sq(op, probes=self.options.hutchinson_probes, seed=self.options.seed)
        spec = spectral_norm(op, seed=self.options.seed)
        return {**out, "delta_m_fro_sq": fro_sq, "delta_m_spec_sq": spec ** 2, "delta_m_fro_sq_stderr": stderr}

    @property
    def q_t(self) -> int:
        return self.q.q_t

    def state_dict(self) -> dict:
        """Q_T's history and the reference step; θ_0 itself is checkpointed by the caller (M_0 is N² float64,
        often larger than the model, so it is rebuilt from θ_0 on resume instead of stored)."""
        return {"steps": list(self.q.steps), "aligned": list(self.q.aligned), "residuals": list(self.q.residuals),
                "step_0": self.step_0}

    def load_state_dict(self, state: dict, model_0: nn.Module | None) -> None:
        """Restore Q_T's history; rebuild the ΔM reference from ``model_0`` (the model at ``step_0``)."""
        self.q = QTracker(list(state["steps"]), list(state["aligned"]), list(state["residuals"]))
        self.step_0 = state["step_0"]
        if self.step_0 is None or not self.options.delta_m:
            return
        if model_0 is None:
            raise DiagnosticsError("model_0", None, "resuming ΔM needs the model at the reference step")
        report, gram = report_from_backend(self.factory(model_0), self.y, self.loss, self.options, keep_gram=True)
        if report.method == "dense":
            self.gram_0 = gram
        else:
            self.model_0 = model_0
