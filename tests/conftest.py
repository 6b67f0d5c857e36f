"""Shared test setup: offline, deterministic, CPU, quiet Ray."""
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test clusters only (docs/architecture.md, Environment notes)
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("PYTHONHASHSEED", "0")

from eeray import cpu_kernels  # noqa: E402

# before this process's first kernel: tests that run a trial here compare it with trials Ray workers ran, which
# inherit this (the session's Ray head starts from it) or set it themselves
cpu_kernels.apply()

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _cuda_for_gpu_tests(request):
    """A test marked gpu fails without CUDA (selected with -m gpu on the wrong machine): never a silent skip."""
    if request.node.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.fail("marked gpu: needs a CUDA device; run on the GPU machine with -m gpu")


# --------------------------------------------------------------------------- studies, run once per session
import contextlib  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import time  # noqa: E402
import sys as _sys  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

ROOT = _Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, url: str, proc: _subprocess.Popen):
        self.url, self.proc = url, proc


@contextlib.contextmanager
def mlflow_server(store: str, workdir: _Path):
    """A real ``mlflow server`` on ``store`` (artifacts and its log under ``workdir``), healthy before it is
    yielded (an :class:`MlflowServer`: ``.url``, ``.proc``), stopped with its workers afterwards."""
    import signal  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    port = free_port()
    log = open(workdir / "mlflow-server.log", "w")
    proc = _subprocess.Popen(
        [_sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--default-artifact-root",
         str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=_subprocess.STDOUT, start_new_session=True)  # its own group: we stop it and its workers
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            assert proc.poll() is None, f"mlflow server exited {proc.poll()}:\n{(workdir / 'mlflow-server.log').read_text()[-3000:]}"
            return False

    try:
        wait_for(healthy, 120, "a healthy mlflow server")
        yield MlflowServer(url, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except _subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


# --------------------------------------------------------------------------- one Ray head for the session's CLI runs
# A study without --address starts and stops a local Ray of its own: ~8-10 s of a CLI run on 2 cores, against
# ~1 s to join a running head. So each test process (each pytest-xdist worker) starts one head (Ray's own `ray start
# --head`, on 127.0.0.1, in a temp dir of its own so that `--address auto` and a bare ray.init() never find it) on
# first use, and the CLI runs join it with --address: the documented cluster path, on one node. Runs that must start
# their own Ray say own_ray=True: the local path itself (a study's first line names which Ray ran it), and runs
# whose trials need the driver's environment (S3 credentials, EERAY_DATA_ROOT), which a head started before them
# cannot see. The head is stopped at the process's end by its process group (never `ray stop`, which ends every Ray
# of the user).
_HEAD: dict = {}


def shared_ray_address() -> str:
    if "address" not in _HEAD:
        import tempfile  # noqa: PLC0415

        port, temp = free_port(), tempfile.mkdtemp(prefix="eeray-test-head-")
        log = open(os.path.join(temp, "ray-start.log"), "w")
        cmd = [os.path.join(os.path.dirname(_sys.executable), "ray"), "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(os.cpu_count()),
               "--include-dashboard=false", "--temp-dir", temp]
        proc = _subprocess.Popen(cmd, stdout=log, stderr=_subprocess.STDOUT, start_new_session=True)
        _HEAD.update(proc=proc, address=f"127.0.0.1:{port}", temp=temp)
        wait_for(lambda: proc.poll() is not None or "Ray runtime started" in open(log.name).read(), 120,
                 "the session's Ray head")
        assert proc.poll() is None, open(log.name).read()[-3000:]
    return _HEAD["address"]


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_ray_head():
    yield
    proc = _HEAD.get("proc")
    if proc is not None and proc.poll() is None:
        import signal  # noqa: PLC0415

        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(timeout=15)
        except _subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # and anything of its group left behind
        except ProcessLookupError:
            pass


def study_argv(script: str, results_dir, *args: str, own_ray: bool = False) -> list[str]:
    """The command line of ``python <script> --results-dir <dir> ...``, joining the session's Ray head unless
    ``own_ray`` (or ``args`` name an address)."""
    address = [] if own_ray or any(a == "--address" or a.startswith("--address=") for a in args) else \
        ["--address", shared_ray_address()]
    return [_sys.executable, str(ROOT / script), *address, "--results-dir", str(results_dir), *args]


def run_study(script: str, results_dir, *args: str, timeout: int = 600, expect: int = 0,
              env: dict | None = None, own_ray: bool = False) -> _subprocess.CompletedProcess:
    """``python <script> --results-dir <dir> ...`` as a user runs it; fails the test with its output unless it
    exits with ``expect`` (0: every trial completed; 3: some failed; 2: refused; 130: interrupted). It joins the
    session's Ray head unless ``own_ray`` (:func:`study_argv`)."""
    cmd = study_argv(script, results_dir, *args, own_ray=own_ray or expect == 2)
    out = _subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=None if env is None else {**os.environ, **env})
    if out.returncode != expect:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def rows_of(results_dir, study: str, trial_id: str) -> dict:
    """Table -> the rows ``trial_id`` itself wrote (no branch prefix), every column, timings included: equal before
    and after a resume only if the trial did not run again, whichever files hold them (the record is compacted)."""
    from eeray.results import load_table  # noqa: PLC0415

    out = {}
    for table in ("trials", "steps", "diagnostics"):
        frame = load_table(results_dir, study, table)
        out[table] = frame[frame.trial_id == trial_id].reset_index(drop=True)
    return out


def same_rows(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[t].equals(b[t]) for t in a)


def reap_killed(proc: _subprocess.Popen, timeout: int = 600) -> None:
    """Wait for a driver that ``EERAY_KILL_AT`` makes SIGKILL itself (started with ``start_new_session``), then
    end what it left behind (its local Ray: the processes this test started) and check that it was the kill."""
    import signal  # noqa: PLC0415

    proc.communicate(timeout=timeout)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode == -signal.SIGKILL, proc.returncode


# --------------------------------------------------------------------------- comparing a disturbed run with a reference
from eeray.row_compare import excluded  # noqa: E402 -- the wall-clock columns, named by the schema's own rule


def comparable(res):
    """Trial name -> final metrics; (trial, step, phase) -> every steps column but timings."""
    names = res.trials.set_index("trial_id").trial_name
    steps = res.steps.drop(columns=excluded("steps", res.steps.columns) + ["study"])  # wall-clock: never equal
    steps = steps.assign(trial_id=steps.trial_id.map(names)).sort_values(["trial_id", "step", "phase"])
    finals = res.trials.set_index("trial_name")[["status", "final_train_loss", "final_train_error",
                                                 "final_test_error"]].sort_index()
    return finals, steps.reset_index(drop=True)


def check_mlflow(results: _Path, study: str, trial_names) -> None:
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 -- only where MLflow is checked

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(c.info.run_name for c in children) == sorted(trial_names)  # no duplicate child runs
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]


