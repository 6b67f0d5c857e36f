"""How a study attaches to Ray: a fresh local Ray of its own, or the cluster it was pointed at.

The CLI decides which (:func:`eeray.cli.choose_ray`): ``--address``, else ``RAY_ADDRESS`` (what ``ray job submit``
gives a job's driver), else a local Ray. A bare ``ray.init()`` would also join whatever a ``ray start`` left in
Ray's temp directory; a study without an address instead starts its own Ray (``address="local"``), with every
address it advertises on 127.0.0.1 (``_node_ip_address``): its workers and agents talk over loopback only.
Joining a running cluster (``auto`` or ``host:port``) is checked before any work:
nothing listening, no token and a wrong token each end in one :class:`ClusterError` that says what to set,
and on a cluster of more than one node the checkpoint storage must be a directory every node sees
(:func:`check_shared_storage`). :func:`connect` returns a :class:`RayCluster` describing which Ray ran the
study, for the summary.

Token authentication (Ray 2.60, checked in ``ray/_private/authentication/authentication_token_setup.py`` and
``ray/_private/worker.py``): a process uses a token when ``RAY_AUTH_MODE=token``; the token is read from
``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. A driver given an
explicit address never turns token mode on by itself (only ``auto`` does, when a token file exists).
"""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import ray

from eeray import cpu_kernels
from eeray.raytune.atomic_storage import local_path


class ClusterError(RuntimeError):
    """The study cannot use the Ray it was pointed at; the message says what to set."""


@dataclass(frozen=True)
class RayCluster:
    started: bool  # this process started it (and shuts it down)
    address: str
    nodes: tuple[str, ...]  # node IPs, head first where known
    cpus: float
    gpus: float
    why: str = ""  # why this Ray: "--address 10.0.0.5:6379", "RAY_ADDRESS=... in the environment", ...

    @property
    def description(self) -> str:
        what = "a local Ray started for this study" if self.started else f"the Ray cluster at {self.address}"
        return (f"{what}: {len(self.nodes)} node(s) ({', '.join(self.nodes)}), {self.cpus:g} CPUs, "
                f"{self.gpus:g} GPUs" + (f" (chosen by {self.why})" if self.why else ""))


def connect(address: str | None, storage: str | None = None, why: str = "") -> RayCluster:
    """Start a local Ray (``address`` "local", None or empty) or attach to ``address`` ("auto" or host:port); on a
    multi-node cluster, refuse a ``storage`` that not every node can write. ``why`` says how the address was
    chosen (flag, environment or default), for the run's first line and its summary."""
    if ray.is_initialized():  # a caller (a test, a notebook) owns Ray already
        return _describe(False, why)
    cpu_kernels.apply()  # a local Ray's workers inherit it: every trial and actor computes alike (eeray.cpu_kernels)
    if not address or address == "local":
        os.environ.pop("RAY_ADDRESS", None)  # not inherited by anything this Ray starts either
        _workers_import_this_eeray()
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=os.cpu_count(), include_dashboard=False,
                 configure_logging=True, logging_level="WARNING")
        return _describe(True, why)
    _check_listening(address)
    try:
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
    except Exception as exc:  # Ray wraps the cause in ConnectionError/RuntimeError; say which it was
        raise ClusterError(_refusal(address, exc)) from None
    cluster = _describe(False, why)
    try:
        if storage and len(cluster.nodes) > 1:
            check_shared_storage(storage)
    except BaseException:
        ray.shutdown()
        raise
    return cluster


def _describe(started: bool, why: str = "") -> RayCluster:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    head = [n for n in nodes if "node:__internal_head__" in n.get("Resources", {})]
    ordered = head + [n for n in nodes if n not in head]
    total = ray.cluster_resources()
    address = ray.get_runtime_context().gcs_address  # public (RuntimeContext); was ray._private's global worker
    return RayCluster(started, address, tuple(n["NodeManagerAddress"] for n in ordered),
                      float(total.get("CPU", 0)), float(total.get("GPU", 0)), why)


def _workers_import_this_eeray() -> None:
    """A local Ray's workers inherit this environment, and Ray puts the driver's working directory on their
    sys.path: without this, they would import whatever eeray their own sys.path finds (none, where a clone's study
    file runs uninstalled; a folder named ``eeray`` in the working directory, as a namespace package). PYTHONPATH
    names the folder of the eeray this driver imported, so the trials run the same code."""
    from eeray.commands import eeray_root  # noqa: PLC0415

    root, current = str(eeray_root()), os.environ.get("PYTHONPATH", "")
    if current.split(os.pathsep)[0] != root:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, current]) if current else root


