"""Studies: a base config, a sweep and resources — validated whole before Ray starts, then run on Ray Tune.

A study file (``studies/<name>.py``) defines ``build(profile) -> Study`` and ends with ``main(build)``; the
user's command is ``python studies/<name>.py [--smoke | --profile P] [--resume]``. This module holds the
declarative part (what a study is, how it expands into trials); its validation is :mod:`eeray.study_validation`,
the command line :mod:`eeray.cli`, and the Ray part (:mod:`eeray.raytune`) is imported only once validation has
passed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from eeray.config import ConfigError, TrialConfig

PROFILES = ("smoke", "laptop", "paper")
SCHEDULERS = ("fifo", "asha")

# readable trial names: "m_c=2 c=0.5 seed=1"
ALIASES = {"model.lenet_mc": "m_c", "ee.m_H_factor": "c", "ee.m_H": "m_H", "seed": "seed", "ee.tau": "tau0",
           "ee.epsilon": "eps", "optim.lr": "lr", "ee.exploit_optim.name": "G~", "ee.exploit_optim.lr": "lr~",
           "data.name": "data", "model.fc_hidden_layers": "layers", "model.fc_bias_init": "bias",
           "model.fc_first_layer_std": "std1", "ee.enabled": "ee", "data.augment": "aug"}


@dataclass(frozen=True)
class Resources:
    """Per trial: a bundle of ``cpu`` CPUs and ``gpu`` GPUs (a fraction packs several trials on one GPU, each
    capped to that fraction of its memory), plus ``diag_actors`` bundles for diagnostic actors, reserved in the
    trial's own placement group so a cluster full of trials cannot starve them."""

    cpu: float = 1.0
    gpu: float = 0.0
    diag_actors: int = 0
    diag_actor_cpu: float = 1.0
    diag_actor_gpu: float = 0.0

    def bundles(self) -> list[dict[str, float]]:
        trial = {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu else {})}
        actor = {"CPU": self.diag_actor_cpu, **({"GPU": self.diag_actor_gpu} if self.diag_actor_gpu else {})}
        return [trial] + [actor] * self.diag_actors


@dataclass(frozen=True)
class TrialSpec:
    name: str  # readable: "ee c=0.5 m_c=2 seed=1"
    overrides: dict[str, Any]
    config: TrialConfig


@dataclass(frozen=True)
class Study:
    name: str
    base: TrialConfig
    # cartesian product over dotted keys; or a list of such grids, whose points are joined (e.g. more seeds on one
    # dataset than on another)
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] = field(default_factory=dict)
    # label -> overrides, each crossed with the grid; a variant that sets a grid key pins that axis (so the
    # Standard baseline is not repeated for every τ0 and ε)
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"": {}})
    search: Mapping[str, Any] = field(default_factory=dict)  # dotted key -> tune domain (Optuna, per grid point)
    samples_per_point: int = 1  # Optuna trials per grid point
    metric: str = "train_error"  # reported at every checkpoint; the last value is the final one
    mode: str = "min"
    scheduler: str = "fifo"  # asha: learning-rate tuning only (it stops exactly the trials a correlation needs)
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 1  # retries from the last checkpoint (node loss, spot pre-emption); divergence is final
    # trials equal until their τ run that exploration once (eeray.branching; --no-branching: each from scratch)
    branching: bool = True
    require_safe_exploration: bool = False  # refuse EE trials with m_H·m_{H−1} < n (Assumption 4 impossible)
    # datasets the study asked for but that were absent, skipped at the user's request (--present-datasets-only):
    # name -> why; printed with the study and in its summary
    skipped_datasets: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    summary_columns: tuple[str, ...] = ("final_train_error", "final_test_error")
    summarize: Callable[[Any], Any] | None = None  # Results -> DataFrame printed (and saved) at the end

    def points(self) -> list[dict[str, Any]]:
        """Tune's view of the study: one dict per (variant, free grid values); Tune's trial config is exactly
        such a dict (plus Optuna's values)."""
        out = []
        for label, pinned in self.variants.items():
            for grid in self.grids():
                keys = [k for k in grid if k not in pinned]
                for values in itertools.product(*(grid[k] for k in keys)):
                    out.append({"variant": label, **dict(zip(keys, values))})
        return out

    def grids(self) -> list[Mapping[str, Sequence[Any]]]:
        """The grid as a list of cartesian grids (one, unless ``grid`` is a list)."""
        return [self.grid] if isinstance(self.grid, Mapping) else list(self.grid)

    def overrides(self, point: Mapping[str, Any]) -> dict[str, Any]:
        point = dict(point)
        label = point.pop("variant", "")
        if label not in self.variants:
            raise ConfigError("variant", label, f"must be one of {list(self.variants)}")
        return {**dict(self.variants[label]), **point}

    def config(self, point: Mapping[str, Any]) -> TrialConfig:
        return self.base.replace(**self.overrides(point))

    def trial_name(self, point: Mapping[str, Any]) -> str:
        return trial_name(point)

    def trials(self) -> list[TrialSpec]:
        return [TrialSpec(self.trial_name(p), self.overrides(p), self.config(p))
                for p in self.points()]


def trial_name(point: Mapping[str, Any]) -> str:
    """A trial's readable name ("ee c=0.5 m_c=2 seed=1"): its variant, then each swept field's alias and value.
    It depends on the point alone, so Tune can hold it as a module function (pickled by reference)."""
    parts = [str(point.get("variant") or "")]
    for k, v in point.items():
        if k != "variant":
            parts.append(f"{ALIASES.get(k, k.rsplit('.', 1)[-1])}={_short(v)}")
    return " ".join(p for p in parts if p)


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
