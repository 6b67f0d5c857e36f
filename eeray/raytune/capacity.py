"""Can the cluster ever run one trial? Its nodes now, plus the node types its autoscaler may launch.

An autoscaling cluster (``ray up cluster.yaml``) starts with a head and no workers: at submission time
``ray.cluster_resources()`` shows 0 GPUs although the autoscaler will launch GPU workers for the study's demand.
So a trial's placement group is checked, bundle by bundle, against every alive node and every node type the
autoscaler may still launch: a bundle that fits neither is refused before any trial, naming the node types; one
that fits only a node type not yet launched is accepted, and the run says it waits for the autoscaler.

Where the node types come from (Ray 2.60 has no public API for them):
1. the cluster config that an autoscaler reports to the GCS (autoscaler v2, KubeRay):
   ``ray._private.state.state.get_cluster_config()``, what Ray Data reads to plan against a cluster's maximum;
2. otherwise the autoscaler v1 that ``ray up`` starts (``monitor.py`` on the head, where the driver of a
   ``ray job submit`` job runs): its ``--autoscaling-config`` file, found from the monitor process of this
   cluster's GCS (``--gcs-address``), is the cluster.yaml the autoscaler plans with.
Neither found: the cluster is taken as fixed, its nodes now are all it will have. ``tests/test_rehearsal.py``
reads the node types from a real autoscaler and fails loudly if either way stops working.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import psutil
import ray
import yaml

from eeray.raytune.connect import ClusterError

IGNORED = ("memory", "object_store_memory")  # sized by Ray, not asked for by a trial's bundle


@dataclass(frozen=True)
class NodeShape:
    name: str  # a node type, or "node <ip>" for an alive node
    resources: dict[str, float]
    launchable: int  # how many more the autoscaler may launch (0 for an alive node)

    def fits(self, bundle: dict[str, float]) -> bool:
        return all(self.resources.get(k, 0) >= v for k, v in bundle.items() if v)

    def __str__(self) -> str:
        shown = {"CPU": 0.0, "GPU": 0.0, **{k: v for k, v in self.resources.items()
                                            if v and k not in IGNORED and not k.startswith("node:")}}
        res = ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items()))
        return f"{self.name} {{{res}}}" + (f" ×{self.launchable}" if self.launchable else "")


def alive_nodes() -> list[NodeShape]:
    return [NodeShape(f"node {n['NodeManagerAddress']}", dict(n.get("Resources", {})), 0)
            for n in ray.nodes() if n.get("Alive")]


def autoscaler_node_types(gcs_address: str) -> tuple[list[NodeShape], str]:
    """The worker node types this cluster's autoscaler may launch (with how many more), and where they were read;
    ``([], "")`` for a cluster without an autoscaler."""
    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return ([NodeShape(g.name, dict(g.resources), g.max_count if g.max_count >= 0 else 10**9)
                 for g in config.node_group_configs], "the cluster config its autoscaler reported to the GCS")
    path = _monitor_config(gcs_address)
    if path is None:
        return [], ""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    head = cfg.get("head_node_type")
    shapes = [NodeShape(name, {k: float(v) for k, v in (t.get("resources") or {}).items()},
                        int(t.get("max_workers", cfg.get("max_workers", 0))))
              for name, t in (cfg.get("available_node_types") or {}).items() if name != head]
    return [s for s in shapes if s.launchable > 0], f"the autoscaler's config {path}"


def _monitor_config(gcs_address: str) -> str | None:
    """The ``--autoscaling-config`` of the autoscaler (``monitor.py``) serving ``gcs_address``, on this node."""
    for p in psutil.process_iter(["cmdline"]):
        try:
            args = p.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if not any(a.endswith("autoscaler/_private/monitor.py") for a in args):
            continue
        if f"--gcs-address={gcs_address}" not in args:
            continue
        for a in args:
            if a.startswith("--autoscaling-config="):
                path = os.path.expanduser(a.split("=", 1)[1])
                return path if os.path.exists(path) else None
    return None


def check(bundles: list[dict[str, float]], gcs_address: str) -> str | None:
    """Refuse (:class:`ClusterError`) a trial whose bundles no node and no launchable node type can hold; return
    a note when some bundle fits only a node type the autoscaler has yet to launch (None: it fits now)."""
    return judge(bundles, alive_nodes(), *autoscaler_node_types(gcs_address))


def judge(bundles: list[dict[str, float]], alive: list[NodeShape], types: list[NodeShape], source: str) -> str | None:
    """:func:`check` on given nodes and node types (``source``: where the types were read; empty: no autoscaler)."""
    waiting = []
    for bundle in {tuple(sorted(b.items())): b for b in bundles}.values():
        if any(n.fits(bundle) for n in alive):
            continue
        later = [t for t in types if t.fits(bundle)]
        if not later:
            launch = (f"node types its autoscaler may launch ({source}): {'; '.join(map(str, types)) or 'none'}"
                      if source else "no autoscaler was found, so these nodes are all it will have")
            raise ClusterError(f"resources per trial {bundles}: no node of this cluster can ever hold the bundle "
                               f"{bundle}. Nodes now: {'; '.join(map(str, alive))}. {launch[0].upper()}{launch[1:]}. "
                               f"Ask for less (the study's Resources) or add a node type that has it "
                               f"(cluster.yaml available_node_types)")
        waiting.append(f"{bundle} fits no node yet; the autoscaler may launch {', '.join(t.name for t in later)}")
    return "waiting for the autoscaler: " + "; ".join(waiting) if waiting else None
