"""Studies: a base config, a sweep and resources — validated whole before Ray starts, then run on Ray Tune.

A study file (``studies/<name>.py``) defines ``build(profile) -> Study`` and ends with ``main(build)``; the
user's command is ``python studies/<name>.py [--smoke | --profile P] [--resume]``. This module holds the
declarative part (what a study is, how it expands into trials, how it is validated); the command line is
:mod:`eeray.cli`, and the Ray part (:mod:`eeray.raytune`) is imported only once validation has passed.
"""
from __future__ import annotations

import itertools
import math
import os
import sys
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from eeray.config import ConfigError, TrialConfig, validate

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
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # cartesian product over dotted keys
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
    require_safe_exploration: bool = False  # refuse EE trials with m_H·m_{H−1} < n (Assumption 4 impossible)
    description: str = ""
    summary_columns: tuple[str, ...] = ("final_train_error", "final_test_error")
    summarize: Callable[[Any], Any] | None = None  # Results -> DataFrame printed (and saved) at the end

    def points(self) -> list[dict[str, Any]]:
        """Tune's view of the study: one dict per (variant, free grid values); Tune's trial config is exactly
        such a dict (plus Optuna's values)."""
        out = []
        for label, pinned in self.variants.items():
            keys = [k for k in self.grid if k not in pinned]
            for values in itertools.product(*(self.grid[k] for k in keys)):
                out.append({"variant": label, **dict(zip(keys, values))})
        return out

    def overrides(self, point: Mapping[str, Any]) -> dict[str, Any]:
        point = dict(point)
        label = point.pop("variant", "")
        if label not in self.variants:
            raise ConfigError("variant", label, f"must be one of {list(self.variants)}")
        return {**dict(self.variants[label]), **point}

    def config(self, point: Mapping[str, Any]) -> TrialConfig:
        return self.base.replace(**self.overrides(point))

    def trial_name(self, point: Mapping[str, Any]) -> str:
        parts = [str(point.get("variant") or "")]
        for k, v in point.items():
            if k != "variant":
                parts.append(f"{ALIASES.get(k, k.rsplit('.', 1)[-1])}={_short(v)}")
        return " ".join(p for p in parts if p)

    def trials(self) -> list[TrialSpec]:
        return [TrialSpec(self.trial_name(p), self.overrides(p), self.config(p))
                for p in self.points()]


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- validation (before Ray)
def validate_study(study: Study, *, cluster: bool = False) -> list[TrialSpec]:
    """Every trial's config, the search space, data files, resources and (optionally) the safe-exploration
    necessary condition — all before Ray starts. Raises ConfigError naming the field and the fix."""
    from eeray.datasets import DATASETS

    if study.scheduler not in SCHEDULERS:
        raise ConfigError("study.scheduler", study.scheduler, f"must be one of {SCHEDULERS}")
    if study.scheduler == "asha" and not any(k.endswith(".lr") for k in study.search):
        raise ConfigError("study.scheduler", "asha", "early stopping removes the trials a size-vs-alignment "
                          "correlation needs; it is offered only when the study tunes a learning rate "
                          "(study.search with an '...lr' key)")
    if study.mode not in ("min", "max"):
        raise ConfigError("study.mode", study.mode, "must be 'min' or 'max'")
    from eeray.results import schema

    trial_columns = schema("trials").names
    for col in study.summary_columns:
        if col not in trial_columns:  # a summary never silently drops a column the schema does not have
            raise ConfigError("study.summary_columns", col, "must name columns of the trials table; see "
                              "docs/results-schema.md")
    for key in study.grid:
        if not study.grid[key]:
            raise ConfigError(f"grid.{key}", study.grid[key], "a sweep axis needs at least one value")
    specs = study.trials()  # raises ConfigError for unknown sweep keys (with the valid keys listed)
    for spec in specs:
        for cfg in _with_search_bounds(study, spec):
            try:
                validate(cfg)
            except ConfigError as exc:
                raise ConfigError(exc.field, exc.value, f"{exc.valid} (trial '{spec.name}')") from None
            if study.require_safe_exploration:
                check_safe_exploration(cfg)
    for name in sorted({s.config.data.name for s in specs}):
        if DATASETS[name].kind == "real":
            from eeray.data.real import check_files

            cfg = next(s.config.data for s in specs if s.config.data.name == name)
            check_files(cfg)
    _check_resources(study, specs, cluster)
    return specs


