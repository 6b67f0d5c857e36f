"""Branching: trials that share an exploration prefix run it once.

Until its τ an EE trial reads only some of its config: the data, the model and its surgery, G, the seed, the
data order, the evaluation cadence and the diagnostics that run before τ. Two trials equal in all of those are
the same run up to the smaller τ, step for step and bit for bit. A *tree* is such a group: its *trunk* (the
member that explores longest) runs from scratch and offers its state at each member's branch step, without
switching; every other member, a *branch*, continues from that state with its own config — exactly the run it
would have been from scratch, since nothing it has not read yet has happened.

Every config field is declared here once, as

* ``EXPLORATION``: read before τ (or conservatively treated so): must be equal within a tree;
* ``SWITCH``: read only at or after the branch step: ε, τ itself, the perturbation base and seed, G̃ and all its
  hyperparameters, how the backbone and the optimizer state are treated after the switch, Lemma 5 (computed at
  θ^τ). These may differ within a tree.

``tests/test_branching.py`` fails when a config field is added without a decision.

The branch step b of a config is τ (in steps), or τ − 1 with the literal perturbation base
(``ee.perturb_base = "tau_minus_1"`` drops the update at τ − 1, so that update already differs). The state
offered at b is taken right after the update that reached b and before the evaluation that follows it (a trial
evaluates at its own τ, its trunk need not): every row the trunk emitted before it has ``step < b``, and those
rows are the branch's prefix.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from eeray.config import OptimConfig, TrialConfig, to_flat

BRANCH_POINT = "branch_point"  # the checkpoint reason of a state offered for branches

EXPLORATION = "exploration"
SWITCH = "switch"

# why each field is on its side; a field is exploration unless every read of it is at or after the branch step
FIELD_ROLES: dict[str, str] = {
    "seed": EXPLORATION,  # initialisation and data order
    **{f"data.{k}": EXPLORATION for k in ("name", "n_train", "n_test", "seed", "augment", "root", "val_fraction",
                                          "moons_noise", "normalize")},
    **{f"model.{k}": EXPLORATION for k in ("arch", "softplus_beta", "fc_hidden_layers", "fc_width", "fc_bias_init",
                                           "fc_first_layer_std", "lenet_mc", "lenet_pool", "resnet_final_bn")},
    # G. Its L-BFGS and lr_rule fields cannot be G's (validation), but with ee.exploit_optim unset G̃ = G reads
    # them at the switch; kept equal rather than reasoned about per case
    **{f"optim.{k}": EXPLORATION for k in ("name", "lr", "momentum", "weight_decay", "nesterov", "betas", "lr_rule",
                                           "lbfgs_mode", "lbfgs_iters", "lbfgs_history", "lbfgs_line_search",
                                           "extra")},
    "ee.enabled": EXPLORATION,  # the modified model is built at step 0
    "ee.m_H": EXPLORATION, "ee.m_H_factor": EXPLORATION, "ee.gate_scale": EXPLORATION,
    "ee.output_bias": EXPLORATION,  # surgery
    "ee.tau": SWITCH, "ee.tau_unit": SWITCH,  # they define the branch step itself
    "ee.epsilon": SWITCH, "ee.perturb_seed": SWITCH,  # the perturbation, at τ
    "ee.perturb_base": SWITCH,  # read at the update τ − 1, the branch step of a 'tau_minus_1' config
    "ee.exploit_backbone_mode": SWITCH,  # train_mode after the switch
    "ee.reset_optimizer_state": SWITCH, "ee.freeze_gate": SWITCH,  # at the switch
    # G̃: every field is read at the switch (built then, or at θ^τ for α = 1/L̂) and after it
    **{f"ee.exploit_optim.{f.name}": SWITCH for f in dataclasses.fields(OptimConfig)},
    # epochs: T, hence τ0·T̂ and the diagnostics schedule; the rest: every step's arithmetic and rows
    **{f"train.{k}": EXPLORATION for k in ("epochs", "batch_size", "loss", "eval_every", "eval_unit", "device",
                                           "eval_batch_size", "cuda_graphs", "channels_last")},
    "train.checkpoint_every_epochs": EXPLORATION,  # when the diagnostics pool is flushed, hence row order
    # the alignment schedule and Q_T run before τ; Assumption 4 at step 0
    **{f"diag.{k}": EXPLORATION for k in ("alignment", "every", "unit", "max_samples", "tol_membership", "method",
                                          "memory_budget_gb", "delta_m", "certificate", "assumption4",
                                          "assumption4_bn", "actors")},
    "diag.lemma5": SWITCH,  # the exploitation features at the perturbed θ^τ only (its memory check is per config)
}


def undeclared_fields() -> tuple[list[str], list[str]]:
    """(config keys without a role, roles for keys the config no longer has): both empty when declared."""
    keys = set(to_flat(TrialConfig()))
    return sorted(keys - set(FIELD_ROLES)), sorted(set(FIELD_ROLES) - keys)


def exploration_key(cfg: TrialConfig) -> tuple:
    """Equal for two configs exactly when they may share a tree."""
    flat = to_flat(cfg)
    return tuple((k, repr(flat[k])) for k in sorted(flat) if FIELD_ROLES[k] == EXPLORATION)


def exploration_diff(a: TrialConfig, b: TrialConfig) -> dict[str, tuple[Any, Any]]:
    fa, fb = to_flat(a), to_flat(b)
    return {k: (fa[k], fb[k]) for k in sorted(fa) if FIELD_ROLES[k] == EXPLORATION and fa[k] != fb[k]}


def branch_step(cfg: TrialConfig, steps_per_epoch: int) -> int | None:
    """The last step up to which ``cfg`` reads only exploration fields; None for the Standard baseline."""
    if not cfg.ee.enabled:
        return None
    from eeray.wrapper import tau_step_of

    tau = tau_step_of(cfg.ee, cfg.train.epochs, steps_per_epoch)
    return tau - 1 if cfg.ee.perturb_base == "tau_minus_1" and tau >= 1 else tau


def check_branch_points(cfg: TrialConfig, points: Iterable[int], steps_per_epoch: int) -> frozenset[int]:
    """A trunk offers states only at steps ``1..branch_step(cfg)``: beyond that it has read its own switch fields."""
    points = frozenset(int(p) for p in points)
    if not points:
        return points
    limit = branch_step(cfg, steps_per_epoch)
    bad = sorted(p for p in points if limit is None or not 1 <= p <= limit)
    if bad:
        raise ValueError(f"branch points {bad} are invalid for this trunk: they must lie in 1..{limit} (its branch "
                         "step: τ, or τ − 1 with ee.perturb_base = 'tau_minus_1'); the Standard baseline has none")
    return points


def check_branch_state(trunk: TrialConfig, branch: TrialConfig, *, step: int, mid_step: bool, switched: bool,
                       steps_per_epoch: int) -> None:
    """Raise ValueError unless a state of ``trunk`` at ``step`` is where ``branch`` continues from scratch."""
    if not mid_step or switched:
        raise ValueError(f"the state at step {step} is not a branch point (reason {BRANCH_POINT!r}, before the "
                         "switch): pass it as checkpoint= to its own config, or offer branch points from the trunk")
    diff = exploration_diff(branch, trunk)
    if diff:
        raise ValueError(f"the branch and its trunk differ in exploration fields (branch, trunk): {diff}")
    want = branch_step(branch, steps_per_epoch)
    if want != step:
        raise ValueError(f"the state is at step {step}, this branch leaves its trunk at step {want}")


# --------------------------------------------------------------------------- trees
@dataclass
class Tree:
    """Indices into the configs given to :func:`plan_trees`. ``branches``: index -> branch step."""

    trunk: int
    branches: dict[int, int] = field(default_factory=dict)

    @property
    def branch_points(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.branches.values())))

    @property
    def members(self) -> list[int]:
        return [self.trunk, *self.branches]


def plan_trees(configs: Sequence[TrialConfig], steps_per_epoch: Sequence[int] | Mapping[int, int]) -> list[Tree]:
    """Group trials into trees; every config is in exactly one (a tree without branches: a plain trial).

    ``steps_per_epoch[i]`` is config i's (it depends on the dataset's size, known once the data is loaded; equal
    within a tree). The trunk is the member with the largest branch step (the first such); members whose branch
    step is 0 gain nothing and run alone."""
    groups: dict[tuple, list[tuple[int, int]]] = {}
    trees: list[Tree] = []
    for i, cfg in enumerate(configs):
        b = branch_step(cfg, steps_per_epoch[i])
        if b is None or b == 0:
            trees.append(Tree(i))
        else:
            groups.setdefault(exploration_key(cfg), []).append((i, b))
    for members in groups.values():
        trunk, _ = max(members, key=lambda m: (m[1], -m[0]))
        trees.append(Tree(trunk, {i: b for i, b in members if i != trunk}))
    return sorted(trees, key=lambda t: t.trunk)


def steps_per_epoch_of(cfg: TrialConfig) -> int:
    """Steps per epoch without building the model (the dataset is loaded: its size decides)."""
    import math

    from eeray.data import load_dataset

    return math.ceil(load_dataset(cfg.data).n / cfg.train.batch_size)


def prefix_rows(trunk_rows: Mapping[str, list[dict]], branch_step_: int) -> dict[str, list[dict]]:
    """The rows a branch shares with its trunk: every trunk row before the branch step (the summary excluded)."""
    return {t: [r for r in rows if r["step"] < branch_step_] for t, rows in trunk_rows.items() if t != "summary"}


# --------------------------------------------------------------------------- trees
def tree_id(cfg: TrialConfig) -> str:
    """A stable name for the tree a config belongs to (its exploration fields)."""
    import hashlib

    return hashlib.sha1(repr(exploration_key(cfg)).encode()).hexdigest()[:16]
