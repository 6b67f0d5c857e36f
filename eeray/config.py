"""Typed, validated trial configuration.

A trial is a function of its config (docs/architecture.md principle 1). Every knob the paper leaves open is a
field here, so it is logged with every run (docs/paper-choices.md). Configs are frozen dataclasses; ``to_flat`` /
``from_flat`` give the dotted-key form used by Tune sweeps, MLflow params and the Parquet ``trials`` table.

Validation happens before any work: ``validate(cfg)`` raises :class:`ConfigError` naming the field, the
value and what would be valid.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from eeray.errors import FieldError, is_integer


class ConfigError(FieldError):
    """A config or study value is invalid. The message names the field, the value and what is valid."""

    @staticmethod
    def describe(field: str, value: Any, valid: str) -> str:
        return f"config field '{field}' = {value!r} is invalid: {valid}"


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DataConfig:
    name: str = "sine"  # a name from eeray.data.DATASETS
    n_train: int | None = None  # None: the dataset's own size (the paper's n); fewer: a seeded subset
    n_test: int | None = None  # None: the dataset's own test set (synthetic sets: as many as n_train)
    seed: int = 0  # data/split seed, fixed across trials (docs/paper-choices.md (C20)); trial seeds vary init, order
    augment: bool = False  # the paper's per-dataset augmentation (docs/paper-choices.md (E4))
    root: str | None = None  # real datasets: None -> $EERAY_DATA_ROOT
    val_fraction: float = 0.0  # 0.2 -> the grid search's 80/20 split; the held-out part replaces test
    moons_noise: float | None = None  # make_moons noise (paper: unstated; docs/paper-choices.md (C19))
    normalize: bool = True  # per-dataset mean/std (docs/paper-choices.md (C21))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "fcnet"  # fcnet | lenet | preact_resnet18
    softplus_beta: float = 100.0  # ς of softplus ln(1+exp(ςq))/ς, all base-model activations
    fc_hidden_layers: int = 2  # "four layers" read as 2 hidden (docs/paper-choices.md (B16)); 3 is the sensitivity
    fc_width: int = 300
    fc_bias_init: str = "default"  # default (PyTorch U(±1/√fan_in)) | zero | normal (N(0, 1/m))
    fc_first_layer_std: float | None = None  # None: 1/√fc_width like every layer (paper); 1.0 variant
    lenet_mc: int = 1  # m_c: 8m_c filters per conv, 128m_c hidden units
    lenet_pool: str = "none"  # none | avg2 (docs/paper-choices.md (B14))
    resnet_final_bn: bool = True  # final BN + softplus before pooling (He et al. 2016b)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | lbfgs | "package.module:factory" (params -> Optimizer)
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    lr_rule: str = "fixed"  # fixed | inverse_lipschitz: α = 1/L̂ (docs/paper-choices.md (D4)), exploitation phase only
    lbfgs_mode: str = "fullbatch"  # fullbatch (cached features, docs/paper-choices.md (A7)) | minibatch
    lbfgs_iters: int = 20  # L-BFGS iterations per exploitation epoch (fullbatch) or per minibatch
    lbfgs_history: int = 10
    lbfgs_line_search: str | None = "strong_wolfe"  # strong_wolfe | None
    extra: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments for a user factory


@dataclass(frozen=True)
class EEConfig:
    enabled: bool = True  # False: the "Standard" baseline (no surgery, G for the whole run)
    m_H: int | None = None  # width of each per-output hidden head
    m_H_factor: float | None = None  # c in m_H = ⌈c·n/m_{H−1}⌉; both None: see eeray.surgery.resolve_m_H
    gate_scale: float = 1.0  # ς' in σ̃(q) = sigmoid(ς'q)
    output_bias: bool = False  # eq 16 has none (docs/paper-choices.md (A9)); a flag for sensitivity
    tau: float = 0.8  # when exploration ends, in tau_unit
    tau_unit: str = "fraction"  # fraction (τ0 of the epochs) | epochs | steps
    epsilon: float = 1e-3  # perturbation scale ε
    perturb_seed: int | None = None  # None: derived from the trial seed (logged)
    perturb_base: str = "final"  # final (last exploration iterate) | tau_minus_1 (literal: skip last update)
    exploit_backbone_mode: str = "eval"  # eval (theory, docs/paper-choices.md (A3)) | train (ablation)
    reset_optimizer_state: bool = True  # False: G̃ continues G's state for θ_(H−1) (same optimizer class)
    freeze_gate: bool = True  # False: 003-style ablation, the gate keeps following the trained weights
    exploit_optim: OptimConfig | None = None  # G̃; None: the same as G (the paper's G̃ = G)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000  # T̂ (0: evaluate and run the diagnostics at initialisation only)
    batch_size: int = 100
    loss: str = "auto"  # auto (bce when m_y = 1, else ce) | bce | ce | mse
    eval_every: int = 1  # full-training-set evaluation cadence, in eval_unit
    eval_unit: str = "epochs"  # epochs | steps
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    checkpoint_every_epochs: int = 1  # the sink is offered a checkpoint this often (and at the switch)
    eval_batch_size: int = 1024
    cuda_graphs: bool = True  # on CUDA: SGD steps and the frozen backbone's forward replayed as CUDA graphs
    channels_last: bool = True  # on CUDA, image models: NHWC layout (cuDNN's faster path), same precision


@dataclass(frozen=True)
class DiagConfig:
    alignment: bool = False  # alignment report (Def. 2) and Q_T on the schedule below
    every: int = 1  # schedule spacing in unit (log: number of points)
    unit: str = "epochs"  # epochs | steps | log (log-spaced over the run, incl. 0 and the end)
    max_samples: int | None = None  # diagnostics on the first k training samples (None: all)
    tol_membership: float = 1e-8  # aligned <=> residual ρ <= tol (docs/paper-choices.md (D25))
    method: str = "auto"  # auto | dense | matrix_free
    memory_budget_gb: float = 2.0
    delta_m: bool = True  # ‖M(θ_t) − M(θ_0)‖ with the alignment report
    certificate: bool = False  # Theorem-3 certificate (docs/paper-choices.md (D6))
    assumption4: bool = False  # safe-exploration certificate at initialisation (Table 2)
    # BN statistics for Assumption 4 at init: recalibrate (running stats = the training set's, on a copy; at init
    # they are placeholders 0/1 and eval-mode BN would be the identity) | init (the placeholders as they are)
    assumption4_bn: str = "recalibrate"
    lemma5: bool = True  # rank of the exploitation features per head at θ^τ (EE trials)
    actors: int = 0  # 0: local; k: a Ray actor pool of k data shards (studies only)


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)  # G
    ee: EEConfig = field(default_factory=EEConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)
    seed: int = 0

    def replace(self, **dotted: Any) -> "TrialConfig":
        """A copy with dotted-key overrides, e.g. ``cfg.replace(**{"ee.epsilon": 1e-5})``."""
        flat = to_flat(self)
        for key, value in dotted.items():
            if key not in flat and not _is_optional_section(self, key):
                raise ConfigError(key, value, f"unknown key; valid keys: {', '.join(sorted(flat))}")
            flat[key] = value
        return from_flat(flat)


# --------------------------------------------------------------------------- flat form
_SECTIONS = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "ee": EEConfig,
    "train": TrainConfig, "diag": DiagConfig,
}


def to_flat(cfg: TrialConfig) -> dict[str, Any]:
    """Dotted keys -> values; ``ee.exploit_optim`` expands to ``ee.exploit_optim.*`` (all None when unset)."""
    out: dict[str, Any] = {"seed": cfg.seed}
    for sec in _SECTIONS:
        for f in dataclasses.fields(getattr(cfg, sec)):
            value = getattr(getattr(cfg, sec), f.name)
            if f.name == "exploit_optim":  # always expanded (all None when G̃ = G), so every trial has the same keys
                for g in dataclasses.fields(OptimConfig):
                    out[f"{sec}.{f.name}.{g.name}"] = None if value is None else _plain(getattr(value, g.name))
            else:
                out[f"{sec}.{f.name}"] = _plain(value)
    return out


def from_flat(flat: Mapping[str, Any]) -> TrialConfig:
    """Inverse of :func:`to_flat`; unknown keys are an error that lists the valid ones."""
    sections: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    exploit: dict[str, Any] = {}
    seed = 0
    valid = sorted(to_flat(TrialConfig()))
    for key, value in flat.items():
        if key == "seed":
            seed = value
            continue
        parts = key.split(".")
        if parts[0] in _SECTIONS and len(parts) == 2 and parts[1] in _field_names(_SECTIONS[parts[0]]):
            sections[parts[0]][parts[1]] = value
        elif parts[:2] == ["ee", "exploit_optim"] and len(parts) == 3 and parts[2] in _field_names(OptimConfig):
            exploit[parts[2]] = value
        else:
            raise ConfigError(key, value, f"unknown key; valid keys: {', '.join(valid)}")
    if any(v is not None for v in exploit.values()) and sections["ee"].get("exploit_optim", None) is None:
        exploit = {k: v for k, v in exploit.items() if v is not None}
        sections["ee"]["exploit_optim"] = OptimConfig(**_coerce(OptimConfig, exploit))
    built = {s: cls(**_coerce(cls, sections[s])) for s, cls in _SECTIONS.items()}
    return TrialConfig(seed=seed, **built)


def from_dict(d: Mapping[str, Any]) -> TrialConfig:
    """Nested dict (as written by :func:`to_dict`) or flat dotted dict -> TrialConfig."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, Mapping) and key not in ("optim.extra", "ee.exploit_optim.extra"):
                walk(key + ".", v)
            else:
                flat[key] = v

    walk("", d)
    return from_flat(flat)