def _with_search_bounds(study: Study, spec: TrialSpec) -> list[TrialConfig]:
    if not study.search:
        return [spec.config]
    out = []
    for pick in ("lower", "upper"):
        values = {}
        for k, dom in study.search.items():
            values[k] = getattr(dom, pick, None) if hasattr(dom, pick) else dom.sample()
            if hasattr(dom, "categories"):
                values[k] = dom.categories[0 if pick == "lower" else -1]
        out.append(spec.config.replace(**values))
    return out


def check_safe_exploration(cfg: TrialConfig) -> None:
    """Assumption 4 needs m_H·m_{H−1} ≥ n (necessary, not sufficient); name the smallest m_H that could work."""
    if not cfg.ee.enabled:
        return
    from eeray.datasets import DATASETS
    from eeray.models import head_input_width
    from eeray.surgery import resolve_m_H

    spec = DATASETS[cfg.data.name]
    n = cfg.data.n_train or spec.n_train
    m_hm1 = head_input_width(cfg.model, spec)
    replaced = cfg.model.fc_width if cfg.model.arch == "fcnet" and cfg.model.fc_hidden_layers >= 2 else (
        128 * cfg.model.lenet_mc if cfg.model.arch == "lenet" else None)
    m_H, _ = resolve_m_H(cfg.ee.m_H, cfg.ee.m_H_factor, n, m_hm1, replaced)
    if m_H * m_hm1 < n:
        smallest = math.ceil(n / m_hm1)
        fld = "ee.m_H_factor" if cfg.ee.m_H is None and cfg.ee.m_H_factor is not None else "ee.m_H"
        raise ConfigError(fld, cfg.ee.m_H_factor if fld == "ee.m_H_factor" else cfg.ee.m_H,
                          f"m_H·m_{{H−1}} = {m_H}·{m_hm1} = {m_H * m_hm1} < n = {n}: Assumption 4 (safe "
                          f"exploration) cannot hold; the smallest m_H that could satisfy it is {smallest} "
                          f"(m_H_factor >= {smallest * m_hm1 / n:.3g})")


def _check_resources(study: Study, specs: list[TrialSpec], cluster: bool) -> None:
    r = study.resources
    for name in ("cpu", "gpu", "diag_actor_cpu", "diag_actor_gpu"):
        if getattr(r, name) < 0:
            raise ConfigError(f"resources.{name}", getattr(r, name), "must be >= 0")
    if r.gpu > 1 and not float(r.gpu).is_integer():
        raise ConfigError("resources.gpu", r.gpu, "a fraction (< 1) packs trials on one GPU; above 1 use whole GPUs")
    if not cluster:
        import torch

        visible = torch.cuda.device_count()
        if (r.gpu or r.diag_actor_gpu) and visible == 0:
            raise ConfigError("resources.gpu", r.gpu, "GPUs are requested but none is visible on this machine; use "
                              "--profile laptop or --smoke (CPU), or run on a GPU cluster (--address)")
        if r.cpu > (os.cpu_count() or 1):
            raise ConfigError("resources.cpu", r.cpu, f"more CPUs per trial than this machine has "
                              f"({os.cpu_count()})")
    wants_cuda = any(s.config.train.device == "cuda" for s in specs)
    if wants_cuda and not r.gpu:
        raise ConfigError("train.device", "cuda", "trials ask for CUDA but resources.gpu = 0: give the trials a GPU "
                          "share (resources.gpu) or use device 'auto'")
    if any(s.config.diag.actors != r.diag_actors for s in specs if s.config.diag.alignment and s.config.diag.actors):
        raise ConfigError("diag.actors", specs[0].config.diag.actors,
                          f"must equal resources.diag_actors = {r.diag_actors} (the actors' bundles)")
