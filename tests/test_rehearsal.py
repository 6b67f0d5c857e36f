"""The documented cluster path, rehearsed with Ray's own autoscaler (eeray.raytune.rehearsal): ``ray start --head
--autoscaling-config`` with a twin of cluster.yaml whose worker types start at zero, jobs submitted with the
README's ``ray job submit --address http://127.0.0.1:<dashboard> --working-dir . -- python studies/...``, token
authentication on. Workers are launched for the study's demand and removed when idle; a worker reclaimed
mid-trial is replaced and the trial retried from its checkpoint; ``ray job stop`` ends a study as Ctrl-C does and a
second submission with --resume completes it. Each is compared with an undisturbed run of the same study.

One rehearsal serves the module; the fixture stops exactly the processes it started (never ``ray stop``)."""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, check_mlflow, comparable, has_rows, run_study, wait_for

from eeray.raytune.rehearsal import HEAD_TYPE, TWIN, Rehearsal, twin
from eeray.results import load

pytestmark = [pytest.mark.ray, pytest.mark.slow]
STUDY = "tests/studies/cluster_study.py"
HEAD_NODE_ID = "f" * 51 + "00000"  # the fake provider's head; workers are f…f00001, f…f00002, ...


def test_the_twin_is_cluster_yaml_with_workers_launched_on_demand(tmp_path):
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    committed = yaml.safe_load(TWIN.read_text())
    assert twin(cluster) == committed, "eeray/raytune/rehearsal.yaml drifted from cluster.yaml: regenerate it " \
                                       "with `python -m eeray.raytune.rehearsal twin > eeray/raytune/rehearsal.yaml`"
    types = dict(committed["available_node_types"])
    assert types.pop(HEAD_TYPE)["resources"] == cluster["available_node_types"][cluster["head_node_type"]]["resources"]
    for name, spec in types.items():  # every worker type of cluster.yaml, launched only for demand
        ours = cluster["available_node_types"][name]
        assert spec["resources"] == ours["resources"] and spec["max_workers"] == ours["max_workers"]
        assert spec["min_workers"] == 0
    drifted = {**cluster, "available_node_types": {**cluster["available_node_types"],
                                                   "gpu_worker": {**cluster["available_node_types"]["gpu_worker"],
                                                                  "resources": {"CPU": 8, "GPU": 2}}}}
    assert twin(drifted) != committed  # the control: a changed node type is caught
    # Ray's own validation of a cluster config (what `ray up` and the autoscaler run) accepts the twin
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(committed))


@pytest.fixture(scope="module")
def rehearsal():
    root = Path(tempfile.mkdtemp(prefix="eers-", dir="/tmp"))  # short: Ray's socket paths live under it
    r = Rehearsal(root).up()
    try:
        yield r
    finally:
        r.down()
        left = r.processes()
        subprocess.run(["rm", "-rf", str(root)], check=False)
        assert not left, f"processes left behind: {[p.pid for p in left]}"


