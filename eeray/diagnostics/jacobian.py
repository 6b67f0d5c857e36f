"""The model as a function of (some of) its parameters, for Jacobian work: eval mode, finite outputs,
per-sample Jacobian rows, and batched J·u / Jᵀ·w products.

Row ordering. The paper's vec stacks the columns of f_X (n × m_y), so its row r = i + n·j. Here every
Jacobian, every vector of length N = n·m_y and every Gram matrix is **sample-major**: row r = i·m_y + j (the
natural memory order of an (n, m_y) tensor). This is a fixed permutation of the paper's rows; ranks,
eigenvalues, residuals and Frobenius norms do not depend on it. ``vec_sample_major(Y)`` flattens targets in
the same order.

BN / dropout. Every computation runs with the model in eval mode (docs/paper-choices.md (D30): BN couples
the samples); the caller's per-module ``training`` flags are restored afterwards.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from eeray.diagnostics.errors import DiagnosticsError, NonFiniteOutputError


def vec_sample_major(big_y: torch.Tensor) -> torch.Tensor:
    """(n, m_y) -> (n·m_y,) with entry i·m_y + j = Y[i, j] (the ordering of every J and M here)."""
    return big_y.reshape(-1)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, and restore each one's own flag afterwards (even on error)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class FunctionalModel:
    """``model`` viewed as f(x, θ_P) for a chosen parameter subset P (all trainable parameters by default).

    Args:
      model: any ``nn.Module`` mapping (B, ...) -> (B, m_y) (or (B,) for one output).
      params: names (as in ``model.named_parameters()``) of the parameters to differentiate; the others are
        constants. ``None``: every parameter with ``requires_grad``.
    """

    def __init__(self, model: nn.Module, params: Sequence[str] | None = None):
        self.model = model
        named = dict(model.named_parameters())
        if params is None:
            names = [k for k, p in named.items() if p.requires_grad]
        else:
            names = list(dict.fromkeys(params))
            unknown = [k for k in names if k not in named]
            if unknown:
                raise DiagnosticsError("params", unknown, f"unknown parameter names; valid: {_preview(named)}")
        if not names:
            raise DiagnosticsError("params", params, "select at least one parameter")
        self.names = names  # the order of θ_P in every flat vector
        self.shapes = {k: named[k].shape for k in names}
        self.numels = {k: named[k].numel() for k in names}
        self.d = sum(self.numels.values())
        self._named = named
        self._buffers = dict(model.named_buffers())
        ref = named[names[0]]
        self.device, self.dtype = ref.device, ref.dtype

    # ------------------------------------------------------------------ state
    def state(self, override: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Detached parameters and buffers for ``functional_call``; ``override`` replaces some parameters."""
        out = {k: p.detach() for k, p in self._named.items()}
        out.update(self._buffers)
        if override:
            out.update(override)
        return out

    def theta(self) -> dict[str, torch.Tensor]:
        return {k: self._named[k].detach() for k in self.names}

    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:  # dict -> (d,)
        return torch.cat([tensors[k].reshape(-1) for k in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:  # (d,) -> dict, model dtype
        flat = torch.as_tensor(flat).to(self.device, self.dtype)
        out, start = {}, 0
        for k in self.names:
            out[k] = flat[start:start + self.numels[k]].view(self.shapes[k])
            start += self.numels[k]
        return out

    # ------------------------------------------------------------------ forward
    def _call(self, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model, state, (x,))
        if not torch.is_tensor(out):
            raise DiagnosticsError("model(x)", type(out).__name__, "the model must return one tensor (B, m_y)")
        return out[:, None] if out.dim() == 1 else out  # (B, m_y)

    @torch.no_grad()
    def outputs(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """f_X(θ) (n, m_y) in the model's dtype, in eval mode; raises on NaN/inf or a bad shape."""
        with eval_mode(self.model):
            parts = [self._call(self.state(), x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        out = torch.cat(parts)
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise DiagnosticsError("model(x).shape", tuple(out.shape), f"must be ({x.shape[0]}, m_y)")
        check_finite(out, "model(x)")
        return out

    # ------------------------------------------------------------------ per-sample Jacobian rows
    def jacobian_rows(self, x: torch.Tensor, names: Sequence[str], eps: dict[str, torch.Tensor] | None = None,
                      chunk_size: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Per-sample Jacobians of f(x_i) w.r.t. the parameters ``names`` (and the additive output
        perturbations ``eps`` of hooked layers, see :mod:`eeray.diagnostics.gram`). Call inside
        :func:`eval_mode`.

        Returns:
          ({name: (B, m_y, *shape)}, {layer: (B, m_y, out_features)}) in the model's dtype.
        """
        base = self.state()
        block = {k: base[k] for k in names}
        eps = eps or {}

        def single(p: dict, e: dict, xi: torch.Tensor) -> torch.Tensor:  # (...) -> (m_y,)
            _HOOK_EPS.update(e)
            try:
                return self._call({**base, **p}, xi[None])[0]
            finally:
                _HOOK_EPS.clear()

        jac = vmap(jacrev(single, argnums=(0, 1)), in_dims=(None, None, 0), chunk_size=chunk_size)
        return jac(block, eps, x)

    # ------------------------------------------------------------------ J·u and Jᵀ·w (batched, no per-sample work)
    def jvp(self, x: torch.Tensor, tangent: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """J·u: (d,) -> (n·m_y,) float64, sample-major. Call inside :func:`eval_mode`."""
        tangents = self.unflatten(tangent)
        base, theta = self.state(), self.theta()
        parts = []
        with warnings.catch_warnings():  # torch's first forward-AD call loads decompositions via torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            for i in range(0, x.shape[0], batch_size):
                xb = x[i:i + batch_size]
                _, dout = jvp(lambda p: self._call({**base, **p}, xb), (theta,), (tangents,))
                parts.append(dout.reshape(-1).to(torch.float64))
        return torch.cat(parts)

    def vjp(self, x: torch.Tensor, cotangent: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Jᵀ·w: (n·m_y,) -> (d,) float64. Call inside :func:`eval_mode`."""
        base, theta = self.state(), self.theta()
        w = torch.as_tensor(cotangent).to(self.device, self.dtype)
        m_y = w.numel() // x.shape[0]
        total = torch.zeros(self.d, dtype=torch.float64, device=self.device)
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            _, pullback = vjp(lambda p: self._call({**base, **p}, xb), theta)
            (grads,) = pullback(w[i * m_y:(i + xb.shape[0]) * m_y].view(xb.shape[0], m_y))
            total += self.flatten(grads).to(torch.float64)
        return total

    # ------------------------------------------------------------------ memory probes
    @torch.no_grad()
    def activation_bytes_per_sample(self, x: torch.Tensor) -> int:
        """Bytes of all leaf-module outputs for one sample: the unit of the activation-memory estimates."""
        total = [0]

        def count(_m, _a, out):
            if torch.is_tensor(out):
                total[0] += out.numel() * out.element_size()

        handles = [m.register_forward_hook(count) for m in self.model.modules() if next(m.children(), None) is None]
        try:
            with eval_mode(self.model):
                self._call(self.state(), x[:1])
        finally:
            for h in handles:
                h.remove()
        return max(total[0], x[:1].numel() * x.element_size())


# Additive zero perturbations of hooked layer outputs, read by the hooks that gram.py installs. jacrev w.r.t.
# them gives ∂f/∂(layer output), from which a Linear layer's Gram is formed exactly without its Jacobian.
_HOOK_EPS: dict[str, torch.Tensor] = {}


def perturbation_hook(name: str):
    def hook(_module, _args, out):
        eps = _HOOK_EPS.get(name)
        return out if eps is None else out + eps
    return hook


def check_finite(t: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        row = int(bad.reshape(t.shape[0], -1).any(1).nonzero()[0]) if t.dim() else 0
        raise NonFiniteOutputError(what, f"NaN/inf at sample {row}",
                                   "outputs must be finite; the model diverged or the inputs contain NaN/inf")


def check_inputs(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    if x.dim() < 1 or x.shape[0] < 1:
        raise DiagnosticsError("x.shape", tuple(x.shape), "need at least one sample: (n, ...) with n >= 1")
    if y is not None and (y.dim() < 1 or y.shape[0] != x.shape[0]):
        raise DiagnosticsError("y.shape", tuple(y.shape), f"must start with n = {x.shape[0]} (x.shape[0])")
    check_finite(x, "x")


def _preview(named: dict) -> str:
    keys = list(named)
    return ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")

