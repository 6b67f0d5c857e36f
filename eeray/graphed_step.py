"""A whole SGD training step — forward, loss, backward, optimizer update — replayed as one CUDA graph.

At the paper's batch size (64) a pre-activation ResNet-18 step launches several hundred kernels that each run
for microseconds, so on an H100 the host's launch rate, not the GPU, sets the pace
(benchmarks/results/train_throughput_gpu.md). Replaying a captured graph launches them all at once.

The arithmetic is that of the eager step: the same kernels on the same tensors, updated in place. Per batch
shape (and per optimizer — the switch makes a new one) the first ``warmup`` steps run eagerly; this lets lazy
state (momentum buffers, cuDNN autotuning) come into being, as capture needs. The next step is captured.
The captured graph is then checked once against the eager step from the same state: parameters, buffers and
optimizer state are snapshotted, the graph is replayed, the snapshot is restored and the eager step is run.
Where the two disagree, the runner falls back to eager steps and keeps the reason. The step that counts is
always the eager one, so the check never changes the trajectory.

Only ``torch.optim.SGD`` is graphed: its update has no host-side step counter, and a Python-float learning rate
is baked into the captured kernels. That is why a change of any hyperparameter drops the graphs. Other
optimizers, minibatch L-BFGS and the literal τ−1 step run eagerly. With ``enabled=False``, or on the CPU, every step
is the eager one: a trial takes all its SGD-family steps through this one class.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

_HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")


class GraphedTrainStep:
    """``step(optimizer, x, y) -> loss`` (a 0-d tensor on the device); eager until a shape is warm, then replayed."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 warmup: int = 2, rtol: float = 1e-4, enabled: bool = True):
        self.model, self.loss_fn, self.warmup, self.rtol = model, loss_fn, warmup, rtol
        self.enabled = enabled
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.seen: Counter = Counter()
        self.disabled: str | None = None
        self.replays = 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._hyper: tuple = ()

    @staticmethod
    def supports(optimizer: torch.optim.Optimizer) -> bool:
        return type(optimizer) is torch.optim.SGD

    def reset(self) -> None:
        """Drop every graph (a new optimizer, loaded state, changed hyperparameters)."""
        self.graphs.clear()
        self.seen.clear()
        self._optimizer = None

    def step(self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.disabled or not x.is_cuda or not self.supports(optimizer):
            return self._eager(optimizer, x, y)
        hyper = tuple(tuple(g[k] for k in _HYPER) for g in optimizer.param_groups)
        if optimizer is not self._optimizer or hyper != self._hyper:
            self.reset()
            self._optimizer, self._hyper = optimizer, hyper
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        if key in self.graphs:
            graph, static_x, static_y, static_loss = self.graphs[key]
            static_x.copy_(x)
            static_y.copy_(y)
            graph.replay()
            self.replays += 1
            return static_loss.clone()  # the next replay overwrites static_loss
        self.seen[key] += 1
        if self.seen[key] <= self.warmup:
            side = torch.cuda.Stream()  # warm-up on a side stream, as capture requires (CUDA semantics docs)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(optimizer, x, y)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        try:
            entry = self._capture(optimizer, x, y)
        except RuntimeError as err:  # an op that cannot be captured: stay eager, say why
            self.disabled = f"capture failed: {str(err).splitlines()[0][:200]}"
            return self._eager(optimizer, x, y)
        return self._check(entry, key, optimizer, x, y)

    # ----------------------------------------------------------------------- internals
    def _eager(self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(self.model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def _capture(self, optimizer, x, y) -> tuple:
        static_x, static_y = x.clone(), y.clone()
        optimizer.zero_grad(set_to_none=True)  # backward then allocates .grad from the graph's private pool
        graph = torch.cuda.CUDAGraph()
        with _eager_body(self.model), torch.cuda.graph(graph):
            static_loss = self.loss_fn(self.model(static_x), static_y)
            static_loss.backward()
            optimizer.step()
        return graph, static_x, static_y, static_loss.detach()

    def _check(self, entry: tuple, key: tuple, optimizer, x, y) -> torch.Tensor:
        """Replay once from a snapshot, restore, take the eager step; keep the graph if both agree."""
        graph, static_x, static_y, static_loss = entry
        state = _mutable_state(self.model, optimizer)
        saved = [t.clone() for t in state]
        rng = torch.cuda.get_rng_state()
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        graphed = [t.clone() for t in state]
        graphed_loss = static_loss.clone()
        with torch.no_grad():
            for t, s in zip(state, saved):
                t.copy_(s)
        torch.cuda.set_rng_state(rng)
        loss = self._eager(optimizer, x, y)  # the step that counts
        worst = 0.0
        for g, t in zip(graphed + [graphed_loss], state + [loss]):
            if t.numel() == 0:
                continue
            if t.is_floating_point():
                worst = max(worst, float((g - t).abs().max()) / (float(t.abs().max()) + 1e-12))
            elif not torch.equal(g, t):
                worst = float("inf")
        if worst > self.rtol:
            self.disabled = f"graph step differs from the eager step (relative {worst:.3g} > {self.rtol:g})"
        else:
            self.graphs[key] = entry
        return loss


def _mutable_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Everything a training step writes in place: trainable parameters, buffers (BN statistics and counters),
    optimizer state tensors (momentum buffers)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = [t for p in params for t in optimizer.state.get(p, {}).values() if torch.is_tensor(t)]
    return [p.data for p in params] + [b for b in model.buffers()] + state


@contextmanager
def _eager_body(model: nn.Module):
    """An EEModel replays its frozen body as its own CUDA graphs while exploiting; a graph cannot be replayed
    inside a capture, so the body runs eagerly (and is captured as part of the step) here."""
    runner = getattr(model, "body_runner", None)
    if runner is not None:
        model.body_runner = None
    try:
        yield
    finally:
        if runner is not None:
            model.body_runner = runner
