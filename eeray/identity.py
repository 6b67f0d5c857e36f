"""A study execution's identity: the expanded study (every trial's full config and the study-level settings),
its fingerprint, and the difference between two of them.

``--resume`` must continue exactly what was started: a study file edited in between (a base learning rate
changed, a grid value added, another profile) would otherwise run a mix of two definitions. The expanded
definition is stored in ``execution.json`` when an execution starts; a resume compares the study as it is now
against it and refuses, printing what differs, unless the only change is added trials and the user asked for
them (``--extend``). Imports no Ray and no torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from eeray.config import to_flat

EXECUTION_FILE = "execution.json"  # in the study directory: the execution, its definition and its segments
IDENTITY_VERSION = 1


def eeray_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("eeray")
    except PackageNotFoundError:  # a source checkout run without installing
        return "unknown"


def _domain_text(dom: Any) -> str:
    """A Tune search domain as stable text (its repr names the sampler and bounds)."""
    parts = [type(dom).__name__] + [f"{k}={getattr(dom, k)!r}" for k in ("lower", "upper", "categories", "base", "q")
                                    if hasattr(dom, k)]
    sampler = getattr(dom, "sampler", None)
    if sampler is not None:
        parts.append(type(sampler).__name__)
    return " ".join(parts)


def definition(study, profile: str) -> dict[str, Any]:
    """Everything that decides what an execution runs, as plain JSON: settings, profile, version, trials."""
    r = study.resources
    settings = {
        "name": study.name, "metric": study.metric, "mode": study.mode, "scheduler": study.scheduler,
        "max_failures": study.max_failures, "require_safe_exploration": study.require_safe_exploration,
        "samples_per_point": study.samples_per_point, "branching": study.branching,
        "search": {k: _domain_text(v) for k, v in sorted(study.search.items())},
        "resources": {"cpu": r.cpu, "gpu": r.gpu, "diag_actors": r.diag_actors, "diag_actor_cpu": r.diag_actor_cpu,
                      "diag_actor_gpu": r.diag_actor_gpu},
    }
    trials = {study.trial_name(p): to_flat(study.config(p)) for p in study.points()}
    return json.loads(json.dumps({"identity_version": IDENTITY_VERSION, "eeray_version": eeray_version(),
                                  "profile": profile, "settings": settings, "trials": trials},
                                 sort_keys=True, default=str))


def fingerprint(defn: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(defn, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Difference:
    added: list[str] = field(default_factory=list)  # trial names only in the new definition
    removed: list[str] = field(default_factory=list)  # only in the recorded one
    changed: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)  # trial -> field -> (was, now)
    settings: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # profile, version, study-level settings

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.settings)

    @property
    def only_added(self) -> bool:
        return bool(self.added) and not (self.removed or self.changed or self.settings)

    def lines(self, limit: int = 12) -> list[str]:
        out = [f"  {k}: recorded {was!r}, now {now!r}" for k, (was, now) in self.settings.items()]
        if self.added:
            out.append(f"  trials added ({len(self.added)}): " + _names(self.added, limit))
        if self.removed:
            out.append(f"  trials removed ({len(self.removed)}): " + _names(self.removed, limit))
        for i, (name, fields) in enumerate(sorted(self.changed.items())):
            if i == limit:
                out.append(f"  ... and {len(self.changed) - limit} more changed trials")
                break
            diffs = ", ".join(f"{k}: {was!r} -> {now!r}" for k, (was, now) in sorted(fields.items()))
            out.append(f"  trial '{name}' changed: {diffs}")
        return out


def _names(names: list[str], limit: int) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def compare(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> Difference:
    """What ``current`` would run differently from the ``recorded`` execution."""
    diff = Difference()
    for key in ("profile", "eeray_version", "identity_version"):
        if recorded.get(key) != current.get(key):
            diff.settings[key] = (recorded.get(key), current.get(key))
    rs, cs = recorded.get("settings", {}), current.get("settings", {})
    for key in sorted(set(rs) | set(cs)):
        if rs.get(key) != cs.get(key):
            diff.settings[f"study.{key}"] = (rs.get(key), cs.get(key))
    rt, ct = recorded.get("trials", {}), current.get("trials", {})
    diff.added = [n for n in ct if n not in rt]
    diff.removed = [n for n in rt if n not in ct]
    for name in (n for n in ct if n in rt):
        fields = {k: (rt[name].get(k), ct[name].get(k)) for k in sorted(set(rt[name]) | set(ct[name]))
                  if rt[name].get(k) != ct[name].get(k)}
        if fields:
            diff.changed[name] = fields
    return diff
