"""Algorithm 1 (the EE wrapper A): explore with G, perturb by ε, freeze the gate, exploit θ_(H−1) with G̃.

What is trained is decided by surgery's labels; *when* by :class:`PhaseSchedule`, a pure function of the
step; :class:`EEWrapper` joins them around any optimizer factory ``params -> torch.optim.Optimizer``.
Frozen parameters are not in the exploitation optimizer at all (no state, no momentum, no weight decay) and
have ``requires_grad=False``, so they stay bit-for-bit unchanged.

Usable in a plain PyTorch loop::

    ee = to_ee_model(base, x[:2], n=len(x))
    wrapper = EEWrapper(ee, sgd(lr=0.1, momentum=0.9), sgd(lr=0.1, momentum=0.9),
                        PhaseSchedule(tau_step=800, total_steps=1000), epsilon=1e-3, perturb_seed=0)
    for step in range(1000):
        wrapper.before_step(step)            # switches at τ
        wrapper.train_mode()
        loss = loss_fn(ee(xb), yb)
        wrapper.optimizer.zero_grad(); loss.backward(); wrapper.optimizer.step()
"""
from __future__ import annotations

import enum
import importlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from eeray.config import ConfigError, EEConfig, OptimConfig
from eeray.surgery import BODY, HEAD, HIDDEN, EEModel

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class Phase(str, enum.Enum):
    EXPLORE = "explore"
    EXPLOIT = "exploit"


# --------------------------------------------------------------------------- optimizer factories
def sgd(lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> OptimizerFactory:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                          nesterov=nesterov)


