"""Diagnostics inside a trial: the alignment report and Q_T on a schedule, Assumption 4 at initialisation and
Lemma 5 at θ^τ — emitted as ``diagnostics`` / ``safety`` rows, summarised at the end, and checkpointed.

Diagnostics read the model but never change it or the random streams training uses, and their time is kept
out of the phase timers, so a trial with diagnostics trains exactly as one without.
"""
from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from eeray.config import ConfigError, TrialConfig
from eeray.records import Sink
from eeray.surgery import EEModel

if TYPE_CHECKING:  # eeray.diagnostics is imported only when a trial runs diagnostics
    from eeray.diagnostics import AlignmentOptions

GB = 2**30


def memory_budget_bytes(cfg: TrialConfig) -> int:
    return int(cfg.diag.memory_budget_gb * GB)


def alignment_options(cfg: TrialConfig) -> "AlignmentOptions":
    """The trial's :class:`eeray.diagnostics.alignment.AlignmentOptions`, from ``cfg.diag`` (and the trial's
    seed): the one place where the config's diagnostics fields become the report's options."""
    from eeray.diagnostics import AlignmentOptions

    g = cfg.diag
    return AlignmentOptions(tol=g.tol_membership, memory_budget_bytes=memory_budget_bytes(cfg), method=g.method,
                            delta_m=g.delta_m, certificate=g.certificate, seed=cfg.seed)


