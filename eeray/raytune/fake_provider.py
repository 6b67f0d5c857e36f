"""The node provider of the ``ray up`` rehearsal (:mod:`eeray.raytune.rehearsal`): Ray's own fake multi-node provider
(``ray/autoscaler/_private/fake_multi_node``), with each launched node given a temp directory of its own and
every address on 127.0.0.1.

Why not the fake provider as Ray ships it: it starts every node with the head's temp directory, so all nodes share
one session directory. Each node's runtime-env agent then extracts a job's working directory into the same place,
which is the current directory of the job's driver on the head: a worker node launched (or lost) mid-study
re-extracts (or deletes) the driver's code under it. On a real cluster each node has its own disk, which a
directory per node reproduces. It also advertises the machine's address, where the rehearsal keeps all of its
traffic on loopback.

The autoscaler imports this class by name (``provider: {type: external, module: ...}`` in the rehearsal's
config). It depends on Ray's private fake provider and ``ray._private`` node start-up, which is why it is one
small module: ``tests/test_rehearsal.py`` launches nodes through it and fails loudly when a Ray upgrade changes
either.
"""
from __future__ import annotations

import copy
import json
import os

import ray
import ray._private.ray_constants as ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.autoscaler.tags import (NODE_KIND_WORKER, STATUS_UP_TO_DATE, TAG_RAY_NODE_KIND, TAG_RAY_NODE_NAME,
                                 TAG_RAY_NODE_STATUS, TAG_RAY_USER_NODE_TYPE)

NODE_IP = "127.0.0.1"


class RehearsalNodeProvider(FakeMultiNodeProvider):
    """Launches a worker node as Ray's fake provider does (a raylet, object store and agents started by the
    autoscaler's process), under ``<provider.root>/nodes/<n>`` and on 127.0.0.1."""

    def __init__(self, provider_config, cluster_name):
        super().__init__(provider_config, cluster_name)
        self._root = provider_config["root"]

    def non_terminated_nodes(self, tag_filters):
        """As a cloud's API does, a node whose machine is gone (every process of it killed: a spot reclaim) is
        terminated, so the autoscaler replaces it. Ray's fake provider keeps it forever, and the autoscaler, which
        no longer hears from it, keeps counting it as a node still starting ("uninitialized") and launches
        nothing for the demand it left."""
        with self.lock:
            for node_id in [n for n, info in self._nodes.items() if "node" in info and not info["node"].live_processes()]:
                del self._nodes[node_id]
        return super().non_terminated_nodes(tag_filters)

    def node_dir(self, node_id: str) -> str:
        """Short on purpose: Ray's Unix socket paths live under it (at most 107 bytes)."""
        return os.path.join(self._root, "nodes", node_id[-5:])

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        resources = copy.deepcopy(resources)  # popped below
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            temp_dir = self.node_dir(node_id)
            os.makedirs(temp_dir, exist_ok=True)
            params = ray._private.parameter.RayParams(
                node_ip_address=NODE_IP, min_worker_port=0, max_worker_port=0, dashboard_port=None,
                dashboard_agent_listen_port=0, temp_dir=temp_dir,
                num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", None), resources=resources, labels=labels,
                redis_address=self._gcs_address, gcs_address=self._gcs_address,
                env_vars={"RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id, "RAY_CLOUD_INSTANCE_ID": node_id,
                          "RAY_NODE_TYPE_NAME": node_type,
                          ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                          ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels)})
            node = ray._private.node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            self._nodes[node_id] = {"tags": {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
                                             TAG_RAY_NODE_NAME: node_id, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
                                             **tags},
                                    "node": node}
            # what the rehearsal's `reclaim` and the tests read: which directory is which node, of which type
            with open(os.path.join(temp_dir, "node.json"), "w") as f:
                json.dump({"node_id": node_id, "node_type": node_type}, f)
