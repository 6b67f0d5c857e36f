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


# --------------------------------------------------------------------------- states and running a tree
def tree_id(cfg: TrialConfig) -> str:
    """A stable name for the tree a config belongs to (its exploration fields)."""
    import hashlib

    return hashlib.sha1(repr(exploration_key(cfg)).encode()).hexdigest()[:16]


class BranchStateStore:
    """Branch-point states, ``<root>/<tree_id>/<step>.pt``, kept by eeray itself (Tune rotates its own checkpoints
    away: ``num_to_keep``) until every branch at that step has started. ``root`` is a directory (writes are
    atomic: a temporary file renamed) or an ``s3://`` URI (objects are written whole, in one upload: an object
    store never shows half of one). Loading runs no code: tensors, numbers and strings only. ``fs``: the S3 file
    system to use for an ``s3://`` root (default: the one this process's environment describes)."""

    def __init__(self, root: str, fs=None):
        import os

        self.root = root
        self._fs, self._base = _object_store(root, fs)
        if self._fs is None:
            os.makedirs(self._base, exist_ok=True)

    def _path(self, tree: str, step: int) -> str:
        return self.path(tree, f"{step:09d}.pt")

    def path(self, tree: str, name: str) -> str:
        """Where ``<root>/<tree>/<name>`` is on this store's file system (a local path, or ``bucket/key``)."""
        return "/".join((self._base, tree, name))

    def put(self, tree: str, step: int, state: dict) -> None:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.write(self._path(tree, step), buf.getvalue())

    def has(self, tree: str, step: int) -> bool:
        return self.exists(self._path(tree, step))

    def get(self, tree: str, step: int) -> dict:
        import io

        import torch

        return torch.load(io.BytesIO(self.read(self._path(tree, step))), weights_only=True, map_location="cpu")

    def discard(self, tree: str, step: int) -> None:
        if self.has(tree, step):
            self.delete(self._path(tree, step))

    # the file operations, for the states and for :mod:`eeray.raytune.branches`' marker files
    def write(self, path: str, data: bytes) -> None:
        import os

        if self._fs is not None:
            with self._fs.open_output_stream(path) as f:
                f.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)

    def exists(self, path: str) -> bool:
        import os

        if self._fs is None:
            return os.path.exists(path)
        import pyarrow.fs as pafs

        return self._fs.get_file_info(path).type == pafs.FileType.File

    def read(self, path: str) -> bytes:
        if self._fs is None:
            with open(path, "rb") as f:
                return f.read()
        with self._fs.open_input_stream(path) as f:
            return f.readall()

    def delete(self, path: str) -> None:
        import os

        os.remove(path) if self._fs is None else self._fs.delete_file(path)


def _object_store(root: str, fs=None):
    """(pyarrow file system, path on it) for an ``s3://`` root; (None, its path) for a local directory."""
    if not root.startswith("s3://"):
        return None, root.removeprefix("file://").rstrip("/") or "/"
    from eeray.raytune import s3  # pyarrow only: no Ray

    return fs or s3.filesystem(s3.split(root)[0]), s3.fs_path(root)


class MemoryStateStore:
    """:class:`BranchStateStore`'s interface in memory (one process, nothing to resume)."""

    def __init__(self):
        self._states: dict[tuple[str, int], dict] = {}

    def put(self, tree: str, step: int, state: dict) -> None:
        self._states[tree, step] = state

    def has(self, tree: str, step: int) -> bool:
        return (tree, step) in self._states

    def get(self, tree: str, step: int) -> dict:
        return self._states[tree, step]

    def discard(self, tree: str, step: int) -> None:
        self._states.pop((tree, step), None)


class OfferingSink:
    """Forwards everything to ``inner``; branch-point states also go to ``store`` under ``tree``."""

    def __init__(self, inner, store: BranchStateStore, tree: str):
        self.inner, self.store, self.tree = inner, store, tree

    def emit(self, table: str, row) -> None:
        self.inner.emit(table, row)

    def checkpoint(self, make_state, *, step: int, epoch: int, reason: str) -> None:
        if reason == BRANCH_POINT:
            self.store.put(self.tree, step, make_state())
        else:
            self.inner.checkpoint(make_state, step=step, epoch=epoch, reason=reason)


