"""A Ray actor pool for the diagnostics: each actor holds one contiguous shard of the samples and receives
each model snapshot once (``ray.put`` of the state dict, one ``load`` per actor); Gram blocks (upper block
triangle for M, lower for the safe-exploration Gram) and J·u / Jᵀ·w run on the actors, the factorisations
(eigh, Cholesky) and the Krylov iterations on the driver. The decisions are the local code
(:func:`eeray.diagnostics.alignment.report_from_backend`, :func:`eeray.diagnostics.hadamard.gram_certificate`)
with the pool as the backend, so the answers are the local answers up to floating-point summation order.

Placement (checked in ray 2.60's source): Tune starts a trial's function in bundle 0 of the trial's
placement group with ``placement_group_capture_child_tasks=True`` (``ray/air/execution/resources/
placement_group.py``). Inside a trial, actor i is placed explicitly in bundle i + 1 with that bundle's CPU/GPU
(``PlacementGroupSchedulingStrategy``), so a study must request ``PlacementGroupFactory([trial_bundle] +
[actor_bundle] * num_actors)``; fewer bundles is an error before any actor starts (no silent deadlock).
Outside a placement group (a script, a test) actors take ``num_cpus``/``num_gpus`` from the pool arguments.

Ray is imported here only; ``import eeray.diagnostics`` does not import this module.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import nn

from eeray.diagnostics import safety
from eeray.diagnostics.alignment import AlignmentOptions, AlignmentReport, report_from_backend, resolve_options
from eeray.diagnostics.errors import DiagnosticsError, MemoryBudgetError
from eeray.diagnostics.gram import plan_gram
from eeray.diagnostics.hadamard import GramRankReport, gram_certificate
from eeray.diagnostics.local import LocalBackend
from eeray.diagnostics.matrix_free import Products
from eeray.diagnostics.shard_worker import ShardWorker
from eeray.diagnostics.q_tracker import AlignmentTracker


class DiagnosticsPool:
    """Actor pool over contiguous shards of ``x``. Methods mirror the local functions and return the same
    answers: :meth:`alignment_report`, :meth:`build_gram`, :meth:`assumption4_report`, :meth:`lemma5_report`;
    :meth:`submit` / :meth:`poll` / :meth:`collect` evaluate snapshots while training goes on.

    Args:
      model: the model whose snapshots will be analysed (its structure is sent to each actor once).
      x: (n, ...) samples, split into ``num_actors`` contiguous shards (sample order is kept).
      params / batch_size: as :func:`alignment_report`.
      num_cpus / num_gpus: per actor, outside a placement group (inside a Tune trial the bundles decide).
      device: the actors' device ("cuda" when they have a GPU); driver_device: eigh/Cholesky device.
      y / loss / options: the targets, loss and :class:`AlignmentOptions` of the tracker behind :meth:`submit`
        (no tracker without ``y`` and ``loss``).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, *, num_actors: int = 2, params: Sequence[str] | None = None,
                 batch_size: int = 256, num_cpus: float = 1, num_gpus: float = 0, device: str | None = None,
                 driver_device: str | None = None, y: torch.Tensor | None = None, loss: str | None = None,
                 options: AlignmentOptions | None = None):
        if num_actors < 1:
            raise DiagnosticsError("num_actors", num_actors, "must be >= 1")
        if not ray.is_initialized():
            raise DiagnosticsError("ray", "not initialized", "call ray.init(...) (or run inside a Tune trial) first")
        self.x, self.params, self.batch_size = x, params, batch_size
        self.template = copy.deepcopy(model).cpu()
        self.driver_device = torch.device(driver_device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.shards = [s.cpu() for s in torch.tensor_split(x, num_actors)]
        self.bounds = list(itertools.accumulate([0] + [s.shape[0] for s in self.shards]))
        self._actor_args = (num_actors, num_cpus, num_gpus, device)
        self.actors: list = []
        self.actor_nodes: list[str] = []  # node IP of each actor, for the trials table
        self.replaced = 0  # actors started again after one was lost
        try:
            self._start_actors()
        except ray.exceptions.RayActorError:  # one lost while starting: start them all again, once
            self._restart_actors()
        self._ids = itertools.count()
        self._executor = ThreadPoolExecutor(max_workers=1)
        self._pending: list[tuple[int, Future]] = []
        self._tracker = None if y is None or loss is None else AlignmentTracker(
            x, y, loss, options, params=params, backend_factory=self.backend)

    def _start_actors(self) -> None:
        """One actor per shard, in bundles 1..k of the trial's placement group (the same bundles on a restart)."""
        num_actors, num_cpus, num_gpus, device = self._actor_args
        template_ref = ray.put(self.template)
        worker = ray.remote(ShardWorker)
        self.actors = []
        for i, shard in enumerate(self.shards):
            opts = _placement(i, num_actors, num_cpus, num_gpus)  # inside a trial: bundle i + 1 decides
            on = device or ("cuda" if opts["num_gpus"] > 0 else "cpu")
            self.actors.append(worker.options(**opts).remote(template_ref, shard, self.params, self.batch_size, on,
                                                             int(max(1, opts["num_cpus"]))))
        self.actor_nodes = ray.get([a.__ray_call__.remote(_node_ip) for a in self.actors])

    def _restart_actors(self) -> None:
        for a in self.actors:
            ray.kill(a)  # the survivors too: every shard is reloaded the same way
        self.replaced += len(self.actors)
        self._start_actors()

    # ------------------------------------------------------------------ snapshots
    def backend(self, model: nn.Module) -> "PoolBackend":
        """Send ``model``'s parameters to every actor once; the returned backend answers the report's questions."""
        snap_id = next(self._ids)
        state_ref = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        ray.get([a.load.remote(snap_id, state_ref) for a in self.actors])
        return PoolBackend(self, model, snap_id)

    # ------------------------------------------------------------------ the local functions' signatures
    def alignment_report(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                         options: AlignmentOptions | None = None, **changes: Any) -> AlignmentReport:
        opts = resolve_options(options, changes)
        self._check_same_data(x)
        return report_from_backend(self.backend(model), y, loss, opts)[0]

    def build_gram(self, model: nn.Module, x: torch.Tensor, m_y: int, budget: int) -> torch.Tensor:
        self._check_same_data(x)
        return self.backend(model).gram(m_y, budget)

    def assumption4_report(self, model: nn.Module, x: torch.Tensor, *, m_H: int | None = None, seed: int = 0,
                           gate_scale: float | None = None, memory_budget_bytes: int | None = None,
                           second_method: str = "auto") -> safety.Assumption4Report:
        self._check_same_data(x)
        m_H = int(m_H or model.head.m_H)
        m_hm1 = int(model.head.in_features) + 1
        safety.check_width(x.shape[0], m_H, m_hm1)
        z = self._features(model)
        gram = safety.random_gate_certificate(z, m_H, seed=seed, gate_scale=gate_scale or model.head.gate_scale,
                                              memory_budget_bytes=memory_budget_bytes, second_method=second_method,
                                              former=self._hadamard_former)
        return safety.Assumption4Report(x.shape[0], m_H, m_hm1, seed, gram)

    def lemma5_report(self, model: nn.Module, x: torch.Tensor, *, memory_budget_bytes: int | None = None,
                      second_method: str = "auto") -> safety.Lemma5Report:
        self._check_same_data(x)
        safety.check_width(x.shape[0], model.head.m_H, model.head.in_features + 1)
        z = self._features(model)
        heads: list[GramRankReport] = []
        for j in range(model.head.num_outputs):
            s, w = safety.head_gates(model, z, j)
            heads.append(gram_certificate(z, s * w, memory_budget_bytes=memory_budget_bytes,
                                          second_method=second_method, former=self._hadamard_former))
        return safety.Lemma5Report(heads)

    # ------------------------------------------------------------------ asynchronous use from a trial
    @property
    def tracker(self) -> AlignmentTracker | None:
        """The tracker behind :meth:`submit` (Q_T so far, the ΔM reference); checkpointed by the trial."""
        return self._tracker

    def submit(self, step: int, model: nn.Module) -> Future:
        """Snapshot ``model`` now (a CPU copy; training may go on) and evaluate it in the background with the
        pool's :class:`AlignmentTracker` (Q_T, ΔM). Results come back from :meth:`poll` attached to ``step``."""
        if self._tracker is None:
            raise DiagnosticsError("y", None, "pass y=..., loss=... (and options=AlignmentOptions(...)) to the pool "
                                   "to use submit()")
        snapshot = copy.deepcopy(model).cpu()
        future = self._executor.submit(self._evaluate, snapshot, step)
        self._pending.append((step, future))
        return future

    def _evaluate(self, snapshot: nn.Module, step: int) -> "AlignmentReport | FailedEvaluation":
        """One scheduled evaluation. An actor lost mid-evaluation (killed, or its node gone) is replaced and the
        evaluation run again from the tracker's state before it; lost again, it is returned as a
        :class:`FailedEvaluation` (a row with the reason; Q_T and q_evaluations unchanged) and training goes on."""
        errors = []
        for attempt in range(1, EVALUATION_ATTEMPTS + 1):
            before = self._tracker_state()
            try:
                report = self._tracker.evaluate(snapshot, step)
            except ray.exceptions.RayActorError as exc:  # ActorDiedError, ActorUnavailableError: not our code
                self._restore_tracker(before)
                errors.append(f"attempt {attempt}: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
                try:
                    self._restart_actors()
                except Exception as restart:  # noqa: BLE001 - recorded in the row, never dropped
                    errors.append(f"restarting the actors: {type(restart).__name__}: {restart}")
                    break
                continue
            report.extra["evaluation_attempts"] = attempt
            if errors:
                report.extra["evaluation_error"] = "; ".join(errors)  # what the retry recovered from
            return report
        q = self._tracker.q
        return FailedEvaluation(step, len(errors), "; ".join(errors), q.q_t, len(q.steps))

    def _tracker_state(self) -> dict:
        t = self._tracker
        return {"q": copy.deepcopy(t.q), "step_0": t.step_0, "gram_0": t.gram_0, "model_0": getattr(t, "model_0", None)}

    def _restore_tracker(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self._tracker, k, v)

    def poll(self) -> list[tuple[int, AlignmentReport]]:
        """Finished evaluations (step, report), in submission order, without waiting; re-raises failures."""
        done = []
        while self._pending and self._pending[0][1].done():
            step, fut = self._pending.pop(0)
            done.append((step, fut.result()))
        return done

    def collect(self) -> list[tuple[int, AlignmentReport]]:
        """Wait for every submitted evaluation and return them all, (step, report), in submission order."""
        out = [(step, fut.result()) for step, fut in self._pending]
        self._pending.clear()
        return out

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        for a in self.actors:
            ray.kill(a)
        self.actors = []

    # ------------------------------------------------------------------ internals
    def _check_same_data(self, x: torch.Tensor) -> None:
        if x is not self.x and (x.shape != self.x.shape or not torch.equal(x.cpu(), self.x.cpu())):
            raise DiagnosticsError("x", tuple(x.shape), "must be the samples the pool was built with "
                                   "(each actor holds a shard of them); build another pool for other data")

    def _features(self, model: nn.Module) -> torch.Tensor:
        backend = self.backend(model)
        return torch.cat(ray.get([a.features.remote(backend.snap_id) for a in self.actors])).to(self.driver_device)

    def _hadamard_former(self, z: torch.Tensor, s: torch.Tensor, out: torch.Tensor, block: int) -> torch.Tensor:
        """Lower block triangle of (ZZᵀ)∘(SSᵀ) on the actors (round-robin), written into ``out`` on the driver."""
        n = z.shape[0]
        sizes = [t.shape[0] for t in torch.tensor_split(torch.empty(n), len(self.actors))]
        cuts = list(itertools.accumulate([0] + sizes))
        refs = [(ray.put(z[a:b].cpu()), ray.put(s[a:b].cpu())) for a, b in zip(cuts[:-1], cuts[1:])]
        pairs = [(a, b) for a in range(len(refs)) for b in range(a + 1)]
        futures = [self.actors[k % len(self.actors)].hadamard_block.remote(*refs[a], *refs[b])
                   for k, (a, b) in enumerate(pairs)]
        abs_rows = torch.zeros(n, dtype=torch.float64, device=out.device)
        for (a, b), blk in zip(pairs, ray.get(futures)):
            ra, rb = slice(cuts[a], cuts[a + 1]), slice(cuts[b], cuts[b + 1])
            blk = blk.to(out.device)
            out[ra, rb] = blk
            abs_rows[ra] += blk.abs().sum(1)
            if a != b:
                abs_rows[rb] += blk.abs().sum(0)
        return abs_rows


EVALUATION_ATTEMPTS = 2  # the first, and one more on fresh actors


@dataclass
class FailedEvaluation:
    """A scheduled evaluation that did not complete: its diagnostics row holds the reason, the attempts, and
    Q_T / q_evaluations as they stand (a failed evaluation is not an evaluation: it changes neither)."""

    step: int
    attempts: int
    reason: str
    q_t: int
    q_evaluations: int
    seconds_total: float = float("nan")
    failed = True

    def to_record(self) -> dict:
        return {"q_t": self.q_t, "q_evaluations": self.q_evaluations, "evaluation_attempts": self.attempts,
                "evaluation_error": self.reason}


def _node_ip(_actor) -> str:
    return ray.util.get_node_ip_address()


class PoolBackend:
    """The alignment report's backend on the pool (same questions as :class:`LocalBackend`)."""

    def __init__(self, pool: DiagnosticsPool, model: nn.Module, snap_id: int):
        self.pool, self.model, self.snap_id = pool, model, snap_id
        first = next(model.parameters())
        # θ on the driver (ν, sizes, the activation probe); its n is the pool's n for the memory estimates
        self.local = LocalBackend(model, pool.x[:2].to(first.device), pool.params, pool.batch_size)
        self.n, self.d, self.device = pool.x.shape[0], self.local.d, pool.driver_device
        self.local.n = self.n

    def _all(self, method: str, *args) -> list:
        return ray.get([getattr(a, method).remote(self.snap_id, *args) for a in self.pool.actors])

    def outputs(self) -> torch.Tensor:
        return torch.cat(self._all("outputs")).to(self.device)

    def gram_bytes(self, m_y: int, budget: int) -> int:
        big = max(self.pool.shards, key=len)
        return plan_gram(self.local.fm, big.to(self.local.device), m_y, budget, n_cols=big.shape[0]).bytes_estimate

    def gram(self, m_y: int, budget: int) -> torch.Tensor:
        """M from the upper block triangle: block (a, b), a ≤ b, on actor a with shard b's samples sent to it."""
        pool, N = self.pool, self.n * m_y
        gram = torch.empty(N, N, dtype=torch.float64, device=self.device)
        pairs = [(a, b) for a in range(len(pool.actors)) for b in range(a, len(pool.actors))]
        refs = [ray.put(s) for s in pool.shards]
        futures = [pool.actors[a].gram_block.remote(self.snap_id, None if a == b else refs[b], m_y, budget)
                   for a, b in pairs]
        for (a, b), blk in zip(pairs, _get(futures)):
            ra = slice(pool.bounds[a] * m_y, pool.bounds[a + 1] * m_y)
            rb = slice(pool.bounds[b] * m_y, pool.bounds[b + 1] * m_y)
            gram[ra, rb] = blk.to(self.device)
            if a != b:
                gram[rb, ra] = gram[ra, rb].T
        return gram

    def matrix_free_batch(self, m_y: int, budget: int | None) -> int:
        return self.local.matrix_free_batch(m_y, budget)

    def products(self, m_y: int, budget: int | None) -> Products:
        self.matrix_free_batch(m_y, budget)
        bounds = [b * m_y for b in self.pool.bounds]

        def jv(u: np.ndarray) -> np.ndarray:
            ref = ray.put(np.ascontiguousarray(u, dtype=np.float64))  # one copy in the object store for all actors
            return np.concatenate(self._all("jvp", ref))

        def vj(w: np.ndarray) -> np.ndarray:
            w = np.ascontiguousarray(w, dtype=np.float64)
            parts = ray.get([a.vjp.remote(self.snap_id, w[s:e])
                             for a, s, e in zip(self.pool.actors, bounds[:-1], bounds[1:])])
            return np.sum(parts, axis=0)

        return Products(self.n * m_y, self.d, jv, vj)

    def jvp_vector(self, u: torch.Tensor, m_y: int) -> torch.Tensor:
        ref = ray.put(u.detach().cpu().numpy().astype(np.float64))
        return torch.from_numpy(np.concatenate(self._all("jvp", ref))).to(self.device)

    def loss_and_grad_norm(self, big_y: torch.Tensor, loss: str) -> tuple[float, float]:
        b = self.pool.bounds
        parts = ray.get([a.loss_and_grad.remote(self.snap_id, big_y[s:e].cpu(), loss)
                         for a, s, e in zip(self.pool.actors, b[:-1], b[1:])])
        weights = [(e - s) / self.n for s, e in zip(b[:-1], b[1:])]
        value = sum(w * v for w, (v, _) in zip(weights, parts))
        grad = sum(w * g for w, (_, g) in zip(weights, parts))
        return float(value), float(np.linalg.norm(grad))

    def nu(self, linear_params: list[str]) -> torch.Tensor:
        return self.local.nu(linear_params).to(self.device)


def _get(futures):
    """ray.get that re-raises our own errors (e.g. MemoryBudgetError from an actor) as themselves."""
    try:
        return ray.get(futures)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, (DiagnosticsError, MemoryBudgetError)):
            raise err.cause from None
        raise


def _placement(i: int, num_actors: int, num_cpus: float, num_gpus: float) -> dict:
    """Actor i's resources: bundle i + 1 of the current placement group inside a trial; else the arguments."""
    pg = ray.util.get_current_placement_group()
    if pg is None:
        return {"num_cpus": num_cpus, "num_gpus": num_gpus}
    specs = pg.bundle_specs
    if len(specs) < num_actors + 1:
        raise DiagnosticsError("num_actors", num_actors, f"the trial's placement group has {len(specs)} bundles; "
                               f"the pool needs bundles 1..{num_actors} (bundle 0 runs the trial): request "
                               f"PlacementGroupFactory([trial_bundle] + [actor_bundle] * {num_actors})")
    bundle = specs[i + 1]
    return {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0),
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=i + 1, placement_group_capture_child_tasks=True)}
