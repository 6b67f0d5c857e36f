"""Safe exploration (Assumption 4, Table 2) and the exploitation-phase rank (Lemma 5), plus the L̂ constant.

Z comes from the backbone in eval mode (docs/paper-choices.md (D28, D30)) on the samples given (pass the non-augmented
training set), with the constant neuron appended: z = [z̄, 1] (n, m_{H−1}).
  * Assumption 4 at initialisation: q ~ N(0, I) (m_{H−1} × m_H) from a seeded generator, S = σ̃(ς' Z q),
    Gram = (ZZᵀ)∘(SSᵀ) = φφᵀ.
  * Lemma 5 at θ^τ, per head j: S_j = σ̃(ς' Z R_jᵀ) with R_j the FROZEN gate weights once the gate is frozen
    (else the current W^(H−1,j)), Gram_j = (ZZᵀ)∘(S_j diag(w_j)² S_jᵀ), w_j = W^(H)_{j*}.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eeray.diagnostics.errors import DiagnosticsError, SafeExplorationError
from eeray.diagnostics.hadamard import GramRankReport, gram_certificate
from eeray.diagnostics.jacobian import check_finite, eval_mode
from eeray.losses import LIPSCHITZ, check_loss


def minimum_m_H(n: int, m_H_minus_1: int) -> int:
    """The smallest m_H with m_H·m_{H−1} ≥ n (Assumption 4's necessary condition)."""
    return -(-n // m_H_minus_1)


def check_width(n: int, m_H: int, m_H_minus_1: int) -> None:
    """Fail fast when Assumption 4 is impossible: rank φ ≤ m_H·m_{H−1} < n."""
    if m_H * m_H_minus_1 < n:
        raise SafeExplorationError("m_H", m_H, f"Assumption 4 needs m_H·m_(H−1) >= n, but {m_H}·{m_H_minus_1} = "
                                   f"{m_H * m_H_minus_1} < n = {n}; the smallest m_H that could satisfy it is "
                                   f"{minimum_m_H(n, m_H_minus_1)} (the paper uses ⌈2n/m_(H−1)⌉ = "
                                   f"{minimum_m_H(2 * n, m_H_minus_1)})")


@torch.no_grad()
def backbone_features(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Z = [z̄(x), 1] (n, m̄ + 1) float64 from ``model.features`` (an :class:`eeray.surgery.EEModel`), eval mode."""
    if not hasattr(model, "features") or not hasattr(model, "head"):
        raise DiagnosticsError("model", type(model).__name__, "needs an EE model (eeray.surgery.to_ee_model)")
    with eval_mode(model):
        zbar = torch.cat([model.features(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    zbar = zbar.reshape(zbar.shape[0], -1).to(torch.float64)  # (n, m̄)
    check_finite(zbar, "model.features(x)")
    return torch.cat([zbar, torch.ones_like(zbar[:, :1])], dim=1)  # (n, m̄ + 1): the constant neuron last


@dataclass
class Assumption4Report:
    n: int
    m_H: int
    m_H_minus_1: int
    seed: int
    gram: GramRankReport


def assumption4_report(model: nn.Module, x: torch.Tensor, *, m_H: int | None = None, seed: int = 0,
                       gate_scale: float | None = None, memory_budget_bytes: int | None = None,
                       second_method: str = "auto", batch_size: int = 1024) -> Assumption4Report:
    """Assumption 4 at the current backbone with q ~ N(0, I) (Table 2's check, docs/paper-choices.md (D28a)).

    Args:
      model: an EE model (its backbone gives Z). x: the non-augmented training inputs (n, ...).
      m_H: head width (default the model's). seed: for q. gate_scale: ς' (default the model's).
      memory_budget_bytes / second_method: see :func:`eeray.diagnostics.hadamard.gram_certificate`.
    """
    m_H = int(m_H or model.head.m_H)
    m_hm1 = int(model.head.in_features) + 1
    check_width(x.shape[0], m_H, m_hm1)  # before any forward pass
    z = backbone_features(model, x, batch_size)  # (n, m_{H−1})
    return Assumption4Report(x.shape[0], m_H, m_hm1, seed,
                             random_gate_certificate(z, m_H, seed=seed, gate_scale=gate_scale or model.head.gate_scale,
                                                     memory_budget_bytes=memory_budget_bytes,
                                                     second_method=second_method))


def random_gate_certificate(z: torch.Tensor, m_H: int, *, seed: int = 0, gate_scale: float = 1.0,
                            memory_budget_bytes: int | None = None, second_method: str = "auto",
                            former=None) -> GramRankReport:
    """Certificate for given Z (n, m_{H−1}) with q ~ N(0, I) drawn on the CPU from ``seed`` (device-independent)."""
    check_width(z.shape[0], m_H, z.shape[1])
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(z.shape[1], m_H, generator=gen, dtype=torch.float64).to(z.device)  # (m_{H−1}, m_H)
    s = torch.sigmoid(gate_scale * (z.to(torch.float64) @ q))  # (n, m_H): S_ik = σ̃(z_iᵀ q_{*k})
    return gram_certificate(z, s, memory_budget_bytes=memory_budget_bytes, second_method=second_method, former=former)


def head_gates(model: nn.Module, z: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(S_j (n, m_H), w_j (m_H,)) float64 for head j: gate σ̃(ς' z R_jᵀ) with the frozen R_j once frozen."""
    head = model.head
    rows = slice(j * head.m_H, (j + 1) * head.m_H)
    if bool(head.gate_frozen):
        gate_w = torch.cat([head.gate_weight[rows], head.gate_bias[rows, None]], dim=1)  # (m_H, m̄ + 1)
    else:
        gate_w, _ = head.head_weights(j)
    gate_w = gate_w.detach().to(z.device, torch.float64)
    s = torch.sigmoid(head.gate_scale * (z @ gate_w.T))  # (n, m_H)
    return s, head.out_weight[j].detach().to(z.device, torch.float64)


@dataclass
class Lemma5Report:
    heads: list[GramRankReport]

    @property
    def all_full_rank(self) -> bool:
        return all(h.certified for h in self.heads)


def lemma5_report(model: nn.Module, x: torch.Tensor, *, memory_budget_bytes: int | None = None,
                  second_method: str = "auto", batch_size: int = 1024) -> Lemma5Report:
    """Per head j: is φ_j [diag(w_j) ⊗ I] of rank n at the current θ (call it at θ^τ, after the freeze)?"""
    check_width(x.shape[0], model.head.m_H, model.head.in_features + 1)
    z = backbone_features(model, x, batch_size)
    heads = []
    for j in range(model.head.num_outputs):
        s, w = head_gates(model, z, j)
        heads.append(gram_certificate(z, s * w, memory_budget_bytes=memory_budget_bytes, second_method=second_method))
    return Lemma5Report(heads)


def lipschitz_hat(model: nn.Module, x: torch.Tensor, loss: str, batch_size: int = 1024) -> float:
    """L̂ = (L_ℓ/n)·‖Z‖², Z_i = ‖z_i‖·max_j ‖w_j ∘ S^{(j)}_{i*}‖ (docs/paper-choices.md (D4)): ∇L̂ is L̂-Lipschitz,
    so GD on θ_(H−1) with α = 1/L̂ satisfies Theorem 5(i). Gates as in :func:`head_gates`."""
    check_loss(loss)
    z = backbone_features(model, x, batch_size)  # (n, m_{H−1})
    worst = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    for j in range(model.head.num_outputs):
        s, w = head_gates(model, z, j)
        worst = torch.maximum(worst, ((s * w) ** 2).sum(1))  # Σ_k (W^(H)_{jk} S^{(j)}_{ik})²
    z_sq = (z * z).sum(1) * worst  # Z_i²
    return float(LIPSCHITZ[loss] * z_sq.sum() / z.shape[0])
