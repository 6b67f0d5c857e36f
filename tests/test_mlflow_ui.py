"""The MLflow UI as users see it: a real ``mlflow server`` over the width-sweep smoke store, opened in headless
Chromium. MLflow 3.17's React UI shows the study's parent run with its child runs folded under it in the
experiment's runs table (nested rows are only used in the default date order), all runs as flat rows when sorted by
name, the child runs listed on the parent run's page, and the parent linked from every child's page; the experiment
in the classic model-training view, and a trial's metric charts drawn (plotted lines, not loading placeholders)."""
import fcntl
import json
import os
import select
import shutil
import re
import subprocess
import time
from urllib.parse import quote

import pytest
from mlflow.tracking import MlflowClient

from conftest import mlflow_server
from eeray.mlflow_mirror import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, VIEW_TAG_PREFIX, MlflowTracker, classic_view_url,
                                 definition_view, metric_points, varied_params, view_key)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHILD_RUNS_SHOWN = 10  # the parent run page lists this many child runs, then a "Load more" button


def _run_links(dom: str, experiment_id: str) -> dict[str, str]:
    """run id -> run name of every link to a run of the experiment on the page (the names users click)."""
    pattern = rf'href="#/experiments/{experiment_id}/runs/([0-9a-f]{{32}})"[^>]*>(?:<span[^>]*>)?([^<]+)<'
    return {run_id: name.strip() for run_id, name in re.findall(pattern, dom)}