@dataclass
class Ran:
    """One trial of :func:`run_branched`: ``trunk`` and ``branch_step`` are None for a trial run from scratch."""

    index: int
    result: Any
    seconds: float  # wall time of this trial's own run_trial call (setup included)
    cpu_seconds: float  # CPU time of this process during that call (on a shared machine, the trial's own cost)
    steps_run: int  # optimizer steps on the data clock that this call executed (total − branch step)
    trunk: int | None = None
    branch_step: int | None = None
    error: str | None = None  # the exception, when the trial failed (result is then None)


def run_branched(configs: Sequence[TrialConfig], sink_for=None, *, store=None, branched: bool = True) -> list[Ran]:
    """Run a study's trials without Ray, trunk first, then its branches from the stored states (each state is
    discarded once every branch at that step has started; ``store``: a :class:`BranchStateStore`, default in
    memory). ``branched=False`` runs every trial from scratch.
    ``sink_for(i)`` gives trial i's sink; a branch's sink receives only the rows after its branch step — its
    prefix is the trunk's rows before it (:func:`prefix_rows`). Returns one :class:`Ran` per config, in order.

    Failures: a trial that raises gets ``Ran.error`` and the study goes on. A trunk that fails after offering a
    state still has its branches at that state run (their prefix is complete); the branches still waiting for a
    later state fail with the trunk's reason. A failed branch leaves its siblings alone."""
    import time

    from eeray.records import NullSink
    from eeray.trial import run_trial

    sink_for = sink_for or (lambda i: NullSink())
    store = MemoryStateStore() if store is None else store
    spe = [steps_per_epoch_of(c) for c in configs]
    trees = plan_trees(configs, spe) if branched else [Tree(i) for i in range(len(configs))]
    out: dict[int, Ran] = {}

    def attempt(i: int, steps_run: int, trunk: int | None, step: int | None, **kwargs) -> Ran:
        t0, c0 = time.perf_counter(), time.process_time()
        result, error = None, None
        try:
            result = run_trial(configs[i], **kwargs)
        except Exception as exc:  # noqa: BLE001 — recorded; one trial's failure is not the study's
            error = f"{type(exc).__name__}: {exc}"
        return Ran(i, result, time.perf_counter() - t0, time.process_time() - c0, steps_run, trunk, step, error)

    for tree in trees:
        trunk_cfg = configs[tree.trunk]
        name = tree_id(trunk_cfg)
        total = trunk_cfg.train.epochs * spe[tree.trunk]
        out[tree.trunk] = attempt(tree.trunk, total, None, None, branch_points=tree.branch_points,
                                  sink=OfferingSink(sink_for(tree.trunk), store, name))
        for step in tree.branch_points:
            members = [i for i, s in tree.branches.items() if s == step]
            if not store.has(name, step):  # the trunk failed before offering it
                for i in members:
                    out[i] = Ran(i, None, 0.0, 0.0, 0, tree.trunk, step,
                                 f"trunk (trial {tree.trunk}) failed before branch step {step}: {out[tree.trunk].error}")
                continue
            state = store.get(name, step)
            for i in members:
                out[i] = attempt(i, total - step, tree.trunk, step, sink=sink_for(i), branch_from=state)
            store.discard(name, step)
    return [out[i] for i in range(len(configs))]


def write_results(results_dir: str, study: str, names: Sequence[str], configs: Sequence[TrialConfig],
                  ran: Sequence[Ran], sinks: Sequence[Any]) -> list[str]:
    """Parquet for a study run with :func:`run_branched` and ``MemorySink``s (no Ray): each trial's own rows, so
    a shared prefix is stored once (under its trunk); ``trunk_trial_id`` / ``branch_step`` in ``trials``.
    Returns the trial ids (``t0000``, ... in config order)."""
    from eeray.results import ResultsWriter

    writer = ResultsWriter(results_dir, study)
    ids = [f"t{i:04d}" for i in range(len(configs))]
    for i, (cfg, r, sink) in enumerate(zip(configs, ran, sinks)):
        if r.error is not None:
            raise ValueError(f"trial {i} failed ({r.error}); write_results writes completed studies only")
        for table in ("steps", "diagnostics", "safety"):
            if sink.rows[table]:
                writer.write_chunk(table, ids[i], "all", sink.rows[table], cfg.data.name)
        summary = {k: v for k, v in r.result.summary.items() if k != "status"}
        writer.write_trial(ids[i], {**summary, "trial_name": names[i], "status": "completed", "attempts": 1,
                                    "trunk_trial_id": None if r.trunk is None else ids[r.trunk],
                                    "branch_step": r.branch_step,
                                    **{f"cfg.{k}": v for k, v in to_flat(cfg).items()}}, cfg.data.name)
    return ids