def ray_cli(r: Rehearsal, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([str(Path(sys.executable).parent / "ray"), *args], env=r.env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    if check:
        assert out.returncode == 0, (args, out.stdout[-4000:], out.stderr[-4000:])
    return out


def submit(r: Rehearsal, study: str, *args: str, wait: bool = True, job: str | None = None):
    """The README's command: ``ray job submit --address http://127.0.0.1:<dashboard> --working-dir . -- python
    <study> ...``, from the repository."""
    ids = ["--submission-id", job] if job else []
    return ray_cli(r, "job", "submit", "--address", r.dashboard, "--working-dir", ".", *ids,
                   *([] if wait else ["--no-wait"]), "--", "python", study, *args, check=False)


def jobs(r: Rehearsal):
    """The jobs API that `ray job status|logs|stop` call, in-process (the CLI takes seconds to start)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(r.dashboard, headers={"authorization": f"Bearer {r.token_path.read_text()}"})


def wait_job(r: Rehearsal, job: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while (status := str(jobs(r).get_job_status(job).value)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline, f"job {job} still {status} after {timeout:.0f} s\n{job_logs(r, job)[-6000:]}"
        time.sleep(1)
    return status


def mid_trial(results: Path) -> bool:
    """A trial has rows in Parquet but no ``trials`` row yet: it is running."""
    steps, trials = results / "cluster" / "steps", results / "cluster" / "trials"
    started = {p.name.split("-")[0] for p in steps.rglob("*.parquet")} if steps.exists() else set()
    ended = {p.name.split("-")[0] for p in trials.rglob("*.parquet")} if trials.exists() else set()
    return bool(started - ended)


def job_logs(r: Rehearsal, job: str) -> str:
    return jobs(r).get_job_logs(job)


def wait_mid_job(r: Rehearsal, job: str, predicate, what: str, timeout: float = 300) -> None:
    """Wait for ``predicate`` while the job runs; a job that ends first, or the timeout, fails with its logs."""
    deadline = time.time() + timeout
    while not predicate():
        status = str(jobs(r).get_job_status(job).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED") or time.time() > deadline:
            pytest.fail(f"job {job} is {status} and still no {what}\n{job_logs(r, job)[-6000:]}")
        time.sleep(0.05)


def worker_ids(r: Rehearsal) -> set[str]:
    return {w["node_id"] for w in r.workers()}


def attempt_ids(trials) -> list[list[str]]:
    return [json.loads(v) for v in trials.attempt_node_ids]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The cluster study, undisturbed, on the test session's Ray head: what every disturbed run must equal."""
    results = tmp_path_factory.mktemp("rehearsal-reference")
    run_study(STUDY, results, "--smoke")
    return comparable(load(results, "cluster"))


# --------------------------------------------------------------------------- the README's path
def test_the_readme_commands_run_the_study_on_autoscaled_workers_that_leave_when_idle(rehearsal, width_smoke,
                                                                                       tmp_path):
    r = rehearsal
    out = submit(r, "studies/width_sweep.py", "--smoke", "--results-dir", str(tmp_path / "results"),
                 "--storage", str(tmp_path / "checkpoints"), "--max-concurrent", "2")
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in log, log[-6000:]
    assert "(chosen by RAY_ADDRESS=" in log, log[-6000:]  # the job's driver joined the cluster ray job submit named
    assert "waiting for the autoscaler: {'CPU': 1} fits no node yet" in log, log[-6000:]
    res = load(tmp_path / "results", "width_sweep")
    workers = worker_ids(r)
    ran_on = {i for ids in attempt_ids(res.trials) for i in ids}
    assert len(res.trials) == 12 and set(res.trials.status) == {"completed"}
    assert ran_on and ran_on <= workers and HEAD_NODE_ID not in ran_on, (ran_on, workers)
    assert comparable(res)[0].equals(comparable(load(width_smoke[0], "width_sweep"))[0])  # the study, as on a laptop
    steps = res.steps
    assert not steps.duplicated(["trial_id", "step", "phase"]).any()
    launched = {w["node_type"] for w in r.workers()}
    assert launched <= {"gpu_worker", "gpu_worker_spot"}
    wait_for(lambda: not any(w["alive"] for w in r.workers()), 120, "idle workers to be removed by the autoscaler")
    print(f"\n[readme path] node types launched={sorted(launched)}, workers={len(workers)}, trials per node="
          f"{ {i[-5:]: sum(i in ids for ids in attempt_ids(res.trials)) for i in sorted(ran_on)} }, "
          f"trials={len(res.trials)}, steps rows={len(steps)}", flush=True)


def test_a_worker_reclaimed_mid_trial_is_replaced_and_the_trial_retried_from_its_checkpoint(rehearsal, reference,
                                                                                          tmp_path):
    r = rehearsal
    results = tmp_path / "results"
    before = worker_ids(r)
    out = submit(r, STUDY, "--smoke", "--results-dir", str(results), "--storage", str(tmp_path / "ckpt"),
                 "--max-concurrent", "1", wait=False, job="reclaim")
    assert out.returncode == 0, out.stderr[-3000:]
    wait_mid_job(r, "reclaim", lambda: mid_trial(results), "trial with rows that has not ended")
    victim = r.reclaim()
    assert wait_job(r, "reclaim") == "SUCCEEDED", job_logs(r, "reclaim")[-6000:]
    res = load(results, "cluster")
    retried = res.trials[res.trials.attempts == 2]
    assert len(retried) == 1, res.trials[["trial_name", "attempts", "attempt_node_ids"]]
    first, second = attempt_ids(retried)[0]
    assert first == victim["node_id"] and second != first and second in worker_ids(r) - before - {first}
    assert json.loads(retried.attempt_errors.iloc[0])[0]  # why the first attempt ended
    finals, steps = comparable(res)
    assert finals.equals(reference[0]) and steps.equals(reference[1])  # every row once, as undisturbed
    check_mlflow(results, "cluster", ["ee seed=0", "ee seed=1"])
    print(f"\n[reclaim] reclaimed {victim['node_id'][-5:]} ({victim['node_type']}); trial "
          f"{retried.trial_name.iloc[0]} retried on {second[-5:]}; steps rows={len(res.steps)}", flush=True)


def test_ray_job_stop_interrupts_the_study_and_a_resubmission_with_resume_completes_it(rehearsal, reference,
                                                                                      tmp_path):
    from mlflow.tracking import MlflowClient

    r = rehearsal
    results = tmp_path / "results"
    args = ("--smoke", "--results-dir", str(results), "--storage", str(tmp_path / "ckpt"), "--max-concurrent", "1")
    assert submit(r, STUDY, *args, wait=False, job="stopped").returncode == 0
    wait_mid_job(r, "stopped", lambda: has_rows(results, "cluster"), "rows of the first trial")
    # what `ray job stop` sends (the jobs API's stop), in-process: the CLI takes seconds to start, and the study
    # (two trials, one at a time, a few seconds each) must still be running when the stop arrives
    jobs(r).stop_job("stopped")
    assert wait_job(r, "stopped") == "STOPPED"
    log = job_logs(r, "stopped")
    assert "Interrupted:" in log and "--resume" in log and "Traceback" not in log, log[-6000:]
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    assert "RUNNING" not in {x.info.status for x in runs}
    assert [x.info.status for x in runs if not x.data.tags.get("mlflow.parentRunId")] == ["KILLED"]
    out = submit(r, STUDY, *args, "--resume")
    assert out.returncode == 0 and "succeeded" in out.stdout + out.stderr, (out.stdout + out.stderr)[-6000:]
    finals, steps = comparable(load(results, "cluster"))
    assert finals.equals(reference[0]) and steps.equals(reference[1])
    check_mlflow(results, "cluster", ["ee seed=0", "ee seed=1"])


# --------------------------------------------------------------------------- which Ray runs a study
@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS", "none", "--address local"])
def test_each_address_source_decides_which_ray_runs_the_study(rehearsal, tmp_path, how):
    r = rehearsal
    env = {k: v for k, v in r.env().items() if k != "RAY_ADDRESS"}
    argv = [sys.executable, str(ROOT / STUDY), "--profile", "one", "--results-dir", str(tmp_path)]
    if how == "--address":
        argv += ["--address", r.gcs_address]
    elif how == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = r.gcs_address
    elif how == "--address local":
        env["RAY_ADDRESS"] = r.gcs_address
        argv += ["--address", "local"]
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    ray_line = next(line for line in out.stdout.splitlines() if line.startswith("Ray: "))
    node = attempt_ids(load(tmp_path, "cluster").trials)[0][0]
    if how in ("--address", "RAY_ADDRESS"):
        assert ray_line.startswith("Ray: the Ray cluster at ") and node in worker_ids(r), (ray_line, node)
        assert f"(chosen by {how} {r.gcs_address}" in ray_line or f"(chosen by {how}={r.gcs_address}" in ray_line
    else:
        assert ray_line.startswith("Ray: a local Ray started for this study"), ray_line
        assert node not in worker_ids(r) | {HEAD_NODE_ID}
        why = "--address local" if how == "--address local" else "no --address and no RAY_ADDRESS"
        assert f"(chosen by {why})" in ray_line, ray_line


def test_a_trial_no_node_type_can_hold_is_refused_before_any_trial_and_one_that_waits_is_said(rehearsal, tmp_path):
    """Checked against the running autoscaler's node types (the head has no CPU and no worker is up): two GPUs
    per trial fit no node type, so the study is refused with them listed, before anything is written."""
    r = rehearsal
    out = subprocess.run([sys.executable, str(ROOT / STUDY), "--profile", "gpus2", "--address", r.gcs_address,
                          "--results-dir", str(tmp_path)], env=r.env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1, (out.stdout[-3000:], out.stderr[-3000:])
    print(f"\n[refused] {errors[0]}", flush=True)
    assert "no node of this cluster can ever hold the bundle {'CPU': 1, 'GPU': 2}" in errors[0]
    assert "gpu_worker {CPU 8, GPU 1} ×2; gpu_worker_spot {CPU 8, GPU 1} ×6" in errors[0]
    assert str(r.root / "autoscaler.yaml") in errors[0]
    assert not (tmp_path / "cluster" / "execution.json").exists() and not (tmp_path / "mlflow.db").exists()