def to_dict(cfg: TrialConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _is_optional_section(cfg: TrialConfig, key: str) -> bool:
    parts = key.split(".")
    return parts[:2] == ["ee", "exploit_optim"] and len(parts) == 3 and parts[2] in _field_names(OptimConfig)


def _types_of(tp: Any) -> tuple:
    return typing.get_args(tp) if typing.get_args(tp) else (tp,)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    hints = typing.get_type_hints(cls)
    for k, v in out.items():  # 2 -> 2.0 where the field is a float, so equal configs compare and log equal
        if is_integer(v) and k in hints and float in _types_of(hints[k]) \
                and int not in _types_of(hints[k]):
            out[k] = float(v)
    if cls is OptimConfig and "betas" in out and out["betas"] is not None:
        out["betas"] = tuple(out["betas"])
    if cls is EEConfig and isinstance(out.get("exploit_optim"), Mapping):
        out["exploit_optim"] = OptimConfig(**_coerce(OptimConfig, dict(out["exploit_optim"])))
    return out


# --------------------------------------------------------------------------- validation
ARCHS = ("fcnet", "lenet", "preact_resnet18")
OPTIMIZERS = ("sgd", "adam", "adamw", "lbfgs")
LOSSES = ("bce", "ce", "mse")  # the losses ℓ (eeray.losses); train.loss also takes "auto"


def _choice(name: str, value: Any, options: tuple) -> None:
    if value not in options:
        raise ConfigError(name, value, f"must be one of {', '.join(map(repr, options))}")


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = _number(value) and (isinstance(value, numbers.Integral) or not integer) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "an integer" if integer else "a finite number"
        raise ConfigError(name, value, f"must be {what} {'>= 0' if allow_zero else '> 0'}")


def validate_optim(prefix: str, o: OptimConfig) -> None:
    if ":" in str(o.name):
        module, _, attr = o.name.partition(":")
        if not module or not attr:
            raise ConfigError(f"{prefix}.name", o.name, "a user factory is written 'package.module:function'")
    else:
        if o.name not in OPTIMIZERS:
            raise ConfigError(f"{prefix}.name", o.name, f"must be one of {', '.join(map(repr, OPTIMIZERS))} "
                              "or a user factory 'package.module:function' (params -> torch.optim.Optimizer)")
    _positive(f"{prefix}.lr", o.lr)
    _positive(f"{prefix}.momentum", o.momentum, allow_zero=True)
    if o.momentum >= 1:
        raise ConfigError(f"{prefix}.momentum", o.momentum, "must be in [0, 1)")
    _positive(f"{prefix}.weight_decay", o.weight_decay, allow_zero=True)
    if o.nesterov and o.momentum == 0:
        raise ConfigError(f"{prefix}.nesterov", o.nesterov, "Nesterov momentum needs momentum > 0")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"{prefix}.betas", o.betas, "two numbers in [0, 1)")
    _choice(f"{prefix}.lr_rule", o.lr_rule, ("fixed", "inverse_lipschitz"))
    _choice(f"{prefix}.lbfgs_mode", o.lbfgs_mode, ("fullbatch", "minibatch"))
    _positive(f"{prefix}.lbfgs_iters", o.lbfgs_iters, integer=True)
    _positive(f"{prefix}.lbfgs_history", o.lbfgs_history, integer=True)
    _choice(f"{prefix}.lbfgs_line_search", o.lbfgs_line_search, ("strong_wolfe", None))