def assert_mlflow_mirrors_parquet(results_dir, study: str, uri: str | None = None):
    """Every child run holds exactly the points load()'s rows imply (a branch's prefix included) and its numeric
    final metrics: none missing, none twice, none extra; no run left RUNNING; one parent. Returns (client, runs)."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 -- only where MLflow is checked

    from eeray.mlflow_mirror import _number, metric_points  # noqa: PLC0415 -- the mirror's own conversions
    from eeray.results import load  # noqa: PLC0415

    client = MlflowClient(uri or f"sqlite:///{results_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id], max_results=1000)
    assert "RUNNING" not in {r.info.status for r in runs}, [(r.info.run_name, r.info.status) for r in runs]
    assert len([r for r in runs if r.data.tags.get("eeray.role") == "parent"]) == 1
    children = {r.data.tags["eeray.trial_id"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    res = load(results_dir, study)
    assert sorted(children) == sorted(res.trials.trial_id)
    for trial in res.trials.to_dict("records"):
        tid = trial["trial_id"]
        want = set(metric_points(res.steps[res.steps.trial_id == tid].to_dict("records"),
                                 res.diagnostics[res.diagnostics.trial_id == tid].to_dict("records")))
        want |= {(k, 0, float(_number(v))) for k, v in trial.items() if k.startswith("final_") and
                 _number(v) is not None}
        run = children[tid]
        got = [(m.key, m.step, m.value) for key in run.data.metrics
               for m in client.get_metric_history(run.info.run_id, key)]
        assert len(got) == len({(k, s) for k, s, _ in got}), f"{trial['trial_name']}: a metric point is duplicated"
        assert set(got) == want, (trial["trial_name"], sorted(set(got) ^ want)[:10])
    return client, runs


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def has_rows(results: _Path, study: str, table: str = "steps", trials: int = 1) -> bool:
    """At least one chunk of ``table`` from each of ``trials`` trials is on disk."""
    d = results / study / table
    return d.exists() and len({p.name.split("-")[0] for p in d.rglob("*.parquet")}) >= trials


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """``smoke("sine_wave") -> (results_dir, stdout)``: a study's ``--smoke`` run on a real Ray with the embedded
    MLflow store, run once per test session and shared, read only, by every test that reads it: a study of
    ``studies/`` by its name, a test study by its path (``smoke("tests/studies/integrity_study.py")``); ``expect``
    and ``own_ray`` as :func:`run_study`'s, the exit status checked for every caller; its stderr is in
    :func:`smoke_stderr`. Under pytest-xdist the workers share it too: the first to ask runs it under a file lock
    in the session's common temp directory, the others read its result there."""
    from filelock import FileLock  # noqa: PLC0415 -- Ray's own dependency

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # popen-gwN's parent: the one directory every worker of this session sees
    done: dict[_Path, tuple[int, str]] = {}  # results directory -> (exit status, stdout)

    def get(study: str, expect: int = 0, own_ray: bool = False):
        script = study if study.endswith(".py") else f"studies/{study}.py"
        results = shared / f"{_Path(script).stem}_smoke{'_own_ray' if own_ray else ''}"  # own_ray: another run

        def beside(suffix: str) -> _Path:
            return results.with_name(results.name + suffix)

        if results not in done:
            with FileLock(str(beside(".lock"))):
                if not beside(".stdout").exists():
                    _shutil.rmtree(results, ignore_errors=True)  # a failed attempt's leftovers
                    results.mkdir()
                    out = run_study(script, results, "--smoke", expect=expect, own_ray=own_ray)
                    beside(".stderr").write_text(out.stderr)
                    beside(".rc").write_text(str(out.returncode))
                    beside(".part").write_text(out.stdout)
                    beside(".part").rename(beside(".stdout"))  # complete or absent: a failed run is run again
            done[results] = (int(beside(".rc").read_text()), beside(".stdout").read_text())
        status, stdout = done[results]
        assert status == expect, f"{script} --smoke (run once, shared) exited {status}, not {expect}"
        return results, stdout

    return get


