"""The MLflow UI as users see it: a real ``mlflow server`` over the width-sweep smoke store, opened in headless
Chromium. MLflow 3.17's React UI shows the study's parent run with its child runs folded under it in the
experiment's runs table (nested rows are only used in the default date order), all runs as flat rows when sorted by
name, the child runs listed on the parent run's page, and the parent linked from every child's page."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import quote

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHILD_RUNS_SHOWN = 10  # the parent run page lists this many child runs, then a "Load more" button


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_links(dom: str, experiment_id: str) -> dict[str, str]:
    """run id -> run name of every link to a run of the experiment on the page (the names users click)."""
    pattern = rf'href="#/experiments/{experiment_id}/runs/([0-9a-f]{{32}})"[^>]*>(?:<span[^>]*>)?([^<]+)<'
    return {run_id: name.strip() for run_id, name in re.findall(pattern, dom)}


@pytest.fixture
def mlflow_ui(width_smoke, tmp_path):
    """(base URL, experiment id, parent run, {child id: name}) with a server running on the smoke store."""
    results_dir, _ = width_smoke
    store = f"sqlite:///{results_dir / 'mlflow.db'}"
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("width_sweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("eeray.study") == "parent"]
    assert len(parents) == 1
    children = {r.info.run_id: r.info.run_name for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(children) == 12
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--default-artifact-root",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own group: we stop it and its workers
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server not healthy (exit {server.poll()}):\n"
                            f"{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, exp.experiment_id, parents[0], children
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def _open(chromium, url: str, ready) -> str:
    """The page's DOM once the React app has rendered what ``ready(dom)`` looks for (longer budgets if needed)."""
    for budget in (5_000, 15_000, 40_000):
        dom = chromium(url, "--dump-dom", f"--virtual-time-budget={budget}", "--window-size=1600,3000")
        if ready(dom):
            return dom
    pytest.fail(f"{url}: the page never showed what the test looks for; last DOM text:\n"
                f"{re.sub(r'<[^>]+>', ' ', dom)[-2000:]}")


def test_mlflow_ui_shows_the_parent_run_and_its_child_runs(mlflow_ui, chromium):
    base, eid, parent, children = mlflow_ui
    pid, parent_name = parent.info.run_id, parent.info.run_name
    experiment = f"{base}/#/experiments/{eid}/runs"

    # the runs table as it opens: one row, the study's parent run, its trials folded under it
    dom = _open(chromium, experiment, lambda d: pid in _run_links(d, eid))
    links = _run_links(dom, eid)
    assert links == {pid: parent_name}
    assert "width_sweep" in dom

    # sorted by run name the table is flat: the parent and every child run, by name
    by_name = f"{experiment}?orderByKey={quote('tags.`mlflow.runName`')}&orderByAsc=true"
    dom = _open(chromium, by_name, lambda d: set(children) <= set(_run_links(d, eid)))
    assert _run_links(dom, eid) == {pid: parent_name, **children}

    # the parent run's page lists its child runs (MLflow shows the first 10, then "Load more")
    dom = _open(chromium, f"{experiment}/{pid}",
                lambda d: "Child runs" in d and bool(set(_run_links(d, eid)) & set(children)))
    listed = {rid: name for rid, name in _run_links(dom, eid).items() if rid != pid}
    assert len(listed) == min(CHILD_RUNS_SHOWN, len(children)) and listed.items() <= children.items()
    assert parent_name in dom and ("Load more" in dom) == (len(children) > CHILD_RUNS_SHOWN)

    # a trial's page names its parent run, linked
    child_id, child_name = sorted(children.items())[0]
    dom = _open(chromium, f"{experiment}/{child_id}", lambda d: "Parent run" in d and pid in _run_links(d, eid))
    assert _run_links(dom, eid)[pid] == parent_name and child_name in dom