def validate(cfg: TrialConfig) -> None:
    """Check every field and the cross-field rules that need no data. Raises ConfigError."""
    from eeray import datasets as _data  # the torch-free dataset registry

    d, m, e, t, g = cfg.data, cfg.model, cfg.ee, cfg.train, cfg.diag
    _check_types(cfg)
    _positive("seed", cfg.seed, integer=True, allow_zero=True)
    _choice("data.name", d.name, tuple(_data.DATASETS))
    for name in ("n_train", "n_test"):
        if getattr(d, name) is not None:
            _positive(f"data.{name}", getattr(d, name), integer=True)
    if not (0 <= d.val_fraction < 1):
        raise ConfigError("data.val_fraction", d.val_fraction, "must be in [0, 1) (0.2 for the 80/20 split)")
    if d.augment and not _data.DATASETS[d.name].augmentable:
        raise ConfigError("data.augment", d.augment,
                          f"dataset '{d.name}' has no paper augmentation; augmentable: "
                          + ", ".join(k for k, s in _data.DATASETS.items() if s.augmentable))

    _choice("model.arch", m.arch, ARCHS)
    _positive("model.softplus_beta", m.softplus_beta)
    _positive("model.fc_hidden_layers", m.fc_hidden_layers, integer=True)
    _positive("model.fc_width", m.fc_width, integer=True)
    _choice("model.fc_bias_init", m.fc_bias_init, ("default", "zero", "normal"))
    if m.fc_first_layer_std is not None:
        _positive("model.fc_first_layer_std", m.fc_first_layer_std)
    _positive("model.lenet_mc", m.lenet_mc, integer=True)
    _choice("model.lenet_pool", m.lenet_pool, ("none", "avg2"))
    spec = _data.DATASETS[d.name]
    if m.arch in ("lenet", "preact_resnet18") and len(spec.input_shape) != 3:
        raise ConfigError("model.arch", m.arch, f"needs image data; dataset '{d.name}' has input shape "
                          f"{spec.input_shape}; use arch 'fcnet'")
    if m.arch == "lenet" and min(spec.input_shape[1:]) < (16 if m.lenet_pool == "avg2" else 9):
        raise ConfigError("model.lenet_pool", m.lenet_pool, f"input {spec.input_shape} too small for LeNet")

    validate_optim("optim", cfg.optim)
    if cfg.optim.lr_rule != "fixed":
        raise ConfigError("optim.lr_rule", cfg.optim.lr_rule, "'inverse_lipschitz' is for G̃ only "
                          "(ee.exploit_optim.lr_rule); G uses 'fixed'")
    if cfg.optim.name == "lbfgs":
        raise ConfigError("optim.name", "lbfgs", "L-BFGS is offered as G̃ (ee.exploit_optim) only; "
                          f"G must be one of {', '.join(o for o in OPTIMIZERS if o != 'lbfgs')} or a user factory")

    _positive("train.epochs", t.epochs, integer=True, allow_zero=True)  # 0: evaluate and certify only
    _positive("train.batch_size", t.batch_size, integer=True)
    _choice("train.loss", t.loss, ("auto", *LOSSES))
    _positive("train.eval_every", t.eval_every, integer=True)
    _choice("train.eval_unit", t.eval_unit, ("epochs", "steps"))
    _choice("train.device", t.device, ("auto", "cpu", "cuda"))
    _positive("train.checkpoint_every_epochs", t.checkpoint_every_epochs, integer=True)
    _positive("train.eval_batch_size", t.eval_batch_size, integer=True)
    if t.loss == "bce" and spec.m_y != 1:
        raise ConfigError("train.loss", t.loss, f"BCE needs m_y = 1; dataset '{d.name}' has m_y = {spec.m_y}: "
                          "use 'ce' or 'mse'")
    if t.loss == "ce" and spec.m_y == 1:
        raise ConfigError("train.loss", t.loss, f"dataset '{d.name}' is binary (m_y = 1): use 'bce' or 'mse'")

    if e.enabled:
        if e.m_H is not None:
            _positive("ee.m_H", e.m_H, integer=True)
        if e.m_H_factor is not None:
            _positive("ee.m_H_factor", e.m_H_factor)
        if e.m_H is not None and e.m_H_factor is not None:
            raise ConfigError("ee.m_H_factor", e.m_H_factor, "give m_H or m_H_factor, not both")
        _positive("ee.gate_scale", e.gate_scale)
        _positive("ee.epsilon", e.epsilon)
        _choice("ee.tau_unit", e.tau_unit, ("fraction", "epochs", "steps"))
        _choice("ee.perturb_base", e.perturb_base, ("final", "tau_minus_1"))
        _choice("ee.exploit_backbone_mode", e.exploit_backbone_mode, ("eval", "train"))
        if e.perturb_seed is not None:
            _positive("ee.perturb_seed", e.perturb_seed, integer=True, allow_zero=True)
        exploit = e.exploit_optim or cfg.optim
        validate_optim("ee.exploit_optim", exploit)
        if not e.reset_optimizer_state and exploit.name != cfg.optim.name:
            raise ConfigError("ee.reset_optimizer_state", False,
                              f"carrying optimizer state needs G̃ = G; got G = {cfg.optim.name!r}, "
                              f"G̃ = {exploit.name!r}")
        validate_tau(cfg)
    _validate_diag(g)
    if g.assumption4 and not e.enabled:
        raise ConfigError("diag.assumption4", True, "Assumption 4 is about the EE model: set ee.enabled = True, "
                          "or diag.assumption4 = False")