def make_optimizer_factory(cfg: OptimConfig, lr: float | None = None) -> OptimizerFactory:
    """Registry of named optimizers; ``'package.module:function'`` names a user factory. ``lr`` overrides
    ``cfg.lr`` (used for α = 1/L̂)."""
    lr = cfg.lr if lr is None else lr
    if cfg.name == "sgd":
        return sgd(lr, cfg.momentum, cfg.weight_decay, cfg.nesterov)
    if cfg.name in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return lambda params: cls(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "lbfgs":
        # weight decay is added to the objective by the caller (torch's L-BFGS has no weight_decay)
        return lambda params: torch.optim.LBFGS(params, lr=lr, max_iter=cfg.lbfgs_iters,
                                                history_size=cfg.lbfgs_history,
                                                line_search_fn=cfg.lbfgs_line_search)
    if ":" in cfg.name:
        module, _, attr = cfg.name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError("optim.name", cfg.name, f"cannot import the user factory ({exc})") from exc
        return lambda params: fn(params, **dict(cfg.extra))
    raise ConfigError("optim.name", cfg.name, "must be one of 'sgd', 'adam', 'adamw', 'lbfgs' or "
                      "'package.module:function'")


# --------------------------------------------------------------------------- when
@dataclass(frozen=True)
class PhaseSchedule:
    """τ and T in optimizer steps (the data clock: one step = one minibatch). ``tau_step=None``: never
    switches (the Standard baseline); ``tau_step=total_steps``: the modified model trained by G throughout."""

    tau_step: int | None
    total_steps: int

    def __post_init__(self):
        if self.tau_step is not None and not (0 <= self.tau_step <= self.total_steps):
            raise ConfigError("ee.tau", self.tau_step, f"τ must lie within the run: 0 <= τ <= {self.total_steps} "
                              "steps")

    def phase_at(self, step: int) -> Phase:
        """The phase that the update at ``step`` (θ^step → θ^{step+1}) belongs to."""
        if self.tau_step is None or step < self.tau_step:
            return Phase.EXPLORE
        return Phase.EXPLOIT

    @classmethod
    def from_config(cls, ee: EEConfig, epochs: int, steps_per_epoch: int) -> "PhaseSchedule":
        total = epochs * steps_per_epoch
        if not ee.enabled:
            return cls(None, total)
        return cls(tau_step_of(ee, epochs, steps_per_epoch), total)


def tau_step_of(ee: EEConfig, epochs: int, steps_per_epoch: int) -> int:
    """τ in steps. A fraction τ0 lands on an epoch boundary: τ = round(τ0·T̂) epochs (docs/paper-choices.md (A6))."""
    if ee.tau_unit == "steps":
        tau = int(ee.tau)
    elif ee.tau_unit == "epochs":
        tau = int(ee.tau) * steps_per_epoch
    else:
        tau = math.floor(ee.tau * epochs + 0.5) * steps_per_epoch  # half-up, not banker's rounding
    total = epochs * steps_per_epoch
    if not 0 <= tau <= total:
        raise ConfigError("ee.tau", ee.tau, f"τ = {tau} steps lies outside the run (0..{total} steps = "
                          f"{epochs} epochs × {steps_per_epoch} steps)")
    return tau


# --------------------------------------------------------------------------- perturbation
@dataclass(frozen=True)
class Perturbation:
    seed: int
    epsilon: float
    d: int  # trainable parameters perturbed (buffers are not)
    norm: float  # measured ‖θ_after − θ_before‖
    expected_norm: float  # ε√d, the mean of ‖εδ‖ for large d

    def to_record(self) -> dict[str, Any]:
        return {f"perturb_{k}": v for k, v in asdict(self).items()}


@torch.no_grad()
def perturb_(params: list[nn.Parameter], epsilon: float, seed: int) -> Perturbation:
    """θ ← θ + εδ, δ ~ N_d(0, I) from a dedicated generator (Algorithm 1 line 8). δ is drawn on the CPU in
    parameter order, so the same seed gives the same δ on any device; it is added in float64 and rounded
    once, so ε = 1e-5 does not vanish in a sum of float32 updates."""
    g = torch.Generator().manual_seed(seed)
    sq, d = 0.0, 0
    for p in params:
        delta = torch.randn(p.shape, generator=g, dtype=torch.float64)
        before = p.detach().clone()
        p.copy_((p.double() + epsilon * delta.to(p.device)).to(p.dtype))
        sq += float(((p.double() - before.double()) ** 2).sum())
        d += p.numel()
    return Perturbation(seed, epsilon, d, math.sqrt(sq), epsilon * math.sqrt(d))


# --------------------------------------------------------------------------- the wrapper
class EEWrapper:
    """Holds the optimizer of the current phase and performs the switch. Works on a plain model too
    (``schedule.tau_step is None``): the Standard baseline, G on every parameter for the whole run."""

    def __init__(self, model: nn.Module, explore: OptimizerFactory, exploit: OptimizerFactory | None,
                 schedule: PhaseSchedule, *, epsilon: float = 1e-3, perturb_seed: int = 0,
                 backbone_mode: str = "eval", freeze_gate: bool = True, reset_optimizer_state: bool = True,
                 exploit_factory_at_switch: Callable[[], OptimizerFactory] | None = None,
                 graph_frozen_body: bool = True):
        if schedule.tau_step is not None and not isinstance(model, EEModel):
            raise TypeError("an EE schedule needs an EEModel (eeray.surgery.to_ee_model); for the Standard "
                            "baseline pass PhaseSchedule(tau_step=None, ...)")
        if backbone_mode not in ("eval", "train"):
            raise ConfigError("ee.exploit_backbone_mode", backbone_mode, "must be 'eval' or 'train'")
        self.model, self.schedule = model, schedule
        self.explore_factory, self.exploit_factory = explore, exploit or explore
        self._late_exploit_factory = exploit_factory_at_switch  # e.g. α = 1/L̂ needs θ^τ
        self.epsilon, self.perturb_seed = epsilon, perturb_seed
        self.backbone_mode, self.freeze_gate_at_switch = backbone_mode, freeze_gate
        self.reset_optimizer_state = reset_optimizer_state
        self.graph_frozen_body = graph_frozen_body
        self.switched = False
        self.perturbation: Perturbation | None = None
        self.optimizer = self.explore_factory([p for p in model.parameters() if p.requires_grad])

    @property
    def phase(self) -> Phase:
        return Phase.EXPLOIT if self.switched else Phase.EXPLORE

    def switch_due(self, step: int) -> bool:
        """True when the update at ``step`` belongs to exploitation (``schedule.phase_at``) but the switch has
        not happened yet: the next :meth:`before_step` switches. The loop offers its pre-switch state here."""
        return not self.switched and self.schedule.phase_at(step) is Phase.EXPLOIT

    def before_step(self, step: int) -> Perturbation | None:
        """Call before the update at ``step``: switches when ``schedule.phase_at(step)`` first says exploit.
        Returns the perturbation when the switch happened now, else None. ``eeray.trial`` drives every switch
        through this call."""
        return self.switch() if self.switch_due(step) else None

    def switch(self) -> Perturbation:
        """Lines 8–9: perturb every trainable parameter, freeze the gate at θ^τ, then train θ_(H−1) only."""
        model: EEModel = self.model  # type: ignore[assignment]
        self.perturbation = perturb_([p for p in model.parameters() if p.requires_grad], self.epsilon,
                                     self.perturb_seed)
        if self.freeze_gate_at_switch:
            model.head.freeze_gate()  # R^(j) from the PERTURBED θ^τ (docs/paper-choices.md, Definitions)
        old = self.optimizer
        self._freeze_all_but_hidden()
        if self._late_exploit_factory is not None:
            self.exploit_factory = self._late_exploit_factory()
        self.optimizer = self.exploit_factory(list(model.params_of(HIDDEN)))
        if not self.reset_optimizer_state:
            _carry_state(old, self.optimizer)
        self.switched = True
        return self.perturbation

    def _freeze_all_but_hidden(self) -> None:
        model: EEModel = self.model  # type: ignore[assignment]
        for p in model.params_of(BODY, HEAD):
            p.requires_grad_(False)
            p.grad = None
        on_cuda = any(p.is_cuda for p in model.body.parameters())
        if self.graph_frozen_body and self.backbone_mode == "eval" and on_cuda:
            from eeray.exploitation import GraphedBody

            model.body_runner = GraphedBody(model.body)  # a pure function of x from now on

    def train_mode(self) -> None:
        """model.train(), except that the backbone is in eval mode while exploiting (BN running statistics
        frozen, z a fixed function of x: docs/paper-choices.md (A3)) unless the train-mode ablation is asked for."""
        self.model.train()
        if self.switched and self.backbone_mode == "eval":
            self.model.body.eval()  # type: ignore[union-attr]

    def trainable_counts(self) -> dict[str, int]:
        if not isinstance(self.model, EEModel):
            return {"trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad)}
        labels = self.model.param_labels()
        counts = {f"d_{lab}": 0 for lab in (BODY, HIDDEN, HEAD)}
        for name, p in self.model.named_parameters():
            counts[f"d_{labels[name]}"] += p.numel()
        counts["trainable"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return counts

    # ----------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"switched": self.switched, "optimizer": self.optimizer.state_dict(),
                "perturbation": asdict(self.perturbation) if self.perturbation else None,
                "perturb_seed": self.perturb_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the phase's optimizer over the right parameters, then load its state. The model's own
        state (weights, frozen gate buffers) is restored separately with ``model.load_state_dict``."""
        if state["perturb_seed"] != self.perturb_seed:
            raise ValueError(f"checkpoint perturbation seed {state['perturb_seed']} != config's {self.perturb_seed}")
        if state["switched"] and not self.switched:
            self._freeze_all_but_hidden()
            if self._late_exploit_factory is not None:
                self.exploit_factory = self._late_exploit_factory()
            self.optimizer = self.exploit_factory(list(self.model.params_of(HIDDEN)))  # type: ignore[union-attr]
            self.switched = True
        self.optimizer.load_state_dict(state["optimizer"])
        self.perturbation = Perturbation(**state["perturbation"]) if state["perturbation"] else None


def _carry_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """reset_optimizer_state=False: G̃ continues G's per-parameter state (momentum, Adam moments) for θ_(H−1)."""
    if type(old) is not type(new):
        raise ConfigError("ee.reset_optimizer_state", False, f"needs G̃ of G's class; got {type(old).__name__} "
                          f"and {type(new).__name__}")
    for group in new.param_groups:
        for p in group["params"]:
            if p in old.state:
                new.state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in old.state[p].items()}


# --------------------------------------------------------------------------- from a TrialConfig
def perturb_seed_of(cfg) -> int:
    """The perturbation generator's seed: ``ee.perturb_seed``, else derived from the trial seed (logged)."""
    return cfg.ee.perturb_seed if cfg.ee.perturb_seed is not None else 1_000_000_007 % (2**31) + cfg.seed


def wrapper_from_config(cfg, model: nn.Module, schedule: PhaseSchedule, x_train: torch.Tensor,
                        loss: str) -> EEWrapper:
    """G and G̃ from ``cfg.optim`` / ``cfg.ee.exploit_optim``. With ``lr_rule='inverse_lipschitz'`` G̃ is
    built at the switch with α = 1/(L̂ + λ), L̂ from the exploitation features at θ^τ (docs/paper-choices.md (D4))."""
    explore = make_optimizer_factory(cfg.optim)
    if not cfg.ee.enabled:
        return EEWrapper(model, explore, None, schedule)
    g_tilde = cfg.ee.exploit_optim or cfg.optim
    late = None
    if g_tilde.lr_rule == "inverse_lipschitz":
        def late() -> OptimizerFactory:
            from eeray.diagnostics import lipschitz_hat

            l_hat = lipschitz_hat(model, x_train, loss)
            return make_optimizer_factory(g_tilde, lr=1.0 / (l_hat + g_tilde.weight_decay))
    return EEWrapper(model, explore, make_optimizer_factory(g_tilde), schedule, epsilon=cfg.ee.epsilon,
                     perturb_seed=perturb_seed_of(cfg), backbone_mode=cfg.ee.exploit_backbone_mode,
                     freeze_gate=cfg.ee.freeze_gate, reset_optimizer_state=cfg.ee.reset_optimizer_state,
                     exploit_factory_at_switch=late, graph_frozen_body=cfg.train.cuda_graphs)