@pytest.fixture
def mlflow_ui(width_smoke, width_mlflow_server):
    """(base URL, experiment id, parent run, {child id: name}) with a server running on the smoke store."""
    results_dir, _ = width_smoke
    store = f"sqlite:///{results_dir / 'mlflow.db'}"
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("width_sweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("eeray.role") == "parent"]
    assert len(parents) == 1
    children = {r.info.run_id: r.info.run_name for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(children) == 12
    return width_mlflow_server, exp.experiment_id, parents[0], children


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


# --------------------------------------------------------------------------- the classic view and drawn charts
class _DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
    separated by NUL on fds 3 and 4; standard library only). Unlike ``--dump-dom`` with a virtual-time budget, which
    left the lazily loaded charts as placeholders on a loaded machine, the page is polled in real time until what
    the test waits for has been drawn."""

    def __init__(self, profile: str):
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            pytest.fail("headless Chromium is needed for the browser tests: apt-get install chromium (.ci/run does)")
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()

        def onto_3_and_4():  # in the child: moved above 10 first, so dup2 never meets its own fd (and clears CLOEXEC)
            a, b = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "--window-size=1600,3000", "about:blank"],
            close_fds=False, preexec_fn=onto_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buf, self._id = b"", 0

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise AssertionError(f"DevTools {method}: {reply['error']}")
                    return reply["result"]
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise AssertionError(f"DevTools {method}: no reply in {timeout} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise AssertionError(f"DevTools {method}: Chromium exited ({self.proc.poll()})")
            self._buf += chunk

    def wait_for(self, url: str, ready, timeout: float = 180) -> str:
        """The page's DOM once ``ready(dom)`` holds, polled every second for up to ``timeout`` s of real time."""
        target = self.call("Target.createTarget", url=url)["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        deadline, dom = time.time() + timeout, ""
        while time.time() < deadline:
            dom = self.call("Runtime.evaluate", session, expression="document.documentElement.outerHTML",
                            returnByValue=True)["result"].get("value", "")
            if ready(dom):
                return dom
            time.sleep(1)
        pytest.fail(f"{url}: not drawn within {timeout} s; last DOM text:\n{re.sub(r'<[^>]+>', ' ', dom)[-2000:]}")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except AssertionError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self._w)
        os.close(self._r)


@pytest.fixture
def devtools(tmp_path):
    browser = _DevTools(str(tmp_path / "chromium-profile"))
    try:
        yield browser
    finally:
        browser.close()


CARD = 'data-testid="experiment-view-compare-runs-card"'  # one chart card per metric on a run's metrics tab


@pytest.fixture(scope="module")
def mirror_ui(tmp_path_factory):
    """(base URL, experiment id, parent id, child id, {metric: steps}) for a store eeray's tracker wrote itself
    (no Ray: the tracker's own calls, two trials with per-epoch metric chunks and final metrics)."""
    tmp_path = tmp_path_factory.mktemp("mirror-ui")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(store, "width_sweep", tmp_path / "mlartifacts")
    trials = {"standard data=random16 m_c=1 seed=0": {"ee.enabled": False, "optim.lr": 0.1, "seed": 0},
              "ee c=2 data=random16 m_c=1 seed=0": {"ee.enabled": True, "optim.lr": 0.1, "seed": 1}}
    parent = tracker.start_study("execution-1", "width_sweep 2026-12-01", {"profile": "smoke"}, {},
                                 varied_params(trials))
    children = []
    for i, (name, cfg) in enumerate(trials.items()):
        run = tracker.child(f"t{i}", name, cfg, {})
        for epoch in range(1, 7):  # 5 optimizer steps per epoch, one chunk per epoch
            rows = [{"step": epoch * 5, "epoch": epoch, "train_loss": 2.3 / epoch ** 0.5,  # a trial's column order
                     "train_error": 0.9 / epoch - 0.05 * i}]
            tracker.log_points(run, metric_points(rows, []))
        tracker.finish_trial(run, "FINISHED", {"final_train_error": 0.15 + 0.1 * i})
        children.append(run)
    tracker.finish_study("FINISHED")
    steps = {k: len(tracker.client.get_metric_history(children[0], k))
             for k in tracker.client.get_run(children[0]).data.metrics}
    assert steps == {"train_error": 6, "epoch": 6, "train_loss": 6, "final_train_error": 1}
    with mlflow_server(store, tmp_path) as server:
        yield server.url, tracker.experiment_id, parent, children, steps


def _cards(dom: str) -> dict[str, str]:
    """metric name -> the HTML of its chart card on a run's metrics tab."""
    cards = {}
    for part in dom.split(CARD)[1:]:
        title = re.search(r'<h4[^>]*title="([^"]+)"', part)
        if title:
            cards[title.group(1)] = part
    return cards


def _line_points(card: str) -> list[int]:
    """The number of vertices of every plotted line (plotly's ``js-line`` paths) in a chart card."""
    return [len(re.findall(r"[ML]", d)) for d in re.findall(r'class="js-line"[^>]*\sd="([^"]*)"', card)]


def test_the_experiment_opens_in_the_classic_model_training_view(mirror_ui, devtools):
    base, eid, parent, _, _ = mirror_ui
    url = classic_view_url(base, eid)
    dom = devtools.wait_for(url, lambda d: parent in _run_links(d, eid))
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert "Runs - Experiment" in text  # the page title of the classic runs table
    assert _run_links(dom, eid) == {parent: "width_sweep 2026-12-01"}  # the study's parent run, trials under it
    for genai in ("Token Usage", "Tokens per Trace", "Detect Issues"):  # the GenAI overview's panels
        assert genai not in text


def test_the_experiment_is_tagged_as_model_training(tmp_path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "study", tmp_path / "a")
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    again = MlflowTracker(tracker.uri, "study", tmp_path / "a")  # reopened, not re-created or re-tagged
    assert again.experiment_id == tracker.experiment_id
    assert classic_view_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_the_printed_address_opens_the_studys_runs_in_a_fresh_browser(mirror_ui, devtools):
    """The address the study prints (the classic view in the execution's saved view), in a new browser profile:
    the runs table lists the parent first and every trial under it, with the varied parameter and the final
    errors as columns, not the GenAI overview and not one folded parent row."""
    base, eid, parent, children, _ = mirror_ui
    names = {parent: "width_sweep 2026-12-01", children[0]: "standard data=random16 m_c=1 seed=0",
             children[1]: "ee c=2 data=random16 m_c=1 seed=0"}
    dom = devtools.wait_for(classic_view_url(base, eid, view_key("execution-1")),
                            lambda d: _run_links(d, eid) == names)
    text = _text(dom)
    assert "Runs - Experiment" in text and "3 matching runs" in text
    order = re.findall(rf'href="#/experiments/{eid}/runs/([0-9a-f]{{32}})"', dom)
    assert order[0] == parent  # sorted by role: the parent on top
    for column in ("ee.enabled", "final_train_error"):  # the varied param, the final error the trials logged
        assert column in text, column
    for genai in ("Token Usage", "Tokens per Trace", "Detect Issues"):
        assert genai not in text


def test_the_width_sweeps_printed_address_lists_its_parent_and_every_trial(width_smoke, mlflow_ui, devtools):
    """The address the width-sweep smoke printed under its mlflow ui command (on this test's server instead of
    port 5000), in a fresh browser profile: the parent run and all twelve trials, by name, parent first."""
    _, stdout = width_smoke
    base, eid, parent, children = mlflow_ui
    lines = stdout.splitlines()
    ui = next(i for i, line in enumerate(lines) if " -m mlflow ui " in line)
    printed = lines[ui + 1].strip()
    assert printed.startswith("http://127.0.0.1:5000/#/experiments/") and "workflowType=machine_learning" in printed
    names = {parent.info.run_id: parent.info.run_name, **children}
    dom = devtools.wait_for(printed.replace("http://127.0.0.1:5000", base), lambda d: _run_links(d, eid) == names)
    assert re.findall(rf'href="#/experiments/{eid}/runs/([0-9a-f]{{32}})"', dom)[0] == parent.info.run_id
    assert "13 matching runs" in _text(dom)


def test_the_chart_view_plots_what_the_study_varies_against_the_final_training_error(mirror_ui, devtools):
    """The printed address's chart (compare) view, fresh browser: the first chart is a parallel-coordinates plot
    whose axes are the varied parameter (ee.enabled; optim.lr is equal, seeds replicate) and final_train_error."""
    base, eid, _, _, _ = mirror_ui
    url = classic_view_url(base, eid, view_key("execution-1")) + "&compareRunsMode=CHART"

    def axes(dom: str) -> list[str]:
        return re.findall(r'<text[^>]*class="label"[^>]*>([^<]+)<', dom)

    dom = devtools.wait_for(url, lambda d: len(axes(d)) >= 2)
    assert axes(dom) == ["ee.enabled", "final_train_error"]
    assert "width_sweep: what the study varies" in _text(dom)


def test_the_compare_runs_page_plots_the_final_training_error_not_the_epoch(mirror_ui, devtools):
    """MLflow's own compare page (the Compare button on the selected trials), fresh browser: its parallel-
    coordinates plot takes the first metric the runs logged, and a trial logs train_error first (its last value is
    the final training error), not epoch, which is the same for every trial."""
    base, eid, _, children, _ = mirror_ui
    assert list(MlflowClient(f"{base}").get_run(children[0]).data.metrics)[0] == "train_error"
    url = f"{base}/#/compare-runs?runs={json.dumps(children)}&experiments={json.dumps([eid])}"

    def axes(dom: str) -> list[str]:  # plotly's parallel-coordinates axis titles
        return re.findall(r'<text[^>]*class="axis-title"[^>]*>([^<]+)<', dom)

    dom = devtools.wait_for(url, lambda d: len(axes(d)) >= 2)
    assert axes(dom)[-1] == "train_error" and "epoch" not in axes(dom), axes(dom)
    assert "ee.enabled" in axes(dom)  # the parameter the two trials differ in


def test_runs_name_their_study_and_role_and_old_mirrors_are_upgraded(tmp_path):
    """eeray.study holds the study's name, eeray.role the run's role (parent / trial), eeray.execution the
    execution, on parents and trials; a mirror written before eeray.role (eeray.study = parent / trial) is found
    again and given the same tags; the execution's saved view is written once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = MlflowTracker(uri, "sweep", tmp_path / "a")
    pid = t.start_study("e1", "sweep e1", {}, {}, ["optim.lr"])
    cid = t.child("t0", "lr=0.1", {"optim.lr": 0.1}, {})
    for run_id, role in ((pid, "parent"), (cid, "trial")):
        tags = t.client.get_run(run_id).data.tags
        assert (tags["eeray.study"], tags["eeray.role"], tags["eeray.execution"]) == ("sweep", role, "e1")
    view = json.loads(t.client.get_experiment(t.experiment_id).tags[VIEW_TAG_PREFIX + view_key("e1")])
    state = json.loads(view["state"])
    assert view["name"] == "sweep e1" and state["searchFilter"] == "tags.`eeray.execution` = 'e1'"
    assert state["compareRunCharts"][0]["selectedParams"] == ["optim.lr"]
    assert state["compareRunCharts"][0]["selectedMetrics"] == ["final_train_error"]
    again = MlflowTracker(uri, "sweep", tmp_path / "a")
    assert again.start_study("e1", "sweep e1", {}, {}, ["other"]) == pid and again.children() == {"t0": cid}
    assert t.client.get_experiment(t.experiment_id).tags[VIEW_TAG_PREFIX + view_key("e1")] == json.dumps(view)

    # a mirror as eeray wrote it before eeray.role: the role in eeray.study, no execution on the trial
    old = t.client.create_run(t.experiment_id, run_name="sweep e2", tags={"eeray.study": "parent",
                                                                          "eeray.execution": "e2"}).info.run_id
    trial = t.client.create_run(t.experiment_id, run_name="lr=1", tags={
        "eeray.study": "trial", "eeray.trial_id": "t9", "mlflow.parentRunId": old}).info.run_id
    reopened = MlflowTracker(uri, "sweep", tmp_path / "a")
    assert reopened.start_study("e2", "sweep e2", {}, {}) == old and reopened.children() == {"t9": trial}
    for run_id, role in ((old, "parent"), (trial, "trial")):
        tags = t.client.get_run(run_id).data.tags
        assert (tags["eeray.study"], tags["eeray.role"], tags["eeray.execution"]) == ("sweep", role, "e2")


def test_varied_params_are_the_keys_that_differ_seeds_left_out():
    trials = {"a": {"ee.enabled": True, "optim.lr": 0.1, "seed": 0, "data.seed": 0, "model.w": [1, 2]},
              "b": {"ee.enabled": False, "optim.lr": 0.1, "seed": 1, "data.seed": 1, "model.w": [1, 3]}}
    assert varied_params(trials) == ["ee.enabled", "model.w"]
    assert varied_params(trials, {"optim.lr": None}) == ["ee.enabled", "model.w", "optim.lr"]  # searched: varies


def test_the_plot_leaves_out_axes_on_which_mlflow_would_drop_trials():
    """ee.m_H_factor is None for standard trials: MLflow would drop them from the plot (most values numeric)."""
    trials = {"ee c=2": {"ee.enabled": True, "ee.m_H_factor": 2.0, "model.lenet_mc": 1, "data.name": "a"},
              "ee c=4": {"ee.enabled": True, "ee.m_H_factor": 4.0, "model.lenet_mc": 2, "data.name": "b"},
              "standard": {"ee.enabled": False, "ee.m_H_factor": None, "model.lenet_mc": 1, "data.name": "a"}}
    view = definition_view({"trials": trials, "settings": {"search": {"optim.lr": {}}}})
    assert view == {"varied": ["data.name", "ee.enabled", "ee.m_H_factor", "model.lenet_mc", "optim.lr"],
                    "plotted": ["data.name", "ee.enabled", "model.lenet_mc", "optim.lr"]}


def test_a_child_runs_metric_charts_are_drawn_not_loading(mirror_ui, devtools):
    base, eid, _, (child, _), steps = mirror_ui
    url = f"{base}/#/experiments/{eid}/runs/{child}/model-metrics"

    def drawn(dom: str) -> bool:
        cards = _cards(dom)
        return set(cards) == set(steps) and all(
            'class="main-svg"' in card and (steps[m] < 2 or max(_line_points(card), default=0) >= 2)
            for m, card in cards.items())

    dom = devtools.wait_for(url, drawn)
    cards = _cards(dom)
    assert set(cards) == {"epoch", "train_error", "train_loss", "final_train_error"}
    for metric in ("train_error", "train_loss"):  # logged at 6 steps: a plotted line through several points
        points = _line_points(cards[metric])
        assert points and 2 <= max(points) <= steps[metric], (metric, points)
        assert "main-svg" in cards[metric] and "Loading" not in re.sub(r"<[^>]+>", " ", cards[metric])
