"""Studies on a real multi-node Ray cluster on this machine (eeray.raytune.localcluster: a head and two workers,
each ``ray start`` in its own network namespace with its own address, token authentication on), under the loss
of a worker node, of a diagnostics actor and of the driver, each against an undisturbed run of the same study.

One cluster serves the whole module; the fixture stops exactly the processes it started and removes its
namespaces. Needs root (network namespaces), as CI has; without it the tests fail, they never skip."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, check_mlflow, comparable, has_rows, wait_for

from eeray.raytune.localcluster import LocalCluster, _namespaces
from eeray.results import load

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STUDY = "tests/studies/cluster_study.py"


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the cluster tests create network namespaces and need root (CI runs as root)")
    root = Path(tempfile.mkdtemp(prefix="eelc-", dir="/tmp"))  # short: Ray's socket paths live under it
    c = LocalCluster(root=root, prefix=f"eet{os.getpid() % 100000}").up()
    try:
        yield c
    finally:
        c.down()
        left = {ns for ns in _namespaces() if ns.startswith(c.prefix + "-")}
        subprocess.run(["rm", "-rf", str(root)], check=False)
        assert not left, f"namespaces left behind: {left}"


def study_cmd(cluster, results: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / STUDY), "--address", cluster.address, "--results-dir", str(results),
            "--storage", str(results / "checkpoints"), *args]


def run_on(cluster, results: Path, *args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    """A study's driver on the head node, as `localcluster run` starts it."""
    proc = cluster.run(study_cmd(cluster, results, *args), env=env or {}, cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out


def report(label: str, **numbers) -> None:
    print(f"\n[{label}] " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)


@pytest.fixture(scope="module")
def reference(cluster):
    """The undisturbed runs every fault is compared with (same cluster, same study)."""
    results = Path(tempfile.mkdtemp(prefix="ref-", dir=cluster.shared))
    ok(run_on(cluster, results, "--smoke"))
    ok(run_on(cluster, results, "--profile", "actors"))
    return results


# --------------------------------------------------------------------------- the cluster itself
def test_nodes_have_their_own_addresses_and_every_trial_records_its_node(cluster, reference):
    alive = cluster.alive_nodes()
    assert sorted(n["ip"] for n in alive) == ["10.213.0.1", "10.213.0.2", "10.213.0.3"]
    assert (cluster.token_path.stat().st_mode & 0o777) == 0o600
    res = load(reference, "cluster")
    nodes = [json.loads(n) for n in res.trials.attempt_nodes]
    assert all(len(n) == 1 and n[0] in ("10.213.0.2", "10.213.0.3") for n in nodes), nodes  # never the head
    actors = load(reference, "cluster_actors").trials.iloc[0]
    trial_node, actor_nodes = json.loads(actors.attempt_nodes)[0], json.loads(actors.diag_actor_nodes)[0]
    assert actor_nodes and trial_node not in actor_nodes  # one CPU per worker: the actor is on the other node
    assert actors.diag_failed_evaluations == 0


def test_a_driver_the_cluster_refuses_fails_before_any_work_saying_what_to_set(cluster, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text("0" * 64)
    results = Path(tempfile.mkdtemp(prefix="refused-", dir=cluster.shared))
    cases = {"no token": ({"RAY_AUTH_MODE": "disabled"}, cluster.address,
                          "requires token authentication and this driver sent no token"),
             "wrong token": ({"RAY_AUTH_TOKEN_PATH": str(wrong)}, cluster.address, "rejected this driver's token"),
             "nothing listening": ({}, "10.213.0.2:6390", "nothing is listening there")}
    procs, errs = {}, {}
    for name, (env, address, _) in cases.items():  # concurrently: a refused ray.init takes ~20 s
        cmd = study_cmd(cluster, results / name.replace(" ", "_"), "--smoke")
        cmd[cmd.index("--address") + 1] = address
        procs[name] = cluster.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        errs[name] = err
        assert proc.returncode == 2, (name, out[-2000:], err[-3000:])
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and cases[name][2] in lines[0], (name, err[-3000:])
        assert "Traceback" not in err, (name, err[-3000:])
        assert not (results / name.replace(" ", "_") / "cluster" / "execution.json").exists()  # nothing started
    assert "Export RAY_AUTH_MODE=token" in errs["no token"] and "RAY_AUTH_TOKEN_PATH" in errs["no token"]
    report("refused", **{name: err.strip().splitlines()[-1][:160] for name, err in errs.items()})


def test_storage_that_not_every_node_sees_is_refused_before_any_trial(cluster):
    results = Path(tempfile.mkdtemp(prefix="storage-", dir=cluster.shared))
    cmd = study_cmd(cluster, results, "--smoke")
    cmd[cmd.index("--storage") + 1] = str(cluster.node_local / "checkpoints")  # each worker's own disk
    proc = cluster.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out[-2000:], err[-3000:])
    assert "is not shared by every node of the cluster" in err and "NFS" in err and "s3://" in err, err[-3000:]
    assert "node 10.213.0.2" in err and "node 10.213.0.3" in err and "node 10.213.0.1" not in err
    assert not (results / "cluster" / "execution.json").exists() and not (results / "cluster" / "trials").exists()


LOCAL_PROBE = """
import json, sys, ray
from eeray.raytune.connect import connect
mode = sys.argv[1]
if mode == "bare":
    ray.init(logging_level="ERROR")  # what a study did before connect(): join whatever it finds
    print(json.dumps(sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])))
else:
    c = connect(None if mode == "local" else mode)
    print(json.dumps(list(c.nodes)))
    print(c.description)
"""


def test_without_address_a_study_starts_its_own_ray_beside_a_running_cluster(cluster):
    """A `ray start` cluster is findable (Ray's temp directory, RAY_ADDRESS): a bare ray.init() joins it;
    connect() without an address does not, and --address auto joins it only when asked."""
    env = {"RAY_TMPDIR": str(cluster.root), "RAY_ADDRESS": ""}  # <root>/ray/ray_current_cluster names our head

    def probe(mode, **extra):
        out = cluster.run([sys.executable, "-c", LOCAL_PROBE, mode], env={**env, **extra}, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = out.communicate(timeout=300)
        assert out.returncode == 0, (mode, stdout[-2000:], stderr[-3000:])
        return stdout.strip().splitlines()

    cluster_ips = ["10.213.0.1", "10.213.0.2", "10.213.0.3"]
    assert json.loads(probe("bare")[-1]) == cluster_ips  # the hazard is real
    local = probe("local", RAY_ADDRESS=cluster.address)
    assert json.loads(local[-2]) == ["127.0.0.1"] and local[-1].startswith("a local Ray started for this study")
    auto = probe("auto")
    assert sorted(json.loads(auto[-2])) == cluster_ips and auto[-1].startswith("the Ray cluster at 10.213.0.1:6379")
    report("local default", bare_init_joined=cluster_ips, connect_without_address=local[-1], auto=auto[-1])


# --------------------------------------------------------------------------- faults
def early_running_trial(results: Path, study: str):
    """(trial_id, node IP) of a trial that has reported at most 10 of its 31 results and not finished, from
    Tune's experiment state on storage (each trial's last result carries Tune's node_ip); None while there is
    none."""
    # a --storage the user names holds <storage>/<study>/<execution>/<segment>/experiment_state-*.json
    for path in sorted((results / "checkpoints" / study).glob("*/tune/experiment_state-*.json")):
        try:
            state = json.loads(path.read_text())
        except (ValueError, OSError):
            continue  # not written yet (the storage replaces it whole, but it may not exist)
        for _, runtime in state["trial_data"]:
            last = json.loads(runtime).get("last_result") or {}
            trial_id = last.get("trial_id")
            done = trial_id and any((results / study / "trials").rglob(f"{trial_id}.parquet"))
            if trial_id and not done and 1 <= last.get("training_iteration", 0) <= 10 and last.get("node_ip"):
                return trial_id, last["node_ip"]
    return None


def test_a_lost_worker_node_is_retried_on_a_surviving_node_from_its_checkpoint(cluster, reference):
    results = Path(tempfile.mkdtemp(prefix="nodeloss-", dir=cluster.shared))
    # Tune's state saved at every step of its loop (eeray's default is every >= 10 s): the test finds a running
    # trial's node in it
    driver = cluster.run(study_cmd(cluster, results, "--smoke"), env={"TUNE_GLOBAL_CHECKPOINT_S": "0"}, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lost = None
    try:
        wait_for(lambda: early_running_trial(results, "cluster"), 300, "a trial early in its run")
        trial_id, ip = early_running_trial(results, "cluster")
        lost = next(n for n in cluster.nodes if n.ip == ip)
        before = load(results, "cluster")
        killed = cluster.kill(lost.name)  # its raylet, workers and agents: SIGKILL, no cleanup
        out, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
        if lost is not None:
            cluster.restart(lost.name)  # a replacement node, for the tests after this one
    assert driver.returncode == 0, out[-5000:]
    res = load(results, "cluster")
    assert lost.name != "head" and trial_id not in set(before.trials.trial_id) and killed
    assert set(res.trials.status) == {"completed"} and len(res.trials) == 2
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()  # every row exactly once
    retried = res.trials[res.trials.attempts > 1]
    assert list(retried.trial_id) == [trial_id], res.trials[["trial_name", "attempts", "attempt_nodes"]]
    nodes = json.loads(retried.attempt_nodes.iloc[0])
    assert nodes[0] == lost.ip and nodes[-1] != lost.ip, nodes  # lost with its node, finished on the other
    assert json.loads(retried.attempt_errors.iloc[0])[0], retried.attempt_errors.iloc[0]  # why attempt 1 ended
    finals, steps = comparable(res)
    ref_finals, ref_steps = comparable(load(reference, "cluster"))
    assert finals.equals(ref_finals), (finals, ref_finals)  # bitwise: DataFrame.equals compares exact values
    assert steps.equals(ref_steps)
    check_mlflow(results, "cluster", ref_finals.index)
    report("node loss", node_lost=f"{lost.name} {lost.ip} ({len(killed)} processes)",
           retried=retried.trial_name.iloc[0],
           attempts=int(retried.attempts.iloc[0]), attempt_nodes=nodes,
           attempt_error=json.loads(retried.attempt_errors.iloc[0])[0][:120],
           steps_rows_at_kill=len(before.steps), steps_rows_after=len(res.steps),
           reference_rows=len(ref_steps), equal_to_reference=True)


def _shard_workers(cluster) -> list[int]:
    """PIDs of diagnostics actors (their process title is ray::ShardWorker[.method]) on the worker nodes."""
    pids = []
    for node in cluster.nodes[1:]:
        for pid in cluster.pids(node.name):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::ShardWorker"):
                pids.append((pid, title.strip("\0 ")))
    return pids


def test_a_lost_diagnostics_actor_is_replaced_and_its_evaluation_retried(cluster, reference):
    results = Path(tempfile.mkdtemp(prefix="actorloss-", dir=cluster.shared))
    driver = cluster.run(study_cmd(cluster, results, "--profile", "actors"), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: has_rows(results, "cluster_actors", "diagnostics"), 300, "the first alignment reports")
        deadline, victim = time.time() + 20, None
        while time.time() < deadline:  # an actor inside a method: mid-evaluation
            busy = [(pid, t) for pid, t in _shard_workers(cluster) if t.startswith("ray::ShardWorker.")
                    and not t.startswith(("ray::ShardWorker.__init__", "ray::ShardWorker.__ray_call__"))]
            if busy:
                victim = busy[0]
                break
            time.sleep(0.01)
        assert victim, f"no diagnostics actor seen inside an evaluation in 20 s: {_shard_workers(cluster)}"
        os.kill(victim[0], signal.SIGKILL)
        out, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out[-5000:]
    res, ref = load(results, "cluster_actors"), load(reference, "cluster_actors")
    trial = res.trials.iloc[0]
    assert trial.status == "completed" and trial.attempts == 1, trial.attempt_errors  # the trial went on
    diag = res.diagnostics
    assert not diag.duplicated(["trial_id", "step"]).any() and list(diag.step) == list(ref.diagnostics.step)
    retried = diag[diag.evaluation_attempts > 1]
    assert len(retried) == 1 and "Actor" in retried.evaluation_error.iloc[0], diag[["step", "evaluation_error"]]
    assert trial.diag_failed_evaluations == 0
    cols = ["step", "q_t", "q_evaluations", "aligned", "rank"]
    assert diag[cols].equals(ref.diagnostics[cols])  # the retried evaluation gives the same answers
    finals, steps = comparable(res)
    ref_finals, ref_steps = comparable(ref)
    assert finals.equals(ref_finals) and steps.equals(ref_steps)
    check_mlflow(results, "cluster_actors", ref_finals.index)
    report("actor loss", killed=victim[1], retried_step=int(retried.step.iloc[0]),
           evaluation_attempts=int(retried.evaluation_attempts.iloc[0]),
           error=retried.evaluation_error.iloc[0][:120], diagnostics_rows=len(diag),
           reference_rows=len(ref.diagnostics), trial_attempts=int(trial.attempts),
           actor_nodes=trial.diag_actor_nodes, equal_to_reference=True)


def test_a_lost_driver_is_continued_by_resume_against_the_same_cluster(cluster, reference):
    results = Path(tempfile.mkdtemp(prefix="driverloss-", dir=cluster.shared))
    # Tune saves its state at every step here (not every >= 10 s), so the kill below lands mid-study on any machine
    driver = cluster.run(study_cmd(cluster, results, "--smoke"), env={"TUNE_GLOBAL_CHECKPOINT_S": "0"}, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: has_rows(results, "cluster"), 300, "the first Parquet chunk")
        first = min(p.stat().st_mtime for p in (results / "cluster" / "steps").rglob("*.parquet"))
        state = results / "checkpoints" / "cluster"
        wait_for(lambda: any(p.stat().st_mtime > first + 1 for p in state.glob("*/tune/experiment_state-*.json")), 120,
                 "Tune's experiment state saved after a trial checkpoint")  # so --resume restores from it
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver (its session), mid-study, without any cleanup
        driver.wait(timeout=30)  # dead: what it wrote is on disk (every file whole or absent), nothing to wait for
    before = load(results, "cluster")
    assert len(before.steps) > 0 and (before.trials.status == "completed").sum() < 2  # really mid-study
    out = ok(run_on(cluster, results, "--smoke", "--resume"))
    res = load(results, "cluster")
    assert not res.steps.duplicated(["trial_id", "step", "phase"]).any()
    finals, steps = comparable(res)
    ref_finals, ref_steps = comparable(load(reference, "cluster"))
    assert finals.equals(ref_finals), (finals, ref_finals)
    assert steps.equals(ref_steps)
    check_mlflow(results, "cluster", ref_finals.index)
    resumed = res.trials[res.trials.attempts == 2]  # continued from a checkpoint the lost driver's attempt left
    assert len(resumed) and (res.trials.attempts <= 2).all(), res.trials[["trial_name", "attempts"]]
    assert all(json.loads(e) == ["the driver was lost; continued with --resume"] for e in resumed.attempt_errors)
    assert "2 trials (2 completed, 0 failed)" in out.stdout and f"the Ray cluster at {cluster.address}" in out.stdout
    report("driver loss", attempts=list(res.trials.attempts), attempt_nodes=list(res.trials.attempt_nodes),
           steps_rows_at_kill=len(before.steps), steps_rows_after=len(res.steps), reference_rows=len(ref_steps),
           equal_to_reference=True)