def smoke_stderr(results_dir: _Path) -> str:
    """What the ``smoke`` run that wrote ``results_dir`` printed on stderr."""
    return results_dir.with_name(results_dir.name + ".stderr").read_text()


@pytest.fixture(scope="session")
def width_smoke(smoke):
    return smoke("width_sweep")


# --------------------------------------------------------------------------- headless Chromium (browser tests)
import shutil as _shutil  # noqa: E402
import tempfile as _tempfile  # noqa: E402

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")
def width_mlflow_server(width_smoke, tmp_path_factory):
    """One real ``mlflow server`` on the width-sweep smoke's store for the session: its URL."""
    results_dir, _ = width_smoke
    with mlflow_server(f"sqlite:///{results_dir / 'mlflow.db'}", tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server.url


@pytest.fixture
def chromium(tmp_path):
    """``chromium(url, *flags, timeout=120) -> stdout``: Debian's headless Chromium with a fresh profile, e.g.
    ``chromium(url, "--dump-dom", "--virtual-time-budget=5000")``. Fails (never skips) when it is missing."""
    exe = _shutil.which("chromium") or _shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed for the browser tests: apt-get install chromium (.ci/run does)")

    def run(url: str, *flags: str, timeout: int = 120) -> str:
        profile = _tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url]
        out = _subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stderr[-3000:]}")
        return out.stdout

    return run
