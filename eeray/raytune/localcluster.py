"""A real multi-node Ray cluster on one machine, to rehearse a study's cluster path (and to test it).

    python -m eeray.raytune.localcluster up            # head + 2 workers, token authentication on
    python -m eeray.raytune.localcluster run -- python studies/width_sweep.py --smoke --address 10.213.0.1:6379 \
        --storage /tmp/eeray-localcluster/shared/ckpt --results-dir /tmp/eeray-localcluster/shared/results
    python -m eeray.raytune.localcluster kill w1       # SIGKILL a worker node (its raylet, workers, agents)
    python -m eeray.raytune.localcluster down          # stop exactly what `up` started; remove its namespaces

Every node is started with Ray's own ``ray start`` (its own GCS client, raylet, object store, agents) inside its
own Linux network namespace, with its own address (``10.213.0.1`` head, ``.2``, ``.3`` workers). The namespaces
are joined by veth pairs to a bridge that lives in a further namespace of ours (the "hub"), so nothing is added
to the machine's own network: no traffic leaves these namespaces and no other Ray on the machine can be reached
from them or reach them. Why namespaces rather than distinct ports on 127.0.0.1: each node then has a distinct
address as on a real cluster (the node an attempt ran on is visible in the results), there are no port clashes
with any other Ray on the machine, and "this node's processes" is exactly ``ip netns pids <namespace>`` — a
node is lost, and the cluster is stopped, by PID, never with ``ray stop`` (which ends every Ray of the user).
Needs root (namespaces), ``ip`` (iproute2) and ``unshare`` (util-linux).

Token authentication is on as Ray 2.60 sets it for ``ray start``: ``RAY_AUTH_MODE=token`` and a token file
(``RAY_AUTH_TOKEN_PATH``) that every node and the driver read. The token is generated per cluster into the state
directory, so the user's ``~/.ray/auth_token`` is neither read nor written.

Workers get a private "local disk" (a tmpfs mounted at ``<root>/node-local`` in their own mount namespace) while
``<root>/shared`` is the same directory on every node, as NFS would be: a checkpoint ``--storage`` under
``node-local`` is one that not every node can see, which a study must refuse.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path("/tmp/eeray-localcluster")
STATE_FILE = "cluster.json"
GCS_PORT = 6379


@dataclass
class Node:
    name: str  # "head", "w1", "w2", ...
    namespace: str
    ip: str
    cpus: int
    resources: dict = field(default_factory=dict)


@dataclass
class LocalCluster:
    """``up()`` starts it; ``down()`` stops exactly the processes it started and removes its namespaces."""

    root: Path = DEFAULT_ROOT
    prefix: str = "eerayc"  # namespace names: <prefix>-hub, <prefix>-head, <prefix>-w1, ...
    subnet: str = "10.213.0"
    workers: int = 2
    worker_cpus: int = 1
    head_cpus: int = 0  # trials never run on the head, as in cluster.yaml
    object_store_mb: int = 100
    nodes: list = field(default_factory=list)

    # ------------------------------------------------------------------ paths and environment
    @property
    def token_path(self) -> Path:
        return Path(self.root) / "auth_token"

    @property
    def shared(self) -> Path:
        """The directory every node sees (results, checkpoints): NFS on a real cluster."""
        return Path(self.root) / "shared"

    @property
    def node_local(self) -> Path:
        """A path that is each worker's own tmpfs: storage here is not shared."""
        return Path(self.root) / "node-local"

    @property
    def address(self) -> str:
        return f"{self.subnet}.1:{GCS_PORT}"

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r}; nodes: {[n.name for n in self.nodes]}")

    def env(self) -> dict[str, str]:
        """What a driver (and every node) needs to be admitted: token mode and the token file."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0")
        return env

    def exec_prefix(self, node: str = "head") -> list[str]:
        """Run a command on a node: ``[*cluster.exec_prefix(), "python", ...]``."""
        return ["ip", "netns", "exec", self.node(node).namespace]

    # ------------------------------------------------------------------ up / down
    def up(self, timeout: float = 180) -> "LocalCluster":
        if shutil.which("ip") is None or shutil.which("unshare") is None:
            raise RuntimeError("the local cluster needs iproute2 (`ip`) and util-linux (`unshare`)")
        if os.geteuid() != 0:
            raise RuntimeError("the local cluster creates network namespaces: run it as root (or with sudo)")
        root = Path(self.root)
        if (root / STATE_FILE).exists():
            raise RuntimeError(f"a local cluster is already up under {root} (`python -m "
                               f"eeray.raytune.localcluster down --root {root}` first)")
        root.mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(exist_ok=True)
        self.node_local.mkdir(exist_ok=True)
        self.token_path.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
        self.token_path.chmod(0o600)
        self.nodes = [Node("head", f"{self.prefix}-head", f"{self.subnet}.1", self.head_cpus, {"head": 1})]
        self.nodes += [Node(f"w{i}", f"{self.prefix}-w{i}", f"{self.subnet}.{i + 1}", self.worker_cpus,
                            {f"node_w{i}": 1, "worker": 1}) for i in range(1, self.workers + 1)]
        self._save()  # from here on, `down` can undo whatever was made
        try:
            self._network()
            for node in self.nodes:
                self._start(node)
            self.wait_nodes(len(self.nodes), timeout)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """SIGTERM then SIGKILL every process in our namespaces, then delete them. Idempotent."""
        for node in self.nodes:
            self.kill(node.name, signal.SIGTERM)
        deadline = time.time() + 10
        while time.time() < deadline and any(self.pids(n.name) for n in self.nodes):
            time.sleep(0.2)
        for node in self.nodes:
            self.kill(node.name, signal.SIGKILL)
        for ns in [n.namespace for n in self.nodes] + [f"{self.prefix}-hub"]:
            if ns in _namespaces():
                subprocess.run(["ip", "netns", "del", ns], check=False)
        try:
            (Path(self.root) / STATE_FILE).unlink()
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ processes
    def pids(self, node: str) -> list[int]:
        ns = self.node(node).namespace
        if ns not in _namespaces():
            return []
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self, node: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process of one node (raylet, its workers and agents; on the head also GCS and any
        driver started there). Returns the PIDs signalled."""
        pids = self.pids(node)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def run(self, argv: list[str], node: str = "head", **kwargs) -> subprocess.Popen:
        """Start ``argv`` on ``node`` with the cluster's token environment (e.g. a study's driver on the head)."""
        return subprocess.Popen(self.exec_prefix(node) + list(argv), env={**self.env(), **kwargs.pop("env", {})},
                                **kwargs)

    def alive_nodes(self) -> list[dict]:
        """``ray.nodes()`` as the head sees it (a short driver in the head's namespace)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(json.dumps([{'ip': n['NodeManagerAddress'], 'id': n['NodeID']} for n in ray.nodes() "
                "if n['Alive']]))" % self.address)
        out = subprocess.run(self.exec_prefix() + [sys.executable, "-c", code], env=self.env(),
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"could not list the cluster's nodes:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_nodes(self, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.time() + timeout
        while True:
            alive = self.alive_nodes()
            if len(alive) == count:
                return alive
            if time.time() > deadline:
                raise RuntimeError(f"{len(alive)} of {count} nodes alive after {timeout:.0f} s: {alive}")
            time.sleep(1)

    def restart(self, node: str, timeout: float = 180) -> None:
        """Start a lost (or live) worker node again, as a replacement instance would join a real cluster."""
        self.kill(node, signal.SIGKILL)
        deadline = time.time() + 30
        while self.pids(node) and time.time() < deadline:
            time.sleep(0.2)
        self._start(self.node(node))
        self.wait_nodes(len(self.nodes), timeout)

    # ------------------------------------------------------------------ internals
    def _network(self) -> None:
        hub = f"{self.prefix}-hub"
        _sh("ip", "netns", "add", hub)
        _sh("ip", "netns", "exec", hub, "ip", "link", "add", "br0", "type", "bridge")
        _sh("ip", "netns", "exec", hub, "ip", "link", "set", "br0", "up")
        for i, node in enumerate(self.nodes):
            veth = f"{self.prefix[:8]}v{i}"
            _sh("ip", "netns", "add", node.namespace)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node.namespace)
            _sh("ip", "link", "set", veth, "netns", hub)  # the machine's own namespace keeps nothing of ours
            _sh("ip", "netns", "exec", hub, "ip", "link", "set", veth, "master", "br0", "up")
            _sh("ip", "netns", "exec", node.namespace, "ip", "addr", "add", f"{node.ip}/24", "dev", "eth0")
            _sh("ip", "netns", "exec", node.namespace, "ip", "link", "set", "eth0", "up")
            _sh("ip", "netns", "exec", node.namespace, "ip", "link", "set", "lo", "up")

    def _start(self, node: Node) -> None:
        ray_exe = str(Path(sys.executable).with_name("ray"))
        if not os.path.exists(ray_exe):
            ray_exe = shutil.which("ray") or "ray"
        args = [ray_exe, "start", f"--node-ip-address={node.ip}", f"--num-cpus={node.cpus}", "--num-gpus=0",
                f"--resources={json.dumps(node.resources)}", f"--object-store-memory={self.object_store_mb << 20}",
                "--disable-usage-stats", f"--temp-dir={Path(self.root) / 'ray'}"]
        if node.name == "head":
            # a lost node is declared dead after 1 s x 5 missed health checks (Ray's default: 3 s x 5)
            args += ["--head", f"--port={GCS_PORT}", "--include-dashboard=false",
                     '--system-config={"health_check_period_ms": 1000, "health_check_failure_threshold": 5}']
        else:
            args += [f"--address={self.address}"]
        if node.name == "head":
            cmd = ["ip", "netns", "exec", node.namespace] + args
        else:  # a worker's own mount namespace: a private tmpfs "local disk" at node-local
            script = f"mount -t tmpfs -o size=64m tmpfs {self.node_local} && exec \"$@\""
            cmd = ["ip", "netns", "exec", node.namespace, "unshare", "--mount", "--propagation", "private",
                   "sh", "-c", script, "sh"] + args
        log = open(Path(self.root) / f"{node.name}.log", "ab")
        out = subprocess.run(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"`ray start` for {node.name} exited {out.returncode}; see "
                               f"{Path(self.root) / (node.name + '.log')}")

    def _save(self) -> None:
        state = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        (Path(self.root) / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path = DEFAULT_ROOT) -> "LocalCluster":
        path = Path(root) / STATE_FILE
        if not path.exists():
            raise RuntimeError(f"no local cluster is up under {root}")
        state = json.loads(path.read_text())
        nodes = [Node(**n) for n in state.pop("nodes")]
        return cls(**{**state, "root": Path(state["root"])}, nodes=nodes)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _sh(*cmd: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eeray.raytune.localcluster", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("command", choices=["up", "down", "status", "kill", "run"])
    p.add_argument("rest", nargs="*", help="kill: a node name; run: the command (after --)")
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"state, token, logs (default {DEFAULT_ROOT})")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-cpus", type=int, default=1)
    argv = list(sys.argv[1:] if argv is None else argv)
    tail = argv[argv.index("--") + 1:] if "--" in argv else []  # run's command: not parsed as our options
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.rest += tail
    if args.command == "up":
        c = LocalCluster(root=args.root, workers=args.workers, worker_cpus=args.worker_cpus).up()
        print(f"local cluster up: head {c.address}, workers {', '.join(n.ip for n in c.nodes[1:])}\n"
              f"  shared directory (as NFS): {c.shared}\n  token: {c.token_path} (RAY_AUTH_MODE=token)\n"
              f"  run a study on it:\n    python -m eeray.raytune.localcluster run -- python studies/width_sweep.py "
              f"--smoke --address {c.address} --results-dir {c.shared}/results --storage {c.shared}/checkpoints")
        return 0
    c = LocalCluster.load(args.root)
    if args.command == "down":
        c.down()
        print("local cluster down")
    elif args.command == "status":
        for n in c.nodes:
            print(f"{n.name:5s} {n.ip:12s} {n.namespace:14s} {len(c.pids(n.name))} processes")
    elif args.command == "kill":
        if len(args.rest) != 1:
            p.error("kill takes one node name, e.g. w1")
        print(f"SIGKILL {args.rest[0]}: {c.kill(args.rest[0])}")
    elif args.command == "run":
        return c.run(args.rest).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