# --------------------------------------------------------------------------- attaching
def _check_listening(address: str) -> None:
    """Fail fast when nothing listens at host:port (``ray.init`` would retry for a minute first)."""
    if address == "auto":
        from ray._private import services

        try:
            services.canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            raise ClusterError(f"--address auto: no running Ray cluster found on this machine ({exc}). Start one "
                               "with `ray start --head` (or `python -m eeray.raytune.localcluster up`), or pass "
                               "--address host:port; without --address the study starts its own local Ray") from None
        return
    host, _, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise ClusterError(f"--address {address}: Ray Client addresses are not supported; run the study on the "
                           "head node (or as a `ray job submit` job) with --address auto or the GCS host:port")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r}: expected 'auto' or host:port of the head's GCS "
                           f"(e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(f"--address {address}: nothing is listening there ({exc.strerror or exc}). Start the "
                           f"head with `ray start --head --port={port}` or fix the address (`ray status` on the "
                           f"head prints it)") from None


def _refusal(address: str, exc: BaseException) -> str:
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(c) for c in chain)
    auth = any(type(c).__name__ == "AuthenticationError" for c in chain) or "InvalidAuthToken" in text
    mode = os.environ.get("RAY_AUTH_MODE", "")
    where = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
             os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token"))
    if auth and mode.lower() != "token":
        return (f"--address {address}: the cluster requires token authentication and this driver sent no token "
                f"(RAY_AUTH_MODE is {mode or 'unset'}). Export RAY_AUTH_MODE=token and the cluster's token: "
                f"RAY_AUTH_TOKEN_PATH=<file> or RAY_AUTH_TOKEN=<token> (on the head: `ray get-auth-token`)")
    if auth:
        return (f"--address {address}: the cluster rejected this driver's token (read from {where}). Use the "
                f"token the cluster was started with (`ray get-auth-token` on the head) in RAY_AUTH_TOKEN_PATH or "
                f"RAY_AUTH_TOKEN")
    first = str(chain[-1]).strip().splitlines()[:1]
    return (f"--address {address}: could not attach to the Ray cluster ({type(chain[-1]).__name__}: "
            f"{first[0] if first else ''}). The driver must run on a node of the cluster (the head, or a job "
            f"submitted with `ray job submit`) with the same Ray version")


# --------------------------------------------------------------------------- storage
def _probe(directory: str, driver_file: str, node_id: str) -> str | None:
    """On one node: write ``<directory>/<node_id>`` and read the driver's file; the error, or None."""
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, node_id), "w") as f:
            f.write(node_id)
        if not os.path.exists(os.path.join(directory, driver_file)):
            return f"does not see the driver's file {os.path.join(directory, driver_file)}"
        return None
    except OSError as exc:
        return f"cannot write there: {exc}"


def _alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes())


def check_shared_storage(storage: str) -> None:
    """Refuse checkpoint storage that not every alive node can write and see: Tune (since Ray 2.7) writes and
    restores checkpoints on the trial's node, so a directory private to one node loses a retried trial.
    URIs are not probed here: every node reaches them through pyarrow, and an ``s3://`` storage has been checked
    before Ray started (:mod:`eeray.raytune.s3`: bucket, credentials, endpoint)."""
    path = local_path(storage)
    if path is None:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = os.path.join(path, f".eeray-storage-probe-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(probe, exist_ok=True)
        open(os.path.join(probe, "driver"), "w").close()
    except OSError as exc:
        raise ClusterError(f"--storage {storage}: the driver cannot write there ({exc}); use a directory every "
                           "node mounts (NFS) or s3://bucket/path") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(num_cpus=0, max_retries=0)(_probe)
        # by node id: nodes on one machine (a rehearsal) share an IP
        refs = {n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(probe, "driver", n["NodeID"]) for n in nodes}
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in nodes}
        errors, gone = {}, set()
        for node_id, ref in refs.items():
            try:
                err = ray.get(ref, timeout=120)
            except ray.exceptions.RayError:
                # a node that left meanwhile (an autoscaler removing an idle worker, a reclaim) holds no trial
                if _alive(node_id):
                    raise
                gone.add(node_id)
                continue
            if err:
                errors[ips[node_id]] = err
        seen = set(os.listdir(probe))
        errors.update({ips[i]: "wrote its file where the driver cannot see it"
                       for i in refs if i not in seen | gone and ips[i] not in errors})
        if errors:
            detail = "; ".join(f"node {ip} {err}" for ip, err in sorted(errors.items()))
            raise ClusterError(f"--storage {storage} is not shared by every node of the cluster ({detail}). "
                               f"Checkpoints are written and restored on the trial's node: pass --storage on a "
                               f"file system every node mounts at the same path (NFS) or s3://bucket/path")
    finally:
        for name in os.listdir(probe):
            os.remove(os.path.join(probe, name))
        os.rmdir(probe)
