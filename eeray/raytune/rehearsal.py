"""``ray up cluster.yaml`` rehearsed on one machine with Ray's own autoscaler.

    python -m eeray.raytune.rehearsal up                 # the head (0 CPUs) + an autoscaler with cluster.yaml's
                                                         # node types; prints the two lines to export
    ray job submit --address http://127.0.0.1:<dashboard> --working-dir . -- \\
        python studies/width_sweep.py --smoke --results-dir /tmp/eeray-rehearsal/results --max-concurrent 2
    python -m eeray.raytune.rehearsal status             # nodes: type, id, alive; what the autoscaler launched
    python -m eeray.raytune.rehearsal reclaim            # SIGKILL a busy worker node, as a spot reclaim does
    python -m eeray.raytune.rehearsal down               # stop exactly the processes `up` started

What is real: ``ray start --head`` with ``--autoscaling-config`` (the command ``ray up`` runs on the head), Ray's
autoscaler (``monitor.py``, the same ``StandardAutoscaler`` as on AWS) reading a twin of ``cluster.yaml``, the
dashboard's job server behind ``ray job submit``, token authentication, and worker nodes launched on demand and
removed when idle. What is not: the cloud. Nodes are launched by Ray's fake multi-node provider (as Ray's docs
"Testing Autoscaling Locally" describe), here :class:`eeray.raytune.fake_provider.RehearsalNodeProvider`, each
node a raylet with its own temp directory on 127.0.0.1; no setup commands run and no image is pulled.

The twin (``eeray/raytune/rehearsal.yaml``) is derived from ``cluster.yaml`` by :func:`twin`: the same node types,
resources and worker limits, the head renamed to the fake provider's ``ray.head.default``, ``min_workers: 0``
everywhere (workers are launched for demand only) and a short idle timeout; ``tests/test_rehearsal.py`` fails when
the two drift apart. Logical resources are the cluster's (a ``gpu_worker`` node advertises ``GPU: 1`` whether or
not this machine has one), so a study's GPU request is planned as on AWS; a CPU study runs for real.

Processes: everything ``up`` starts descends from one ``ray start --block`` or runs under ``<root>``; ``down`` and
``reclaim`` signal exactly those PIDs and never use ``ray stop`` (which would end every Ray of the user).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parents[2]
TWIN = Path(__file__).with_name("rehearsal.yaml")
DEFAULT_ROOT = Path("/tmp/eeray-rehearsal")
STATE_FILE = "rehearsal.json"
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head's type
IDLE_TIMEOUT_MINUTES = 0.5  # workers idle this long are removed (cluster.yaml: 10)
PROVIDER = {"type": "external", "module": "eeray.raytune.fake_provider.RehearsalNodeProvider",
            "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True}
# the rehearsal's clock: the autoscaler looks every second, and a node that stopped answering is declared lost
# (and replaced where there is demand) after 10 s instead of 30 s; `ray job stop` lets a study's driver close its
# record (the summary, the MLflow runs) for up to 60 s before it kills it, as cluster.yaml's head does
HEAD_ENV = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",
            "RAY_JOB_STOP_WAIT_TIME_S": "60", "RAY_USAGE_STATS_ENABLED": "0"}


def twin(cluster: dict) -> dict:
    """The fake-provider autoscaler config that mirrors ``cluster`` (a parsed cluster.yaml)."""
    head = cluster["head_node_type"]
    types = {}
    for name, spec in cluster["available_node_types"].items():
        is_head = name == head
        types[HEAD_TYPE if is_head else name] = {
            "resources": dict(spec.get("resources", {})), "node_config": {}, "min_workers": 0,
            "max_workers": 0 if is_head else spec.get("max_workers", cluster["max_workers"])}
    return {"cluster_name": f"{cluster['cluster_name']}-rehearsal", "max_workers": cluster["max_workers"],
            "upscaling_speed": cluster.get("upscaling_speed", 1.0), "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
            "provider": dict(PROVIDER), "auth": {"ssh_user": "ubuntu"}, "docker": {},
            "available_node_types": types, "head_node_type": HEAD_TYPE,
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
            "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
            "worker_start_ray_commands": []}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rehearsal:
    """``up()`` starts it, ``down()`` stops exactly what it started; the state lives in ``<root>/rehearsal.json``
    so that the command line's ``status``/``reclaim``/``down`` find a cluster another process started."""

    def __init__(self, root: Path = DEFAULT_ROOT, config: Path = TWIN):
        self.root, self.config = Path(root), Path(config)
        self.state: dict = {}

    # ------------------------------------------------------------------ what a driver and `ray job submit` need
    @property
    def token_path(self) -> Path:
        return self.root / "auth_token"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.state['gcs_port']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.state['dashboard_port']}"

    def env(self) -> dict[str, str]:
        """The environment of a shell that talks to the cluster (`ray job submit`, `ray status`)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        return env

    # ------------------------------------------------------------------ up / down
    def up(self, timeout: float = 120) -> "Rehearsal":
        if (self.root / STATE_FILE).exists():
            raise RuntimeError(f"a rehearsal is already up under {self.root} (`python -m eeray.raytune.rehearsal "
                               f"down --root {self.root}` first)")
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        self.state = {"gcs_port": _free_port(), "dashboard_port": _free_port()}
        config = yaml.safe_load(self.config.read_text())
        config["provider"].update(root=str(self.root), gcs_address=self.gcs_address)
        autoscaling = self.root / "autoscaler.yaml"
        autoscaling.write_text(yaml.safe_dump(config, sort_keys=False))
        head = config["available_node_types"][HEAD_TYPE]["resources"]
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address=127.0.0.1", f"--port={self.state['gcs_port']}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.state['dashboard_port']}",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
               f"--num-cpus={head.get('CPU', 0)}", f"--num-gpus={head.get('GPU', 0)}",
               f"--temp-dir={self.root / 'head'}", f"--autoscaling-config={autoscaling}"]
        log = open(self.root / "head.log", "w")
        proc = subprocess.Popen(cmd, env={**self.env(), **HEAD_ENV}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.root)
        self.state.update(pid=proc.pid, started=time.time())
        (self.root / STATE_FILE).write_text(json.dumps(self.state))
        try:
            self._wait_dashboard(proc, timeout)
        except BaseException:
            self.down()
            raise
        return self

    def _wait_dashboard(self, proc: subprocess.Popen, timeout: float) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start --head` exited {proc.returncode}: see {self.root / 'head.log'}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError:  # it answers (401 without the token): it is up
                return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the dashboard did not answer at {self.dashboard} within {timeout:.0f} s")

    def processes(self, under: Path | None = None) -> list[psutil.Process]:
        """The processes of the rehearsal (or of the node whose directory is ``under``): the head's process tree,
        and every process whose command line names a directory under the root with its descendants (a node the
        autoscaler launched outlives its parent process, and its workers are retitled ``ray::...``)."""
        mark = str(under or self.root)
        found: dict[int, psutil.Process] = {}
        if under is None:
            try:
                head = psutil.Process(self.state["pid"])
                found.update({p.pid: p for p in [head, *head.children(recursive=True)]})
            except psutil.NoSuchProcess:
                pass
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid not in found and any(mark in part for part in (p.info["cmdline"] or [])):
                    # with its children: a raylet's workers and agents name no directory (Ray retitles them)
                    found.update({c.pid: c for c in [p, *p.children(recursive=True)]})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}  # a caller whose arguments name the root
        return [p for p in found.values() if p.pid not in me]

    def down(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL, exactly the rehearsal's processes; the root directory stays (logs)."""
        procs = self.processes()
        _signal(procs, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        _signal(alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        left = self.processes()
        _signal(left, signal.SIGKILL)
        (self.root / STATE_FILE).unlink(missing_ok=True)

    @classmethod
    def load(cls, root: Path = DEFAULT_ROOT) -> "Rehearsal":
        r = cls(root)
        try:
            r.state = json.loads((Path(root) / STATE_FILE).read_text())
        except FileNotFoundError:
            raise RuntimeError(f"no rehearsal is up under {root} (`python -m eeray.raytune.rehearsal up`)") from None
        return r

    # ------------------------------------------------------------------ the worker nodes
    def workers(self) -> list[dict]:
        """Every worker node the autoscaler launched, alive or not: node id, type, its directory."""
        out = []
        for f in sorted((self.root / "nodes").glob("*/node.json")):
            info = json.loads(f.read_text())
            out.append({**info, "dir": str(f.parent), "alive": bool(self.processes(f.parent))})
        return out

    def reclaim(self, node_id: str | None = None) -> dict:
        """SIGKILL every process of one worker node (by default the newest alive one), as a spot reclaim takes
        the machine away: its raylet, object store, agents and the trials running there."""
        alive = [w for w in self.workers() if w["alive"] and (node_id is None or w["node_id"].endswith(node_id))]
        if not alive:
            raise RuntimeError(f"no alive worker node{' ' + node_id if node_id else ''} to reclaim")
        node = alive[-1]
        _signal(self.processes(Path(node["dir"])), signal.SIGKILL)
        return node


def _signal(procs, sig) -> None:
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _ray_command() -> str:
    """``ray`` where the shell finds this environment's; otherwise its full path, so that the printed command
    works pasted into a shell that has not activated the environment."""
    here = Path(sys.executable).parent / "ray"
    found = shutil.which("ray")
    return "ray" if found and Path(found).resolve() == here.resolve() else str(here)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eeray.raytune.rehearsal", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__,
                                allow_abbrev=False)
    p.add_argument("command", choices=["up", "status", "reclaim", "down", "twin"])
    p.add_argument("node", nargs="?", help="reclaim: the node id (or its last digits); default the newest")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"state, logs, nodes (default {DEFAULT_ROOT})")
    p.add_argument("--cluster-yaml", type=Path, default=REPO / "cluster.yaml", help="twin: derive from this file")
    args = p.parse_args(argv)
    if args.command == "twin":  # the file tests/test_rehearsal.py compares with the committed twin
        print(yaml.safe_dump(twin(yaml.safe_load(args.cluster_yaml.read_text())), sort_keys=False), end="")
        return 0
    try:
        if args.command == "up":
            r = Rehearsal(args.root).up()
            print(f"rehearsal up: head at {r.gcs_address} (0 CPUs), dashboard {r.dashboard}, autoscaler with the "
                  f"node types of cluster.yaml ({TWIN.name}); logs under {args.root}\n"
                  f"In the shell that submits jobs:\n"
                  f"    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={r.token_path}\n"
                  f"    {_ray_command()} job submit --address {r.dashboard} --working-dir . -- python "
                  f"studies/width_sweep.py --smoke --results-dir {args.root / 'results'} --max-concurrent 2")
            return 0
        r = Rehearsal.load(args.root)
        if args.command == "status":
            out = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address", r.gcs_address],
                                 env=r.env(), capture_output=True, text=True)
            print(out.stdout or out.stderr)
            for w in r.workers():
                print(f"worker {w['node_id']} ({w['node_type']}): {'alive' if w['alive'] else 'gone'}")
        elif args.command == "reclaim":
            node = r.reclaim(args.node)
            print(f"reclaimed worker {node['node_id']} ({node['node_type']}): every process SIGKILLed")
        elif args.command == "down":
            r.down()
            print(f"rehearsal down: its processes are stopped; logs stay under {args.root}")
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
