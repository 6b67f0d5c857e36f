"""M = JJᵀ (the empirical NTK Gram, N × N with N = n·m_y, sample-major rows) built in chunks under a memory
budget, in float64, without ever holding the whole Jacobian (docs/paper-choices.md (D1, D31)).

Two exact ways of forming each part of M:
  * **Linear-layer factorisation.** For an ``nn.Linear`` applied once to (B, in) inputs a, the Jacobian row of
    output (i, j) w.r.t. its weight is g_ij a_iᵀ, g_ij = ∂f_j(x_i)/∂(layer output). Hence its part of M is
    (G Gᵀ) ∘ (A Aᵀ ⊗ 1_{m_y×m_y}) (+1 in A Aᵀ for the bias): O(N² (out + in)) instead of O(N² in·out).
    G comes from jacrev w.r.t. a zero perturbation added to the layer's output by a forward hook. This is
    the bulk of LeNet (fc1) and of every EE head.
  * **Jacobian contraction** for all other parameters: per-sample Jacobians (vmap(jacrev)) for a block of
    parameter tensors and a chunk of samples, cast to float64, M[a, b] += J_a J_bᵀ over chunk pairs a ≤ b.

Budget accounting (bytes): M (N²·8) + G and A of the factorised layers + two Jacobian chunks
(rows·d_block·(itemsize + 8)) + per-sample activations × vmap chunk. The eigendecomposition that follows
needs about 7·N²·8 (see :func:`dense_bytes`). A budget that no chunking fits raises
:class:`MemoryBudgetError` with the budget that would be needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from eeray.diagnostics.errors import MemoryBudgetError
from eeray.diagnostics.jacobian import FunctionalModel, check_finite, eval_mode, perturbation_hook

F64 = 8  # bytes per float64
TRIANGLE_ROWS = 128  # row block of the symmetric contraction (see _add_upper)


@dataclass(frozen=True)
class GramPlan:
    """How M is built: which Linear layers are factorised, the parameter blocks of the contraction, the
    sample chunk of the contraction, the row chunk of the factorised products, and the vmap chunk (samples
    per vmap(jacrev) call)."""
    n: int
    m_y: int
    factorised: tuple[tuple[str, str, str | None], ...]  # (module name, weight name, bias name or None)
    blocks: tuple[tuple[str, ...], ...]  # parameter names per contraction block
    sample_chunk: int
    factor_chunk: int
    vmap_chunk: int
    bytes_estimate: int

    @property
    def N(self) -> int:
        return self.n * self.m_y


def dense_bytes(N: int) -> int:
    """Peak of the dense decision step (M, ``eigh``'s copy, eigenvectors, solver workspace, then the
    rank-augmentation copy): measured 7·N²·8 bytes on an H100 (cuSOLVER, N = 10,000: 5.6 GB); LAPACK on the CPU
    needs less, so this is the conservative bound the budget is checked against."""
    return 7 * N * N * F64


def plan_gram(fm: FunctionalModel, x: torch.Tensor, m_y: int, budget: int, n_cols: int | None = None) -> GramPlan:
    """Choose the chunking for ``x`` (rows) × ``n_cols`` samples (columns; default the same samples)."""
    n = x.shape[0]
    n_cols = n if n_cols is None else n_cols
    factorised = _linear_layers(fm, x)
    fact_names = {w for _, w, _ in factorised} | {b for *_, b in factorised if b}
    generic = [k for k in fm.names if k not in fact_names]
    per_entry = torch.empty((), dtype=fm.dtype).element_size() + F64  # jacrev output + its float64 copy
    act_plain = fm.activation_bytes_per_sample(x)
    act_one = act_plain * (2 + 2 * m_y)  # forward + m_y vmapped backward passes, one sample
    gram = n * m_y * n_cols * m_y * F64
    fact_store = sum(_factor_bytes(fm, w, n + n_cols, m_y) for _, w, _ in factorised)
    d_max = max((fm.numels[k] for k in generic), default=0)
    jac_min = (1 if n == n_cols == 1 else 2) * m_y * d_max * per_entry
    fact_row = 2 * m_y * n_cols * m_y * F64 if factorised else 0  # one sample's rows of G Gᵀ (+ kernel)
    smallest = gram + fact_store + act_one + max(jac_min, fact_row)
    if budget < smallest:
        raise MemoryBudgetError(budget, smallest, f"building M ({n * m_y}×{n_cols * m_y} float64) with one-sample "
                                f"Jacobian chunks of the largest parameter tensor ({d_max:,} entries)")
    avail = budget - gram - fact_store
    act_reserve = max(act_one, min(avail // 4, 256 * act_one))
    work = avail - act_reserve  # Jacobian chunks, or factorised row blocks (never both at once)
    if not generic:
        chunk, cap = n, 0
    elif n_cols == n and n * m_y * d_max * per_entry <= work:
        chunk, cap = n, work // (n * m_y * per_entry)  # one chunk: J_a of a block is reused for b = a
    else:
        chunk = max(1, min(n, work // (2 * m_y * d_max * per_entry)))
        cap = work // (2 * chunk * m_y * per_entry)
    blocks = _pack(generic, fm.numels, max(cap, d_max))
    factor_chunk = max(1, min(n, work // max(fact_row, 1), act_reserve // max(act_plain, 1)))
    vmap_chunk = max(1, min(max(chunk, factor_chunk), act_reserve // max(act_one, 1)))
    used = max(2 * chunk * m_y * min(cap, sum(fm.numels[k] for k in generic)) * per_entry, factor_chunk * fact_row)
    return GramPlan(n, m_y, tuple(factorised), tuple(blocks), int(chunk), int(factor_chunk), int(vmap_chunk),
                    int(gram + fact_store + act_reserve + used))


def build_gram(fm: FunctionalModel, x: torch.Tensor, m_y: int, budget: int, x_cols: torch.Tensor | None = None,
               plan: GramPlan | None = None) -> torch.Tensor:
    """M (N × N) float64 for ``x``; or the cross block J(x) J(x_cols)ᵀ when ``x_cols`` is given.

    Args:
      fm: the functional model (parameters P). x: (n, ...) inputs. m_y: outputs per sample.
      budget: memory budget in bytes for this call. x_cols: optional second sample set.
      plan: a precomputed :func:`plan_gram` (default: planned here).
    Returns:
      (n·m_y, n_cols·m_y) float64 on the model's device, sample-major.
    """
    symmetric = x_cols is None
    xc = x if symmetric else x_cols
    plan = plan or plan_gram(fm, x, m_y, budget, None if symmetric else xc.shape[0])
    out = torch.zeros(x.shape[0] * m_y, xc.shape[0] * m_y, dtype=torch.float64, device=fm.device)
    with eval_mode(fm.model), _perturbation_hooks(fm.model, [m for m, _, _ in plan.factorised]):
        if plan.factorised:
            _add_factorised(fm, plan, x, None if symmetric else xc, out)
        for names in plan.blocks:
            _add_contraction(fm, plan, names, x, None if symmetric else xc, out)
    if symmetric:
        _mirror_upper(out)
    check_finite(out, "Jacobian Gram M")
    return out


def _mirror_upper(out: torch.Tensor, block: int = 1024) -> None:
    """Make ``out`` symmetric from its upper triangle, in place (temporaries of block² only)."""
    for s in range(0, out.shape[0], block):
        r = slice(s, min(s + block, out.shape[0]))
        diag = out[r, r]
        diag.copy_(torch.triu(diag) + torch.triu(diag, 1).T)
        out[r, :s].copy_(out[:s, r].T)


# ------------------------------------------------------------------ contraction part
def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _rows(fm: FunctionalModel, plan: GramPlan, names: Sequence[str], xs: torch.Tensor) -> torch.Tensor:
    jac, _ = fm.jacobian_rows(xs, names, chunk_size=plan.vmap_chunk)
    rows = xs.shape[0] * plan.m_y
    out = torch.empty(rows, sum(fm.numels[k] for k in names), dtype=torch.float64, device=fm.device)
    start = 0
    for k in names:  # copy piece by piece: the float64 buffer is the only full-size copy
        width = fm.numels[k]
        out[:, start:start + width] = jac.pop(k).reshape(rows, width)
        start += width
    return out  # (B·m_y, d_block)


def _add_contraction(fm, plan, names, x, x_cols, out) -> None:
    row_chunks = _chunks(x.shape[0], plan.sample_chunk)
    col_chunks = row_chunks if x_cols is None else _chunks(x_cols.shape[0], plan.sample_chunk)
    m_y = plan.m_y
    for ia, a in enumerate(row_chunks):
        j_a = _rows(fm, plan, names, x[a])
        for ib, b in enumerate(col_chunks):
            if x_cols is None and ib < ia:
                continue  # upper triangle only; mirrored at the end
            block = out[a.start * m_y:a.stop * m_y, b.start * m_y:b.stop * m_y]
            if x_cols is None and ib == ia:
                _add_upper(block, j_a)
                continue
            j_b = _rows(fm, plan, names, (x if x_cols is None else x_cols)[b])
            block.addmm_(j_a, j_b.T)
            del j_b


def _add_upper(block: torch.Tensor, j: torch.Tensor) -> None:
    """block += j jᵀ on the upper block triangle only ((R, R) += (R, d)(R, d)ᵀ, TRIANGLE_ROWS rows a block): the
    lower one is mirrored at the end, so this does (k+1)/2k of a full product's flops for k blocks (0.56× at the
    1000 rows of a 100-sample, 10-output report). Building that M for LeNet took 0.74–0.77× the time with one
    full product (benchmarks/diagnostics.py (d), CPU), entries equal to 1.4e-14 relative."""
    for s in range(0, j.shape[0], TRIANGLE_ROWS):
        r = slice(s, min(s + TRIANGLE_ROWS, j.shape[0]))
        block[r, s:].addmm_(j[r], j[s:].T)


# ------------------------------------------------------------------ Linear-layer factorisation
def _linear_layers(fm: FunctionalModel, x: torch.Tensor) -> list[tuple[str, str, str | None]]:
    """Linear layers whose weight is in P, called exactly once per forward on 2-D inputs."""
    selected = set(fm.names)
    uses: dict[int, int] = {}
    for m in fm.model.modules():  # a weight tied to a second module gets gradient from both: not factorisable
        for p in m.parameters(recurse=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
    candidates = {name: m for name, m in fm.model.named_modules()
                  if isinstance(m, nn.Linear) and f"{name}.weight".lstrip(".") in selected
                  and uses[id(m.weight)] == 1 and (m.bias is None or uses[id(m.bias)] == 1)}
    calls: dict[str, list[int]] = {k: [] for k in candidates}
    handles = [m.register_forward_hook(lambda mod, args, out, k=k: calls[k].append(args[0].dim()))
               for k, m in candidates.items()]
    try:
        with torch.no_grad(), eval_mode(fm.model):
            fm.model(x[:2])
    finally:
        for h in handles:
            h.remove()
    found = []
    for name, m in candidates.items():
        if calls[name] == [2]:
            bias = f"{name}.bias".lstrip(".")
            with_bias = m.bias is not None and bias in selected
            found.append((name, f"{name}.weight".lstrip("."), bias if with_bias else None))
    return found


def _factor_bytes(fm, weight: str, samples: int, m_y: int) -> int:
    out_f, in_f = fm.shapes[weight]
    return samples * (m_y * out_f + in_f + 1) * F64


class _perturbation_hooks:
    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.model, self.names, self.handles = model, list(names), []

    def __enter__(self):
        modules = dict(self.model.named_modules())
        self.handles = [modules[k].register_forward_hook(perturbation_hook(k)) for k in self.names]

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _factors(fm, plan, xs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(G (B·m_y, out) float64, A (B, in[+1]) float64)] for each factorised layer, for samples xs."""
    modules = dict(fm.model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    handles = [modules[k].register_forward_hook(lambda mod, args, out, k=k: inputs.__setitem__(k, args[0].detach()))
               for k, _, _ in plan.factorised]
    try:
        with torch.no_grad():
            fm.model(xs)
    finally:
        for h in handles:
            h.remove()
    eps = {k: torch.zeros(modules[k].out_features, dtype=fm.dtype, device=fm.device) for k, _, _ in plan.factorised}
    _, grads = fm.jacobian_rows(xs, [], eps=eps, chunk_size=plan.vmap_chunk)
    result = []
    for k, _, bias in plan.factorised:
        a = inputs[k].to(torch.float64)  # (B, in)
        if bias is not None:
            a = torch.cat([a, torch.ones_like(a[:, :1])], 1)  # the bias is a weight on a constant 1
        result.append((grads[k].reshape(-1, grads[k].shape[-1]).to(torch.float64), a))
    return result


def _add_factorised(fm, plan, x, x_cols, out) -> None:
    m_y = plan.m_y
    rows = _stack(fm, plan, x)
    cols = rows if x_cols is None else _stack(fm, plan, x_cols)
    for a in _chunks(x.shape[0], plan.factor_chunk):
        c0 = a.start if x_cols is None else 0  # symmetric: upper block triangle only (mirrored later)
        block = out[a.start * m_y:a.stop * m_y, c0 * m_y:]  # (Ba·m_y, Nc') view
        for (g_r, a_r), (g_c, a_c) in zip(rows, cols):
            prod = g_r[a.start * m_y:a.stop * m_y] @ g_c[c0 * m_y:].T  # (Ba·m_y, Nc'): g_ij · g_i'j'
            kern = a_r[a] @ a_c[c0:].T  # (Ba, nc'): a_i · a_i'
            prod.view(a.stop - a.start, m_y, -1, m_y).mul_(kern[:, None, :, None])
            block += prod
            del prod


def _stack(fm, plan, x) -> list[tuple[torch.Tensor, torch.Tensor]]:
    parts = [_factors(fm, plan, x[s]) for s in _chunks(x.shape[0], plan.factor_chunk)]
    return [(torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts]))
            for i in range(len(plan.factorised))]


def _pack(names: Sequence[str], numels: dict[str, int], cap: int) -> list[tuple[str, ...]]:
    blocks: list[list[str]] = []
    size = 0
    for k in names:
        if not blocks or size + numels[k] > cap:
            blocks.append([])
            size = 0
        blocks[-1].append(k)
        size += numels[k]
    return [tuple(b) for b in blocks]