@torch.no_grad()
def recalibrated_copy(model: nn.Module, x: torch.Tensor, batch_size: int) -> nn.Module:
    """A copy whose BatchNorm running statistics are the exact averages over ``x`` (cumulative, momentum None),
    in eval mode: a fixed function of each sample, with the normalisation BN is for. At initialisation the
    running statistics are placeholders (0, 1), with which eval-mode BN is the identity and a deep ResNet's
    features are nearly collinear (measured: the Fashion-MNIST Gram at n = 6000 has numerical rank 5452 that way,
    6000 recalibrated). The trial's own model is not touched."""
    copy_ = copy.deepcopy(model)
    norms = [m for m in copy_.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return copy_.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    copy_.train()
    for i in range(0, x.shape[0], batch_size):
        copy_.features(x[i:i + batch_size]) if hasattr(copy_, "features") else copy_(x[i:i + batch_size])
    return copy_.eval()


class TrialDiagnostics:
    def __init__(self, cfg: TrialConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                 total_steps: int, steps_per_epoch: int, sink: Sink):
        self.cfg, self.model, self.sink, self.loss = cfg, model, sink, loss
        g = cfg.diag
        self.budget = memory_budget_bytes(cfg)
        self.x_all, self.seconds = x, 0.0
        self.failed_evaluations = 0
        self.tracker = self.schedule = None
        self.model_0_state: dict | None = None
        self.safety: dict[str, Any] = {}
        if (g.assumption4 or g.lemma5) and isinstance(model, EEModel):
            n, head = x.shape[0], model.head
            # what eeray.diagnostics.hadamard needs at least: the n×n float64 Gram, Z and S, two rows of blocks
            need = 8 * (n * n + n * (head.in_features + 1 + head.m_H) + 2 * n)
            if need > self.budget:
                raise ConfigError("diag.memory_budget_gb", g.memory_budget_gb,
                                  f"the safe-exploration Grams need at least {need:,} bytes ({need / GB:.3g} GiB) "
                                  f"for n = {n}; raise "
                                  "the budget, or set diag.assumption4/diag.lemma5 to False")
        if g.assumption4 and not isinstance(model, EEModel):
            raise ConfigError("diag.assumption4", True, "Assumption 4 is about the EE model; set ee.enabled")
        self.pool = None
        self._phases: dict[int, str] = {}
        if g.alignment:
            from eeray.diagnostics import AlignmentTracker, evaluation_schedule

            k = g.max_samples or x.shape[0]
            names = [n for n, _ in model.named_parameters()]  # J over all of θ, in both phases (eq 7)
            options = alignment_options(cfg)
            if g.actors:  # a Ray actor pool over data shards; training goes on while a snapshot is evaluated
                from eeray.raytune.diagnostics_pool import DiagnosticsPool

                self.pool = DiagnosticsPool(model, x[:k], num_actors=g.actors, params=names, y=y[:k], loss=loss,
                                            options=options)
                self.tracker = self.pool.tracker
                self._actor_nodes: list = []
            else:
                self.tracker = AlignmentTracker(x[:k], y[:k], loss, options, params=names)
            self.schedule = evaluation_schedule(total_steps, unit=g.unit, every=g.every,
                                                steps_per_epoch=steps_per_epoch)
            self._pending = list(self.schedule.steps)

    # ----------------------------------------------------------------------- hooks called by the loop
    def at_start(self, step: int, phase: str) -> None:
        if self.cfg.diag.assumption4 and isinstance(self.model, EEModel):
            from eeray.diagnostics import assumption4_report

            head = self.model.head
            if self._too_narrow():
                self._safety_row("assumption4", None, step, phase, self._narrow_report(), head.m_H,
                                 head.in_features + 1, self.cfg.seed)
                self.safety["assumption4_certified"] = False
            else:
                t0 = time.perf_counter()
                model = self.model
                if self.cfg.diag.assumption4_bn == "recalibrate":
                    model = recalibrated_copy(self.model, self.x_all, self.cfg.train.eval_batch_size)
                rep = assumption4_report(model, self.x_all, seed=self.cfg.seed, memory_budget_bytes=self.budget)
                del model
                self.seconds += time.perf_counter() - t0
                rep.gram.note = f"BN statistics: {self.cfg.diag.assumption4_bn}. {rep.gram.note}".strip()
                self._safety_row("assumption4", None, step, phase, rep.gram, rep.m_H, rep.m_H_minus_1, rep.seed)
                self.safety["assumption4_certified"] = bool(rep.gram.certified)
        self.after_step(step, phase)

    def at_switch(self, step: int, phase: str) -> None:
        """Lemma 5 per head at the perturbed θ^τ, after the gate freeze (docs/paper-choices.md (D28b))."""
        if not (self.cfg.diag.lemma5 and isinstance(self.model, EEModel)):
            return
        from eeray.diagnostics import lemma5_report

        head = self.model.head
        if self._too_narrow():
            for j in range(head.num_outputs):
                self._safety_row("lemma5", j, step, phase, self._narrow_report(), head.m_H, head.in_features + 1, None)
            self.safety["lemma5_full_rank"] = False
            return
        t0 = time.perf_counter()
        rep = lemma5_report(self.model, self.x_all, memory_budget_bytes=self.budget)
        self.seconds += time.perf_counter() - t0
        for j, h in enumerate(rep.heads):
            self._safety_row("lemma5", j, step, phase, h, head.m_H, head.in_features + 1, None)
        self.safety["lemma5_full_rank"] = bool(rep.all_full_rank)

    def after_step(self, step: int, phase: str) -> None:
        """Run the alignment report if the schedule has a point in (last evaluated, step]."""
        if self.tracker is None or not self._pending or self._pending[0] > step:
            return
        while self._pending and self._pending[0] <= step:
            self._pending.pop(0)
        t0 = time.perf_counter()
        if self.model_0_state is None:
            self.model_0_state = copy.deepcopy(self.model.state_dict())  # θ_0 for ΔM, and for resume
        if self.pool is not None:
            self._phases[step] = phase
            self.pool.submit(step, self.model)  # a CPU snapshot now; the result comes back from poll()
            self.seconds += time.perf_counter() - t0
            self._emit(self.pool.poll())
            return
        report = self.tracker.evaluate(self.model, step)
        took = time.perf_counter() - t0
        self.seconds += took
        self._phases[step] = phase
        self._emit([(step, report)], took)

    def flush(self) -> None:
        """Wait for the pool's pending evaluations (before a checkpoint, at the end): every row a checkpoint
        covers has been emitted."""
        if self.pool is not None:
            t0 = time.perf_counter()
            done = self.pool.collect()
            self.seconds += time.perf_counter() - t0
            self._emit(done)

    def close(self) -> None:
        if self.pool is not None:
            self.flush()
            self.pool.shutdown()
            self.pool = None

    def _emit(self, done: list, took: float | None = None) -> None:
        if self.pool is not None and self.pool.actor_nodes != self._actor_nodes:  # where the actors run (again)
            self._actor_nodes = list(self.pool.actor_nodes)
            self.sink.emit("events", {"event": "diag_actors", "nodes": self._actor_nodes})
        for step, report in done:
            # an evaluation whose actors were lost twice comes back as a row with evaluation_error and no report
            # values; it is counted in diag_failed_evaluations and not in Q_T (docs/cluster.md)
            self.failed_evaluations += bool(getattr(report, "failed", False))
            seconds = took if took is not None else report.seconds_total
            self.sink.emit("diagnostics", {**report.to_record(), "step": step, "phase": self._phases.pop(step),
                                           "schedule": self.schedule.description, "diag_seconds": seconds})

    # ----------------------------------------------------------------------- summary and checkpoint
    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.safety, "diag_seconds": self.seconds}
        if self.cfg.diag.alignment and self.cfg.diag.actors:  # the pool is closed by now
            out["diag_failed_evaluations"] = self.failed_evaluations
        if self.tracker is not None and self.tracker.q.steps:
            q = self.tracker.q
            increments = [s for s, a in zip(q.steps, q.aligned) if not a]
            out.update(final_Q_T=q.q_t, diag_evaluations=len(q.steps), final_residual=q.residuals[-1],
                       final_aligned=q.aligned[-1], last_Q_T_increment_step=increments[-1] if increments else None)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict() if self.tracker else None, "model_0": self.model_0_state,
                "pending": list(getattr(self, "_pending", [])), "seconds": self.seconds, "safety": dict(self.safety),
                "failed_evaluations": self.failed_evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds, self.safety = state["seconds"], dict(state["safety"])
        self.failed_evaluations = state.get("failed_evaluations", 0)  # checkpoints written before it existed
        if self.tracker is None:
            return
        self._pending, self.model_0_state = list(state["pending"]), state["model_0"]
        model_0 = None
        if self.model_0_state is not None:
            model_0 = copy.deepcopy(self.model)
            model_0.load_state_dict(self.model_0_state)
        self.tracker.load_state_dict(state["tracker"], model_0)

    def _too_narrow(self) -> bool:
        head = self.model.head
        return head.m_H * (head.in_features + 1) < self.x_all.shape[0]

    def _narrow_report(self):
        """m_H·m_{H−1} < n: rank φ ≤ m_H·m_{H−1} < n, so the certificate fails without computing anything."""
        from eeray.diagnostics import GramRankReport, minimum_m_H

        head, n = self.model.head, self.x_all.shape[0]
        m_hm1 = head.in_features + 1
        return GramRankReport(n=n, certified=False, shift=math.nan, failed_pivot=0, second_method="none",
                              second_rank=-1, lambda_min=math.nan, lambda_max=math.nan, agree=None, seconds_gram=0.0,
                              seconds_cholesky=0.0, seconds_second=0.0, peak_bytes_estimate=0,
                              note=f"m_H·m_{{H−1}} = {head.m_H}·{m_hm1} < n = {n}: rank(φ) < n for every θ; "
                                   f"smallest m_H that could work: {minimum_m_H(n, m_hm1)}")

    def _safety_row(self, kind: str, head: int | None, step: int, phase: str, gram, m_H: int, m_hm1: int,
                    seed: int | None) -> None:
        from dataclasses import asdict

        row = {"kind": kind, "head": head, "step": step, "phase": phase, "m_H": m_H, "m_H_minus_1": m_hm1,
               "seed": seed, **asdict(gram)}
        self.sink.emit("safety", {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