def validate_tau(cfg: TrialConfig) -> None:
    e, t = cfg.ee, cfg.train
    if e.tau_unit == "fraction":
        if not (_number(e.tau) and 0 <= e.tau <= 1):
            raise ConfigError("ee.tau", e.tau, "with tau_unit 'fraction', τ0 must be in [0, 1] (of the run)")
    elif e.tau_unit == "epochs":
        if not (_integral(e.tau) and 0 <= e.tau <= t.epochs):
            raise ConfigError("ee.tau", e.tau, f"with tau_unit 'epochs', an integer in [0, {t.epochs}] "
                              f"(train.epochs = {t.epochs})")
    else:
        if not (_integral(e.tau) and e.tau >= 0):
            raise ConfigError("ee.tau", e.tau, "with tau_unit 'steps', an integer >= 0 within the run")


def _integral(v: Any) -> bool:
    return _number(v) and math.isfinite(v) and float(v).is_integer()


def _number(v: Any) -> bool:
    """A real number, and not a bool: True is an int to Python, but ``tau = True`` is a mistake, not τ0 = 1."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, _np_bool()))


def _np_bool() -> type:
    try:
        import numpy

        return numpy.bool_
    except ImportError:  # numpy is a dependency; this only keeps the config importable without it
        return bool


def _type_ok(value: Any, tp: Any) -> bool:
    """``value`` fits the annotation ``tp`` (bool | int | float | str | X | None | tuple | Mapping | a section)."""
    if tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, (bool, _np_bool()))
    if tp is int:
        return _number(value) and isinstance(value, numbers.Integral)
    if tp is float:
        return _number(value)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and len(value) == len(args) and all(
            _type_ok(v, a) for v, a in zip(value, args))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return isinstance(value, Mapping)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp)
    return True  # an annotation this check does not know: the field's own rule decides


def _type_name(tp: Any) -> str:
    names = {bool: "a bool (True/False)", int: "an integer", float: "a number",
             str: "a string", type(None): "None"}
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        return f"a list of {len(args)} numbers"
    if args and type(None) in args:
        return " or ".join(_type_name(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__}"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _check_types(cfg: TrialConfig) -> None:
    """Every field holds a value of its annotated type, before any rule reads it: a bool where a number is
    expected (``ee.tau = True``), a number where a bool is expected, a string for a number."""
    if not _type_ok(cfg.seed, int):
        raise ConfigError("seed", cfg.seed, _must_be(cfg.seed, int))
    for sec, cls in _SECTIONS.items():
        section = getattr(cfg, sec)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(section, f.name)
            if not _type_ok(value, hints[f.name]):
                raise ConfigError(f"{sec}.{f.name}", value, _must_be(value, hints[f.name]))
            if isinstance(value, OptimConfig):
                hints_o = typing.get_type_hints(OptimConfig)
                for g in dataclasses.fields(OptimConfig):
                    v = getattr(value, g.name)
                    if not _type_ok(v, hints_o[g.name]):
                        raise ConfigError(f"{sec}.{f.name}.{g.name}", v, _must_be(v, hints_o[g.name]))


def _must_be(value: Any, tp: Any) -> str:
    bool_for_number = isinstance(value, (bool, _np_bool())) and not _type_ok(value, tp)
    return f"must be {_type_name(tp)}" + ("; a bool is not a number here" if bool_for_number else "")


def _validate_diag(g: DiagConfig) -> None:
    _positive("diag.every", g.every, integer=True)
    _choice("diag.unit", g.unit, ("epochs", "steps", "log"))
    if g.max_samples is not None:
        _positive("diag.max_samples", g.max_samples, integer=True)
    _positive("diag.tol_membership", g.tol_membership)
    _choice("diag.method", g.method, ("auto", "dense", "matrix_free"))
    _choice("diag.assumption4_bn", g.assumption4_bn, ("recalibrate", "init"))
    _positive("diag.memory_budget_gb", g.memory_budget_gb)
    _positive("diag.actors", g.actors, integer=True, allow_zero=True)
