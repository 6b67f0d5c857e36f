"""Model surgery (Algorithm 1, line 2; eqs 16–18): any ``nn.Module`` → the EE model.

The rule (paper §3.2.2 and Appendix C): if the last two layers of f̄ are fully connected they are replaced;
if only the last layer is (ResNet-18's ``fc``) its input becomes z and the EE head replaces it; with no FC
layer at the end, two FC layers are added on the flattened output. In every case the EE model is

    f(x)_j = W^(H)_{j*} σ_j(W^(H−1,j), z(x)),   z = [z̄(x), 1],   σ(q, q') = σ̃(q q') ∘ (q q'),

with one hidden head W^(H−1,j) ∈ R^{m_H × m_{H−1}} per output j, and after the switch the gate is frozen:
σ_{R^(j)}(q, z) = σ̃(R^(j) z) ∘ (q z), R^(j) = W^(H−1,j) at θ^τ (docs/paper-choices.md (A2)).

The last layers are found by running one example batch with forward hooks, and the result is checked: after
the replaced layers become identities the body must output exactly the recorded z̄. When that fails (say the
forward applies ``F.relu`` between the layers, or reads ``self.fc.out_features``) — or any other check refuses —
the model is left exactly as it was and the error says what was found and what to pass; every hint names an
argument the caller has not passed yet. Parameters are labelled ``body`` (θ_(1:H−2)), ``hidden`` (θ_(H−1)) and
``head`` (θ_(H)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

BODY, HIDDEN, HEAD = "body", "hidden", "head"
LABELS = (BODY, HIDDEN, HEAD)
_MARK = "_eeray_surgery"


class SurgeryError(ValueError):
    """The model cannot be turned into an EE model as asked; the message says what was found and what to pass."""


# --------------------------------------------------------------------------- the EE head
class EEHead(nn.Module):
    """All m_y hidden heads as one GEMM (m̄ → m_y·m_H), the gate, and the per-head output weights.

    ``hidden.weight[j*m_H:(j+1)*m_H]`` is W^(H−1,j) without its constant-neuron column, which is
    ``hidden.bias[j*m_H:(j+1)*m_H]``. ``out_weight[j]`` is W^(H)_{j*}; output j reads only head j.
    One GEMM over all heads instead of m_y small ones: the per-head einsum cost ~20% of a batch-64
    ResNet-18 step on an H100 (docs/architecture.md, Environment notes).
    """

    def __init__(self, in_features: int, num_outputs: int, m_H: int, gate_scale: float = 1.0,
                 output_bias: bool = False):
        super().__init__()
        self.in_features, self.num_outputs, self.m_H = in_features, num_outputs, m_H
        self.gate_scale = float(gate_scale)
        self.hidden = nn.Linear(in_features, num_outputs * m_H)  # PyTorch default init (docs/paper-choices.md (A10))
        bound = 1 / math.sqrt(m_H)
        self.out_weight = nn.Parameter(torch.empty(num_outputs, m_H).uniform_(-bound, bound))  # W^(H)
        self.out_bias = nn.Parameter(torch.zeros(num_outputs)) if output_bias else None  # eq 16: none
        # R^(j) (the frozen gate) lives in buffers so it travels with state_dict() and checkpoints.
        self.register_buffer("gate_weight", torch.zeros_like(self.hidden.weight))
        self.register_buffer("gate_bias", torch.zeros_like(self.hidden.bias))
        self.register_buffer("gate_frozen", torch.zeros((), dtype=torch.bool))
        # the same fact on the host: reading the buffer in forward() would make every step wait for the GPU
        # (and could not be captured in a CUDA graph); kept in step by freeze_gate() and state-dict loading
        self._gate_frozen = False

    def hidden_preact(self, z: torch.Tensor) -> torch.Tensor:  # (B, m̄) -> (B, m_y·m_H): W^(H−1,j) z
        return self.hidden(z)

    def gate(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # -> (B, m_y·m_H) in (0, 1)
        if self._gate_frozen:
            with torch.no_grad():
                h = F.linear(z, self.gate_weight, self.gate_bias)  # R^(j) z
        return torch.sigmoid(h * self.gate_scale if self.gate_scale != 1.0 else h)

    def combine(self, h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # (B, m_y·m_H)² -> (B, m_y)
        a = (g * h).view(h.shape[0], self.num_outputs, self.m_H)  # σ(W^(H−1,j), z) per head
        out = (a * self.out_weight).sum(-1)  # row j of W^(H) reads head j only
        return out + self.out_bias if self.out_bias is not None else out

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, m̄) -> (B, m_y)
        h = self.hidden_preact(z)
        return self.combine(h, self.gate(z, h))

    @torch.no_grad()
    def freeze_gate(self) -> None:
        """Algorithm 1 line 9: R^(j) = θ^τ_(H−1,j). Uses the same kernel on bitwise-equal weights, so the
        model's output is identical immediately before and after the switch."""
        self.gate_weight.copy_(self.hidden.weight)
        self.gate_bias.copy_(self.hidden.bias)
        self.gate_frozen.fill_(True)
        self._gate_frozen = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._gate_frozen = bool(self.gate_frozen)  # once per load, not per step

    def head_weights(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(W^(H−1,j) with its constant-neuron column last, (m_H, m̄+1); W^(H)_{j*}, (m_H,))."""
        rows = slice(j * self.m_H, (j + 1) * self.m_H)
        w = torch.cat([self.hidden.weight[rows], self.hidden.bias[rows, None]], dim=1)
        return w, self.out_weight[j]

    def extra_repr(self) -> str:
        return (f"m_bar={self.in_features}, m_y={self.num_outputs}, m_H={self.m_H}, "
                f"gate_scale={self.gate_scale}, output_bias={self.out_bias is not None}")


# --------------------------------------------------------------------------- the EE model
@dataclass(frozen=True)
class SurgeryInfo:
    mode: str  # two_fc | one_fc | no_fc
    replaced: tuple[str, ...]  # module names replaced by identities
    z_from: str  # where z̄ is read
    m_bar: int  # width of z̄; m_{H−1} = m_bar + 1 (the constant neuron)
    num_outputs: int  # m_y
    m_H: int
    m_H_source: str
    n: int | None

    @property
    def m_H_minus_1(self) -> int:
        return self.m_bar + 1


class EEModel(nn.Module):
    """body (θ_(1:H−2), producing z̄) + :class:`EEHead` (θ_(H−1), θ_(H))."""

    def __init__(self, body: nn.Module, head: EEHead, info: SurgeryInfo, flatten: bool):
        super().__init__()
        self.body, self.head, self.info, self.flatten = body, head, info, flatten
        self.body_runner = None  # set while exploiting on CUDA: the frozen body as CUDA graphs (eeray.exploitation)
        setattr(self, _MARK, True)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, m̄): z̄(x, θ_(1:H−2))
        # the graphed body only in exploitation training steps (model in train mode, body frozen in eval mode):
        # diagnostics (torch.func swaps parameters) and evaluation always run the body eagerly
        graphed = self.body_runner is not None and self.training and not self.body.training
        z = self.body_runner(x) if graphed else self.body(x)
        return z.flatten(1) if self.flatten else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, m_y)
        return self.head(self.features(x))

    def param_labels(self) -> dict[str, str]:
        labels = {}
        for name, _ in self.named_parameters():
            if name.startswith("body."):
                labels[name] = BODY
            elif name.startswith("head.hidden."):
                labels[name] = HIDDEN
            else:
                labels[name] = HEAD
        return labels

    def params_of(self, *labels: str) -> Iterator[nn.Parameter]:
        unknown = set(labels) - set(LABELS)
        if unknown:
            raise ValueError(f"unknown parameter labels {sorted(unknown)}; valid: {LABELS}")
        lab = self.param_labels()
        return (p for n, p in self.named_parameters() if lab[n] in labels)


# --------------------------------------------------------------------------- m_H
def resolve_m_H(m_H: int | None, m_H_factor: float | None, n: int | None, m_H_minus_1: int,
                replaced_width: int | None = None) -> tuple[int, str]:
    """m_H and where it came from: given; the rule ⌈c·n/m_{H−1}⌉ (paper: c = 2, ceiling, docs/paper-choices.md (E4));
    or, with neither given, the width of the replaced hidden layer (two FC layers replaced) else c = 2."""
    if m_H is not None:
        if m_H < 1:
            raise SurgeryError(f"m_H = {m_H} is invalid: must be an integer >= 1")
        return int(m_H), "given"
    if m_H_factor is None and replaced_width is not None:
        return int(replaced_width), "replaced layer width"
    c = 2.0 if m_H_factor is None else m_H_factor
    if c <= 0:
        raise SurgeryError(f"m_H_factor = {c} is invalid: must be > 0")
    if n is None:
        raise SurgeryError("m_H by the rule ⌈c·n/m_{H−1}⌉ needs the number of training samples: pass n=... "
                           "(or m_H=... directly)")
    value = math.ceil(Fraction(str(c)) * n / m_H_minus_1)  # exact: ⌈2·60000/513⌉ = 234
    return max(1, value), f"rule c={c:g}: ceil({c:g}*{n}/{m_H_minus_1})"


# --------------------------------------------------------------------------- surgery
@dataclass(eq=False)  # identity: list.index() must not compare the recorded tensors (a module may run twice)
class _Call:
    name: str
    module: nn.Module
    inp: torch.Tensor | None
    out: object


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[list[_Call], object]:
    """The leaf-module calls of one no-grad eval-mode forward, and its output. Every module's train/eval flag is
    put back as it was (``model.train(was)`` would also flip submodules deliberately kept in eval mode)."""
    calls: list[_Call] = []
    names = {id(m): n for n, m in model.named_modules()}
    handles = []
    for m in model.modules():
        if next(m.children(), None) is None:  # leaf modules only
            handles.append(m.register_forward_hook(
                lambda mod, args, out: calls.append(
                    _Call(names[id(mod)], mod, args[0] if args and torch.is_tensor(args[0]) else None, out))))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()  # BN running stats, no dropout: the trace must not change the model
        with torch.no_grad():
            out = model(example)
    finally:
        for m, was_training in flags:
            m.training = was_training
        for h in handles:
            h.remove()
    return calls, out


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(recurse=False), None) is not None


def _set_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, attr)
    setattr(parent, attr, new)
    return old


def _find_last_layers(calls: list[_Call], out: object) -> tuple[str, list[_Call]]:
    """('two_fc' | 'one_fc' | 'no_fc', calls to replace, in execution order)."""
    last = next((c for c in reversed(calls) if c.out is out), None)
    if last is None and torch.is_tensor(out):
        last = next((c for c in reversed(calls) if torch.is_tensor(c.out) and c.out.shape == out.shape
                     and torch.equal(c.out, out)), None)
    if last is None or not isinstance(last.module, nn.Linear):
        return "no_fc", []
    i = calls.index(last)
    j = next((k for k in range(i - 1, -1, -1) if _has_params(calls[k].module)), None)
    if j is not None and isinstance(calls[j].module, nn.Linear) and \
            calls[j].module.out_features == last.module.in_features:
        return "two_fc", calls[j:i + 1]  # the Linear, what runs between (activation, dropout), the Linear
    return "one_fc", [last]


def _describe(calls: list[_Call], out: object) -> str:
    tail = [f"{c.name or '<root>'} ({type(c.module).__name__})" for c in calls[-4:]]
    shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
    return f"last modules run: {', '.join(tail) or 'none'}; output {shape}"


def to_ee_model(base: nn.Module, example: torch.Tensor, *, m_H: int | None = None,
                m_H_factor: float | None = None, n: int | None = None, num_outputs: int | None = None,
                gate_scale: float = 1.0, output_bias: bool = False,
                last_layers: tuple[str, ...] | None = None) -> EEModel:
    """Turn ``base`` into the EE model of eqs 16–18. ``base`` is modified in place and becomes the body.

    A refusal (:class:`SurgeryError`) leaves ``base`` exactly as it was: every check that can fail runs before
    the first module is replaced, and the replaced modules are put back when the verification fails or raises.

    Args:
      example: one input batch (B >= 1), used to find and verify the last layers.
      m_H / m_H_factor / n: the head width, given or by ⌈c·n/m_{H−1}⌉ (see :func:`resolve_m_H`).
      num_outputs: m_y. Required when the model has no FC layer at the end; otherwise the last layer's.
      gate_scale: ς' in σ̃(q) = sigmoid(ς'q). output_bias: add a bias to W^(H) (eq 16 has none).
      last_layers: override the search: ``("fc1", "fc2")`` replaces two FC layers, ``("fc",)`` one,
        ``()`` adds two FC layers on the flattened output.
    """
    if getattr(base, _MARK, False):
        raise SurgeryError("this model has already been through EE surgery; surgery runs once per model "
                           "(build a fresh base model for another EE model)")
    if num_outputs is not None and not (isinstance(num_outputs, int) and num_outputs >= 1):
        raise SurgeryError(f"num_outputs = {num_outputs!r} is invalid: must be an integer >= 1 (m_y)")
    try:
        calls, out = _trace(base, example)
    except Exception as exc:  # the model's own forward failed: say so before anything is changed
        shape = tuple(example.shape) if torch.is_tensor(example) else type(example).__name__
        raise SurgeryError(f"the model's forward() failed on the example batch of shape {shape}, so its last "
                           f"layers cannot be found: {type(exc).__name__}: {exc}. Pass an example batch the "
                           "model accepts (x_train[:2])") from exc
    if last_layers is None:
        mode, chosen = _find_last_layers(calls, out)
    else:
        mode, chosen = _calls_named(calls, out, tuple(last_layers))
    if mode == "no_fc" and num_outputs is None:
        alternative = "" if last_layers is not None else \
            ", or last_layers=('name_of_penultimate_fc', 'name_of_last_fc') if the model has them"
        raise SurgeryError(f"no fully-connected last layer {'asked for' if last_layers is not None else 'found'} "
                           f"({_describe(calls, out)}), so two FC layers are added on the flattened output, and "
                           f"the number of outputs must be given: pass num_outputs=m_y{alternative}")
    m_y = int(num_outputs if num_outputs is not None or mode == "no_fc" else chosen[-1].module.out_features)
    add_on_output = f"pass last_layers=() and num_outputs={m_y} to keep the whole network as the body and add " \
                    "two FC layers on its output"
    for c in chosen:
        if sum(1 for d in calls if d.module is c.module) != 1:
            if c.module is chosen[-1].module or mode == "one_fc":  # replacing only the last layer cannot help
                raise SurgeryError(f"the last layer '{c.name}' runs more than once in forward(), so it cannot be "
                                   f"replaced; {add_on_output}")
            kind = "an activation between the last layers" if not isinstance(c.module, nn.Linear) else "module"
            raise SurgeryError(f"{kind} '{c.name}' runs more than once in forward(), so it cannot be replaced; "
                               f"pass last_layers=('{chosen[-1].name}',) to replace only the last layer")

    # everything that can be refused is checked before the model is touched
    if mode == "no_fc":
        z_ref, flatten, replaced_width = out, True, None
        if not torch.is_tensor(out):
            raise SurgeryError(f"the model outputs a {type(out).__name__}, not a tensor, so FC layers cannot be "
                               "added on its output; pass last_layers=(...) naming its last nn.Linear layers")
    else:
        first, last = chosen[0], chosen[-1]
        z_ref, flatten = first.inp, False
        replaced_width = first.module.out_features if mode == "two_fc" else None
        if z_ref is None:
            raise SurgeryError(f"'{first.name}' is not called with a tensor as its first argument, so z̄ cannot be "
                               f"read there; {add_on_output}")
    if z_ref.dim() < 2:
        raise SurgeryError(f"z̄ must have a batch dimension; got shape {tuple(z_ref.shape)}")
    m_bar = int(z_ref[0].numel())
    m_H_val, source = resolve_m_H(m_H, m_H_factor, n, m_bar + 1, replaced_width)
    replaced = tuple(_span(calls, chosen[0], chosen[-1])) if chosen else ()
    olds: dict[str, nn.Module] = {}
    try:
        olds = {name: _set_module(base, name, nn.Identity()) for name in replaced}
        if mode != "no_fc":
            _verify(base, example, z_ref, replaced, first.name, last.name, mode, add_on_output)
        ref_param = next(base.parameters(), None)
        head = EEHead(m_bar, m_y, m_H_val, gate_scale, output_bias)
        if ref_param is not None:
            head = head.to(device=ref_param.device, dtype=ref_param.dtype)
    except BaseException:
        for name, old in reversed(olds.items()):
            _set_module(base, name, old)
        raise
    info = SurgeryInfo(mode, replaced, chosen[0].name if chosen else "<flattened output>", m_bar, m_y, m_H_val,
                       source, n)
    setattr(base, _MARK, True)
    return EEModel(base, head, info, flatten)


def _verify(base: nn.Module, example: torch.Tensor, z_ref: torch.Tensor, names: tuple[str, ...], first: str,
            last: str, mode: str, add_on_output: str) -> None:
    """With ``names`` replaced by identities, ``base`` must output exactly the recorded z̄; a SurgeryError (whose
    hint is one the caller has not tried yet) otherwise, also when the forward itself raises."""
    hint = (f"Pass last_layers=('{last}',) to replace only the last layer, or make the operation an nn.Module"
            if mode == "two_fc" else f"{add_on_output[0].upper()}{add_on_output[1:]}, or make the operation an "
            "nn.Module")
    try:
        _, z_now = _trace(base, example)
    except Exception as exc:
        raise SurgeryError(f"after replacing {list(names)} by identities the network's forward() raised "
                           f"{type(exc).__name__}: {exc} (it uses these layers other than by calling them, e.g. "
                           f"reads their weights or sizes); the model is left unchanged. {hint}") from exc
    if not (torch.is_tensor(z_now) and z_now.shape == z_ref.shape and
            torch.allclose(z_now, z_ref, rtol=1e-5, atol=1e-6)):
        raise SurgeryError(
            f"after replacing {list(names)} by identities the network no longer outputs the input of "
            f"'{first}' (z̄): forward() applies operations outside modules around these layers "
            f"(e.g. F.relu); the model is left unchanged. {hint}")


def _span(calls: list[_Call], first: _Call, last: _Call) -> list[str]:
    """Names of the modules run from ``first`` to ``last`` inclusive (activations, dropout in between)."""
    i, j = calls.index(first), calls.index(last)
    names: list[str] = []
    for c in calls[i:j + 1]:
        if c.name not in names:
            names.append(c.name)
    return names


def _calls_named(calls: list[_Call], out: object, names: tuple[str, ...]) -> tuple[str, list[_Call]]:
    if len(names) == 0:
        return "no_fc", []
    by_name = {c.name: c for c in calls}
    missing = [n for n in names if n not in by_name]
    if missing or len(names) > 2:
        ran = [c.name for c in calls if isinstance(c.module, nn.Linear)]
        raise SurgeryError(f"last_layers={names!r} is invalid: give () or one or two names of nn.Linear "
                           f"modules that run in forward(); Linear modules that ran: {ran}")
    chosen = [by_name[n] for n in names]
    for c in chosen:
        if not isinstance(c.module, nn.Linear):
            raise SurgeryError(f"last_layers names '{c.name}', a {type(c.module).__name__}; it must be nn.Linear")
    if calls.index(chosen[-1]) < calls.index(chosen[0]):
        raise SurgeryError(f"last_layers={names!r}: give them in execution order")
    return ("two_fc" if len(chosen) == 2 else "one_fc"), chosen
