"""A study validated whole before Ray starts: its own settings, every trial's config, the search space, the data
files' formats and sizes, resources, the diagnostics' memory and (optionally) the safe-exploration necessary
condition. Each refusal is a ConfigError naming the field, the value and what is valid; the facts it checks against
(layer widths, memory formulas, dataset sizes) come from the modules that own them.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from eeray.config import ConfigError, TrialConfig, validate
from eeray.errors import is_integer, is_number
from eeray.study import SCHEDULERS, Study, TrialSpec


def validate_study(study: Study, *, cluster: bool = False) -> list[TrialSpec]:
    """Everything the study and the files decide, before Ray starts: the study's own settings, every trial's
    config, the search space, the data files' formats and sizes (n_train, τ within the run), resources, the
    diagnostics' memory and (optionally) the safe-exploration necessary condition. Raises ConfigError naming the
    field, the value and what is valid (or the data loaders' own file errors)."""
    from eeray.datasets import DATASETS

    _check_study_settings(study)
    specs = study.trials()  # raises ConfigError for unknown sweep keys (with the valid keys listed)
    if not specs:
        raise ConfigError("study.variants", dict(study.variants), "the study expands to no trial: give at least "
                          "one variant (the default {'': {}} is one)")
    for spec in specs:
        for cfg in _with_search_bounds(study, spec):
            try:
                validate(cfg)
            except ConfigError as exc:
                raise _in_trial(exc, spec) from None
    _check_user_optimizers(specs)
    sizes = _dataset_sizes(specs, DATASETS)
    for spec in specs:
        for cfg in _with_search_bounds(study, spec):
            try:
                _check_against_data(cfg, sizes[_data_key(cfg.data)])
                if study.require_safe_exploration:
                    check_safe_exploration(cfg, n=sizes[_data_key(cfg.data)].n_trained)
            except ConfigError as exc:
                raise _in_trial(exc, spec) from None
    _check_distinct_trials(specs, sizes)
    _check_resources(study, specs, cluster)
    return specs


def _check_distinct_trials(specs: list[TrialSpec], sizes: dict) -> None:
    """Two trials that build the same run are one trial run twice: it costs its time again and counts twice in
    every statistic over trials. Different m_H factors c can give one head width, m_H = ⌈c·n/m_{H−1}⌉ (at
    n = 600 and m_{H−1} = 2049, LeNet m_c = 4, c = 0.5 and c = 2 both give m_H = 1)."""
    from dataclasses import asdict

    seen: dict[str, TrialSpec] = {}
    for spec in specs:
        cfg = spec.config
        if cfg.ee.enabled and cfg.ee.m_H is None:
            n = sizes[_data_key(cfg.data)].n_before_split
            m_H, m_hm1 = ee_head_sizes(cfg, n)
            cfg = cfg.replace(**{"ee.m_H": m_H, "ee.m_H_factor": None})
        key = repr(sorted(asdict(cfg).items()))
        if key in seen:
            first = seen[key]
            if spec.config.ee.m_H_factor != first.config.ee.m_H_factor:
                raise ConfigError("ee.m_H_factor", spec.config.ee.m_H_factor,
                                  f"trials '{first.name}' (c = {first.config.ee.m_H_factor:g}) and '{spec.name}' "
                                  f"(c = {spec.config.ee.m_H_factor:g}) are one run: both give m_H = {m_H} "
                                  f"(⌈c·n/m_{{H−1}}⌉, n = {n}, m_{{H−1}} = "
                                  f"{m_hm1}); choose factors whose m_H differ, or give ee.m_H")
            raise ConfigError("study.trials", spec.name, f"it repeats trial '{first.name}' (every config field "
                              "agrees): drop one of the two")
        seen[key] = spec


def _in_trial(exc: ConfigError, spec: TrialSpec) -> ConfigError:
    """The same error, naming the trial when the study has more than the one unnamed trial."""
    return ConfigError(exc.field, exc.value, f"{exc.valid} (trial '{spec.name}')" if spec.name else exc.valid)


def check_study_name(name: Any) -> None:
    """The study's name is a directory under the results dir and an MLflow experiment: one safe path component
    (so "", "..", "a/b" or "/tmp/x" can never make --fresh or a write reach outside that directory)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError("study.name", name, "must be one path component of letters, digits, '_', '-' and '.', "
                          "not starting with '.' (e.g. 'width_sweep'); it names the directory "
                          "<results-dir>/<name>")


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def _check_study_settings(study: Study) -> None:
    check_study_name(study.name)
    if study.scheduler not in SCHEDULERS:
        raise ConfigError("study.scheduler", study.scheduler, f"must be one of {SCHEDULERS}")
    if study.scheduler == "asha" and not any(k.endswith(".lr") for k in study.search):
        raise ConfigError("study.scheduler", "asha", "early stopping removes the trials a size-vs-alignment "
                          "correlation needs; it is offered only when the study tunes a learning rate "
                          "(study.search with an '...lr' key)")
    if not isinstance(study.branching, bool):
        raise ConfigError("study.branching", study.branching, "must be True (trials equal until their τ share that "
                          "exploration) or False (every trial from scratch)")
    if study.mode not in ("min", "max"):
        raise ConfigError("study.mode", study.mode, "must be 'min' or 'max'")
    from eeray.results import schema

    trial_columns = schema("trials").names
    for col in study.summary_columns:
        if col not in trial_columns:  # a summary never silently drops a column the schema does not have
            raise ConfigError("study.summary_columns", col, "must name columns of the trials table; see "
                              "docs/results-schema.md")
    if not is_integer(study.samples_per_point) or study.samples_per_point < 1:
        raise ConfigError("study.samples_per_point", study.samples_per_point,
                          "must be an integer >= 1 (Optuna trials per grid point; 1 without a search)")
    if not is_integer(study.max_failures) or study.max_failures < 0:
        raise ConfigError("study.max_failures", study.max_failures,
                          "must be an integer >= 0 (retries of a trial after a lost worker or node; Tune's -1, "
                          "retry forever, is refused: a trial that cannot succeed would never end)")
    joined = isinstance(study.grid, (list, tuple))
    if not (isinstance(study.grid, Mapping) or joined and study.grid and all(isinstance(g, Mapping)
                                                                             for g in study.grid)):
        raise ConfigError("study.grid", study.grid, "must be a dict: dotted key -> list of values, or a non-empty "
                          "list of such dicts (their points joined)")
    for j, grid in enumerate(study.grids()):
        where = f"grid[{j}]" if joined else "grid"
        for key, values in grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
                raise ConfigError(f"{where}.{key}", values, f"a sweep axis is a list of values, e.g. "
                                  f"{{'{key}': [{values!r}]}} for one value")
            if not values:
                raise ConfigError(f"{where}.{key}", values, "a sweep axis needs at least one value")
            for i, v in enumerate(values):
                if any(_same(v, w) for w in values[:i]):
                    raise ConfigError(f"{where}.{key}", list(values), f"the value {v!r} is listed twice; each "
                                      "value once (a repeated value runs the same trials twice)")
    if not isinstance(study.variants, Mapping) or not all(isinstance(v, Mapping) for v in study.variants.values()):
        raise ConfigError("study.variants", study.variants, "must be a dict: label -> dict of dotted overrides")


def _same(a: Any, b: Any) -> bool:
    """Equal as sweep values: 1 and 1.0 are the same trial; True and 1 are not (the config refuses one)."""
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 -- values that do not compare (arrays) are distinct
        return False


def _check_user_optimizers(specs: list[TrialSpec]) -> None:
    """A user factory 'package.module:function' imports here as it will in every trial (same PYTHONPATH)."""
    import importlib

    seen = set()
    for spec in specs:
        for fld, o in (("optim.name", spec.config.optim), ("ee.exploit_optim.name", spec.config.ee.exploit_optim)):
            if o is None or ":" not in o.name or o.name in seen:
                continue
            seen.add(o.name)
            module, _, attr = o.name.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(fld, o.name, f"cannot import the user factory ({type(exc).__name__}: {exc}); "
                                  "it must be importable here and on every worker") from None
            if not callable(fn):
                raise ConfigError(fld, o.name, "must name a callable params -> torch.optim.Optimizer")


@dataclass(frozen=True)
class _Sizes:
    n_files: int | None  # training samples the dataset holds (None: generated, any size)
    n_trained: int  # samples a trial trains on (after the n_train subset and the val_fraction split)
    n_before_split: int  # the n of m_H = ⌈c·n/m_{H−1}⌉: before the split (docs/paper-choices.md (A11))


def _data_key(d) -> tuple:
    return (d.name, d.root, d.n_train, d.val_fraction, d.seed)


def _dataset_sizes(specs: list[TrialSpec], datasets) -> dict[tuple, _Sizes]:
    """Per distinct data config: the size the files hold (real datasets: read from the files, every file's
    format checked) and the training-set size a trial sees."""
    held: dict[tuple, int | None] = {}
    out: dict[tuple, _Sizes] = {}
    for spec in specs:
        d = spec.config.data
        ds = datasets[d.name]
        where = (d.name, d.root or os.environ.get("EERAY_DATA_ROOT"), d.seed)
        if where not in held:
            if ds.kind == "real":
                from eeray.data.real import check_data

                held[where] = check_data(d).n_train
            else:  # bundled sets have a fixed training split; generated ones any size
                held[where] = ds.n_train if ds.kind == "bundled" else None
        n_files = held[where]
        if n_files is not None and d.n_train is not None and d.n_train > n_files:
            raise ConfigError("data.n_train", d.n_train, f"dataset '{d.name}' has {n_files} training samples"
                              f"{' in its files' if ds.kind == 'real' else ''}: at most {n_files}, or None for all")
        n = whole = d.n_train if d.n_train is not None else (n_files if n_files is not None else ds.n_train)
        if d.val_fraction > 0:
            n -= max(1, round(d.val_fraction * n))  # eeray.data._validation_split
        out[_data_key(d)] = _Sizes(n_files, n, whole)
    return out


def _check_against_data(cfg: TrialConfig, sizes: _Sizes) -> None:
    """τ within the run and the diagnostics' memory, from the training-set size a trial will see."""
    n = sizes.n_trained
    if n < 1:
        raise ConfigError("data.val_fraction", cfg.data.val_fraction, f"leaves no training sample of n = {n}")
    steps_per_epoch = math.ceil(n / cfg.train.batch_size)  # eeray.trial: drop_last=False
    if cfg.ee.enabled:
        from eeray.wrapper import tau_step_of

        tau_step_of(cfg.ee, cfg.train.epochs, steps_per_epoch)  # ConfigError: τ = ... steps lies outside the run
    _check_memory(cfg, n)


def _check_memory(cfg: TrialConfig, n: int) -> None:
    """What the config alone decides about the diagnostics' memory budget (eeray.trial_diagnostics)."""
    from eeray.datasets import DATASETS
    from eeray.diagnostics.gram import dense_bytes
    from eeray.diagnostics.hadamard import minimum_bytes

    g = cfg.diag
    budget = int(g.memory_budget_gb * GB)
    if cfg.ee.enabled and (g.assumption4 or g.lemma5):
        m_H, m_hm1 = ee_head_sizes(cfg, n)
        need = minimum_bytes(n, m_hm1, m_H)
        if need > budget:
            off = " and ".join(f"diag.{k} = False" for k in ("assumption4", "lemma5") if getattr(g, k))
            raise ConfigError("diag.memory_budget_gb", g.memory_budget_gb,
                              f"the safe-exploration Grams (n×n float64 for n = {n}, m_H = {m_H}, m_(H−1) = {m_hm1}) "
                              f"need at least {_gb(need)}: raise diag.memory_budget_gb to >= "
                              f"{math.ceil(need / GB * 100) / 100:g}, or set {off}")
    if g.alignment and g.method == "dense":
        N = min(g.max_samples or n, n) * DATASETS[cfg.data.name].m_y
        need = dense_bytes(N) + (N * N * 8 if g.delta_m else 0)  # + M_0 (N×N float64) for ΔM
        if need > budget:
            raise ConfigError("diag.memory_budget_gb", g.memory_budget_gb,
                              f"the dense alignment report (M: {N}×{N} float64, its eigendecomposition"
                              f"{', and M_0 for ΔM' if g.delta_m else ''}) needs at least {_gb(need)}: raise "
                              f"diag.memory_budget_gb to >= {math.ceil(need / GB * 100) / 100:g}, use diag.method "
                              f"'auto' (matrix-free when dense does not fit), or fewer diag.max_samples")


GB = 2**30  # eeray.trial_diagnostics: memory_budget_gb is in GiB


def _gb(nbytes: int) -> str:
    return f"{nbytes:,} bytes ({nbytes / GB:.3g} GiB)"


def ee_head_sizes(cfg: TrialConfig, n: int) -> tuple[int, int]:
    """(m_H, m_(H−1)) of the EE model built for this config and n training samples, without building it."""
    from eeray.datasets import DATASETS
    from eeray.models import head_input_width, replaced_width
    from eeray.surgery import resolve_m_H

    m_hm1 = head_input_width(cfg.model, DATASETS[cfg.data.name])
    m_H, _ = resolve_m_H(cfg.ee.m_H, cfg.ee.m_H_factor, n, m_hm1, replaced_width(cfg.model))
    return m_H, m_hm1


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


def check_safe_exploration(cfg: TrialConfig, n: int | None = None) -> None:
    """Assumption 4 needs m_H·m_{H−1} ≥ n (necessary, not sufficient); name the smallest m_H that could work.
    ``n``: the training-set size (default: data.n_train, else the dataset's size)."""
    if not cfg.ee.enabled:
        return
    from eeray.datasets import DATASETS

    n = n if n is not None else (cfg.data.n_train or DATASETS[cfg.data.name].n_train)
    m_H, m_hm1 = ee_head_sizes(cfg, n)
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
        v = getattr(r, name)
        if not is_number(v) or v < 0:
            raise ConfigError(f"resources.{name}", v, "must be a number >= 0")
    if r.cpu <= 0:
        raise ConfigError("resources.cpu", r.cpu, "must be > 0 (CPUs per trial, e.g. 1): a trial with no CPU "
                          "reserved is never limited, so every trial would start at once")
    if not is_integer(r.diag_actors) or r.diag_actors < 0:
        raise ConfigError("resources.diag_actors", r.diag_actors, "must be an integer >= 0")
    if r.diag_actors and not (r.diag_actor_cpu or r.diag_actor_gpu):
        raise ConfigError("resources.diag_actor_cpu", r.diag_actor_cpu, "diagnostic actors need a CPU or a GPU "
                          "each: > 0 (or resources.diag_actor_gpu > 0)")
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
