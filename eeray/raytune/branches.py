"""Branching on Ray Tune: which trial of a segment is a trunk, a branch or runs alone, and where states wait.

The plan is a pure function of the study and of the segment's trial names (:func:`eeray.branching.plan_trees`
over their configs), so the driver (searcher, callback) and every trainable compute the same one and Tune's
trial config stays exactly the study's point. Branch-point states live in ``<storage>/branch_states/`` (storage
every node sees, like Tune's own checkpoints: a shared directory, or objects under an ``s3://`` storage, read and
written through pyarrow's S3 file system): ``<tree>/<step>.pt``, and ``<tree>/trunk_failed.json`` once the trunk
has failed for good (its waiting branches then fail at once with its reason).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

from eeray.branch_states import BranchStateStore
from eeray.branching import plan_trees, steps_per_epoch_of, tree_id

STATES_DIR = "branch_states"
TRUNK_FAILED = "trunk_failed.json"
FAILED_BY_TRUNK = "its trunk "  # how a branch's failure reason starts when its trunk never offered its state


@dataclass(frozen=True)
class Role:
    """A trial's place in its tree: ``kind`` is 'trunk', 'branch' or 'alone'."""

    kind: str
    tree: str | None = None
    trunk: str | None = None  # a branch's trunk (trial name)
    step: int | None = None  # a branch's branch step
    points: tuple[int, ...] = ()  # a trunk's branch points
    siblings: dict[int, tuple[str, ...]] = field(default_factory=dict)  # a trunk's: step -> branches there


def plan(study, names: Sequence[str]) -> dict[str, Role]:
    """Trial name -> :class:`Role` for the study's trials named in ``names`` (one Tune experiment)."""
    wanted = set(names)
    points = [p for p in study.points() if study.trial_name(p) in wanted]
    configs = [study.config(p) for p in points]
    trial_names = [study.trial_name(p) for p in points]
    spe_of: dict[tuple, int] = {}  # the dataset's size decides; each dataset loaded once
    spe = []
    for cfg in configs:
        key = (repr(cfg.data), cfg.train.batch_size)
        if key not in spe_of:
            spe_of[key] = steps_per_epoch_of(cfg)
        spe.append(spe_of[key])
    roles: dict[str, Role] = {}
    for tree in plan_trees(configs, spe):
        trunk = trial_names[tree.trunk]
        if not tree.branches:
            roles[trunk] = Role("alone")
            continue
        tid = tree_id(configs[tree.trunk])
        at = {s: tuple(trial_names[i] for i, b in tree.branches.items() if b == s) for s in tree.branch_points}
        roles[trunk] = Role("trunk", tid, points=tree.branch_points, siblings=at)
        for i, b in tree.branches.items():
            roles[trial_names[i]] = Role("branch", tid, trunk=trunk, step=b)
    return roles


def states_root(storage: str) -> str:
    return os.path.join(storage, STATES_DIR)


def check_storage(storage: str) -> str | None:
    """Why branching cannot use this storage (None: it can): states are files under a plain path or ``s3://``
    objects, which every trial must see; other URIs are untested, so their trials run from scratch."""
    if "://" in storage and not storage.startswith("s3://"):
        return (f"branch-point states are kept under a plain shared file system path or s3://, and {storage} is "
                "neither; every trial runs from scratch (--no-branching says so explicitly)")
    return None


_ACTIVE: dict[str, "Branching"] = {}  # segment -> the running driver's Branching (see PointsSearch.restore)


def active(segment: str) -> "Branching":
    return _ACTIVE[segment]


class Branching:
    """One segment's plan with its state store: what the searcher, the trainables and the callback share. The
    driver's own instance is registered under the segment's name, so a searcher unpickled by ``Tuner.restore``
    reads the states where they are now (a results directory copied elsewhere resumes there)."""

    def __init__(self, roles: dict[str, Role], root: str, segment: str):
        self.roles, self.root, self.segment = roles, root, segment
        # an s3:// root: the driver's S3 file system, pickled with its endpoint to every trial (a node whose
        # environment names no endpoint still reaches the same server)
        self.fs = None
        if root.startswith("s3://"):
            from eeray.raytune import s3

            self.fs = s3.filesystem(s3.split(root)[0])
        _ACTIVE[segment] = self

    @property
    def store(self) -> BranchStateStore:
        return BranchStateStore(self.root, self.fs)

    def role(self, name: str) -> Role:
        return self.roles.get(name, Role("alone"))

    def ready(self, name: str) -> bool:
        """A branch may start: its state exists, or its trunk failed (the branch then fails at once)."""
        r = self.role(name)
        if r.kind != "branch":
            return True
        return self.store.has(r.tree, r.step) or self.trunk_failure(name) is not None

    def trunk_failure(self, name: str) -> str | None:
        r = self.role(name)
        if r.kind != "branch":
            return None
        store = self.store
        path = store.path(r.tree, TRUNK_FAILED)
        if not store.exists(path):
            return None
        return json.loads(store.read(path))["reason"]

    def mark_trunk_failed(self, trunk: str, reason: str) -> None:
        store = self.store
        store.write(store.path(self.role(trunk).tree, TRUNK_FAILED),
                    json.dumps({"trunk": trunk, "reason": reason}).encode())

    def trunk_of(self, name: str) -> str | None:
        return self.role(name).trunk

    def discard_done(self, tree: str, ended: set[str]) -> list[int]:
        """Delete the states of ``tree`` whose branches have all ended (a ``trials`` row); the steps deleted."""
        trunk = next((n for n, r in self.roles.items() if r.kind == "trunk" and r.tree == tree), None)
        if trunk is None:
            return []
        gone = []
        for step, names in self.roles[trunk].siblings.items():
            if all(n in ended for n in names) and self.store.has(tree, step):
                self.store.discard(tree, step)
                gone.append(step)
        return gone
