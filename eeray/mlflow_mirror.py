"""MLflow as a mirror of the Parquet record (docs/architecture.md principle 10): for browsing, never a dependency
and never the source of truth.

One parent run per study execution, one child run per trial linked by the ``mlflow.parentRunId`` tag and named
readably (``ee c=2 m_c=1 seed=0``), parameters once, metrics with step = optimizer step, tags for the dataset,
the phase switch and the git commit, small artifacts at trial end. Only the driver writes (or
``python -m eeray.mlflow_sync``, which builds or completes the mirror from Parquet).

Exactly one point per (metric, step), whatever happens around a write. MLflow itself is the state: the first time
this process touches a run it reads the run's metric histories, and from then on it logs only points whose
(metric, step) is absent. A driver killed at any instant, a resumed trial that re-emits rows, or a sync after an
outage therefore never duplicates a point and, once the sync has run, never misses one. At a step with rows of
both phases (the switch step τ), the exploration row is the one mirrored (Parquet keeps both). Timestamps are a
pure function of the execution and the step, so a request that MLflow's HTTP client retries after the server
had already committed it is an exact duplicate, which MLflow's SQL store drops.

Requests are bounded (``MLFLOW_HTTP_REQUEST_TIMEOUT`` 10 s, 2 retries unless the user set them), and
:class:`Mirror` turns the first failure into one warning and stops mirroring for the rest of the run, so a study
never waits on or fails because of MLflow.

Embedded default: SQLite under the results directory; ``MLFLOW_TRACKING_URI`` points at a server instead.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from eeray import faults
from eeray.errors import chain, is_number
from eeray.mlflow_store import creating, embedded_store, relocate

# every run names its study (the experiment's name), its execution and its role; a trial also its trial id.
# Mirrors written before eeray.role existed held the role in eeray.study: start_study reads and upgrades them.
STUDY_TAG, ROLE_TAG, TRIAL_TAG, EXECUTION_TAG = "eeray.study", "eeray.role", "eeray.trial_id", "eeray.execution"
PARENT, TRIAL = "parent", "trial"
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch
_TAGS = 100  # ... and 100 tags
PHASE_RANK = {"explore": 0, "exploit": 1}  # at one step, the earlier phase's row is mirrored
# what is worth a curve in the MLflow UI (prefixed diag_); Parquet keeps every column
DIAG_METRICS = ("q_t", "residual", "rank", "lambda_min", "lambda_max", "delta_m_fro_sq", "delta_m_spec_sq",
                "energy_1e-08", "cert_bound")
# wall-clock timings are not a function of the run (a resumed trial re-measures the chunk it re-emits), so a
# mirrored point could not stay equal to its Parquet row: they stay in Parquet (and in the trials summary)
UNMIRRORED_STEP_COLUMNS = ("explore_seconds", "exploit_seconds", "eval_seconds")
STATUS_TO_MLFLOW = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "interrupted": "KILLED"}

Point = tuple[str, int, float]  # (metric key, step, value)


def default_tracking_uri(results_dir: str | os.PathLike) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else an embedded SQLite store under the results directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


# The experiment's kind as MLflow's UI stores it (the tag its kind selector writes): studies train models. MLflow
# 3.17's UI picks the page layout from its global GenAI / Model-training switch instead (the ``workflowType`` URL
# parameter, else the browser's last choice, default GenAI: main.*.js module 7975; the tag is read only when the
# workflow-based navigation flag, on in 3.17, is off), so the classic view is also asked for in the URL.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# A saved view of the runs page, as MLflow 3.17's "Save and share view" writes it: the experiment tag
# ``mlflow.sharedViewState.<key>`` holding {name, createdAt, updatedAt, state}, where state is the JSON of the
# page's search facets and UI state; ``?viewStateShareKey=<key>`` opens it, in any browser (a fresh one has no
# saved view of its own). It cannot expand a parent row (MLflow drops runsExpanded from a shared view, and expands
# parents by itself only for evaluation runs), so the study's view lists the execution's runs flat instead:
# filtered by execution and sorted by role, the parent first and every trial under it, the varied parameters and
# final errors as columns, and in the chart (compare) view first a parallel-coordinates plot of what the study
# varies against the final training error (MLflow's own default plot has no parallel coordinates once runs have
# metrics). MLflow's compare-runs page (the Compare button) plots the first metric the selected runs logged
# against the first three parameters that differ: a trial logs LEAD_METRIC first, so that plot shows its last
# value, the final training error, instead of epoch.
VIEW_TAG_PREFIX, VIEW_PARAM = "mlflow.sharedViewState.", "viewStateShareKey"
VIEW_METRICS = ("final_train_error", "final_test_error")
LEAD_METRIC = "train_error"  # logged first: the compare-runs page's default plot (its last value is the final one)


def view_key(execution: str) -> str:
    return f"eeray-{execution}"


def classic_view_url(base_url: str, experiment_id: str, view: str | None = None) -> str:
    """The experiment's runs page in MLflow's classic model-training view (not the GenAI traces overview), in the
    saved view ``view`` (a :func:`view_key`) if given."""
    url = f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return f"{url}&{VIEW_PARAM}={quote(view)}" if view else url


def varied_params(trials: Mapping[str, Mapping[str, Any]], search: Iterable[str] = ()) -> list[str]:
    """The parameters the study varies: config keys whose value differs between its trials (``trials``: name ->
    flat config, execution.json's definition) and the searched keys. Seeds are left out: they replicate a point
    rather than vary it (their spread shows on the error axis)."""
    configs, searched = list(trials.values()), set(search)
    keys = sorted({k for c in configs for k in c} | searched)
    return [k for k in keys if not k.rsplit(".", 1)[-1].endswith("seed")
            and (k in searched or len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1)]


def _numeric(v: Any) -> bool:
    """As MLflow's UI reads a logged parameter (JavaScript ``!isNaN(Number(value))``): "None", "True" are not."""
    try:
        float(str(v))
    except ValueError:
        return False
    return True


def plotted_params(trials: Mapping[str, Mapping[str, Any]], varied: Sequence[str]) -> list[str]:
    """The varied parameters a parallel-coordinates plot can take without losing trials: MLflow 3.17 drops every
    run whose value is not a number on an axis where most are (main.*.js module 57990), so an axis such as
    ee.m_H_factor, None for the standard trials, would hide them; those stay table columns only. Searched keys
    (not in the configs) are numbers."""
    configs = list(trials.values())

    def all_or_none_numeric(k: str) -> bool:
        numeric = {_numeric(c.get(k)) for c in configs if k in c}
        return len(numeric) <= 1
    return [k for k in varied if all_or_none_numeric(k)]


def definition_view(definition: Mapping[str, Any]) -> dict[str, list[str]]:
    """The ``varied`` and ``plotted`` parameters of :meth:`MlflowTracker.start_study` for an execution.json
    ``definition``."""
    varied = varied_params(definition["trials"], definition.get("settings", {}).get("search") or {})
    return {"varied": varied, "plotted": plotted_params(definition["trials"], varied)}


def view_state(study: str, execution: str, varied: Sequence[str], plotted: Sequence[str] | None = None
               ) -> dict[str, Any]:
    """The runs page's state for one study execution (see VIEW_TAG_PREFIX); keys as MLflow 3.17 names them."""
    section = "eeray-study"
    return {
        "searchFilter": f"tags.`{EXECUTION_TAG}` = '{execution}'",
        "orderByKey": f"tags.`{ROLE_TAG}`", "orderByAsc": True,  # 'parent' < 'trial'; not by date: that nests
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": [*(f"params.`{k}`" for k in varied), *(f"metrics.`{m}`" for m in VIEW_METRICS)],
        "runsHiddenMode": "SHOW_ALL",  # the charts plot every trial, not MLflow's default first 10 rows
        "isAccordionReordered": True,  # keeps the study's section first when MLflow adds its metric sections
        "compareRunSections": [
            {"uuid": section, "name": f"{study}: what the study varies", "display": True, "isReordered": True,
             "deleted": False, "isGenerated": False, "columns": 1, "cardHeight": 480},
            *({"uuid": f"eeray-{n.split()[0].lower()}", "name": n, "display": True, "isReordered": False,
               "deleted": False, "isGenerated": True} for n in ("Model metrics", "System metrics"))],
        "compareRunCharts": [
            {"uuid": "eeray-parallel", "type": "PARALLEL", "runsCountToCompare": 100, "metricSectionId": section,
             "deleted": False, "isGenerated": False, "showAllRuns": True,
             "selectedParams": list(varied if plotted is None else plotted),
             "selectedMetrics": [VIEW_METRICS[0]]}],
    }


def ui_command(tracking_uri: str, port: int = 5000) -> str | None:
    """The command that serves the embedded store's UI (this interpreter's MLflow by absolute path: it works in a
    fresh shell, eeray.commands), or None for a tracking server, which serves its own UI."""
    from eeray.commands import mlflow_ui  # noqa: PLC0415

    return mlflow_ui(tracking_uri, port) if tracking_uri.startswith("sqlite:") else None


def _number(v: Any) -> float | None:
    return float(v) if is_number(v) else None


def metric_points(steps: Iterable[Mapping[str, Any]], diagnostics: Iterable[Mapping[str, Any]]) -> list[Point]:
    """The points a trial's rows mirror to: every numeric column of ``steps`` but the wall-clock timings, and
    ``DIAG_METRICS`` of ``diagnostics`` as ``diag_<name>``; one point per (key, step), the earlier phase's row
    winning."""
    out: dict[tuple[str, int], float] = {}

    def add(rows, keys, prefix):
        for row in sorted(rows, key=lambda r: (int(r["step"]), PHASE_RANK.get(r.get("phase"), 2))):
            for k in keys(row):
                value = _number(row.get(k))
                if value is not None:
                    out.setdefault((prefix + k, int(row["step"])), value)

    add(list(steps), lambda r: [k for k in r if k != "step" and k not in UNMIRRORED_STEP_COLUMNS], "")
    add(list(diagnostics), lambda r: DIAG_METRICS, "diag_")
    # LEAD_METRIC's points first: MLflow lists a run's metrics in the order they were first logged, and its
    # compare-runs page plots the first one shared by the selected runs (was epoch, the same for every trial)
    return sorted(((k, s, v) for (k, s), v in out.items()), key=lambda p: p[0] != LEAD_METRIC)


def bound_requests(environ=os.environ) -> None:
    """Bounded requests to an MLflow server, where the user has not set them: MLflow's defaults (120 s timeout, 7
    retries with backoff) would block a study for minutes. MLflow reads these at each request, so a tracker sets
    them when it is made, not this module when it is imported."""
    environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


class MlflowTracker:
    """Plain MLflow writes, every one naming its run (no "active run" state)."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | os.PathLike | None = None,
                 time_origin_ms: int = 0):
        self.uri = tracking_uri
        bound_requests()
        self.time_origin_ms = time_origin_ms  # timestamps = origin + step: identical when a point is re-sent
        # the first use creates the SQLite schema: once, in the driver, before any trial starts, under a lock that
        # another driver starting on the same fresh store waits for (mlflow_store.creating)
        with creating(tracking_uri):
            self.client = MlflowClient(tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = Path(artifact_root).resolve().as_uri() if artifact_root else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location,
                                                                   tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            else:
                self.experiment_id = exp.experiment_id
        # the results directory was copied or moved since the store was made: its artifacts stay inside it
        db = embedded_store(tracking_uri, artifact_root)
        self.relocated_from = relocate(db, self.experiment_id, Path(artifact_root).resolve().as_uri()) if db else None
        self.study = experiment
        self.execution: str | None = None
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}  # trial id -> run id
        self._points: dict[str, set[tuple[str, int]]] = {}  # run id -> (key, step) already in MLflow

    # ----------------------------------------------------------------------- the study's parent run
    def start_study(self, execution: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                    varied: Sequence[str] = (), plotted: Sequence[str] | None = None) -> str:
        """Create the parent run of this study execution, or reopen it when the execution continues; save the
        execution's view of the runs page (:func:`view_state`; ``varied``, ``plotted``: :func:`definition_view`)."""
        self.execution = execution
        self._save_view(execution, varied, plotted)
        found = self._search(f"tags.`{EXECUTION_TAG}` = '{execution}' and tags.`{ROLE_TAG}` = '{PARENT}'")
        old = not found and self._search(
            f"tags.`{EXECUTION_TAG}` = '{execution}' and tags.`{STUDY_TAG}` = '{PARENT}'")
        if found or old:
            self.parent_id = (found or old)[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for run in self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_id}'"):
                self._children[run.data.tags[TRIAL_TAG]] = run.info.run_id
            if old:  # written before eeray.role: the same tags as new runs carry, so the view and filters find them
                for run_id, role in [(self.parent_id, PARENT), *((r, TRIAL) for r in self._children.values())]:
                    self.set_tags(run_id, self._tags(execution, role))
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={**self._tags(execution, PARENT), **tags})
        self.parent_id = run.info.run_id
        self._points[self.parent_id] = set()
        self._log_params(self.parent_id, params)
        return self.parent_id

    def finish_study(self, status: str, summary: Mapping[str, Any] | None = None,
                     artifacts: Mapping[str, Any] = ()) -> None:
        """The parent carries the study's outcome (counts as metrics) and its summary table (an artifact)."""
        if self.parent_id is None:
            return
        if summary:
            self.log_points(self.parent_id, [(k, 0, v) for k, v in summary.items() if _number(v) is not None])
        for name, content in dict(artifacts).items():
            if name.endswith(".json"):
                self.client.log_dict(self.parent_id, content, name)
            else:
                self.client.log_text(self.parent_id, str(content), name)
        self.client.set_terminated(self.parent_id, status=status)

    # ----------------------------------------------------------------------- child runs
    def child(self, trial_id: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The trial's child run: found by its trial id (resume, retries, sync), else created with its params."""
        if trial_id in self._children:
            return self._children[trial_id]
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={MLFLOW_PARENT_RUN_ID: self.parent_id, TRIAL_TAG: trial_id,
                                           MLFLOW_RUN_NAME: name, **self._tags(self.execution, TRIAL), **tags})
        run_id = run.info.run_id
        self._children[trial_id] = run_id
        self._points[run_id] = set()
        self._log_params(run_id, params)
        return run_id

    def delete_children(self, trial_ids: set[str]) -> None:
        """Delete the runs of trials that will run again under new ids (lost with a driver before they ended)."""
        for trial_id in sorted(trial_ids & set(self._children)):
            self.client.delete_run(self._children.pop(trial_id))

    def has_child(self, trial_id: str) -> bool:
        return trial_id in self._children

    def children(self) -> dict[str, str]:
        return dict(self._children)

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log_points(self, run_id: str, points: Iterable[Point], tags: Mapping[str, Any] = ()) -> int:
        """Log the points whose (key, step) the run does not have yet, and ``tags``, in as few ``log_batch`` calls
        as MLflow's limits allow (1,000 metrics and 100 tags per call); returns how many points were logged."""
        have = self._existing(run_id)
        new = [(k, s, v) for k, s, v in points if (k, s) not in have]
        metrics = [Metric(k, v, self.time_origin_ms + s, s) for k, s, v in new]
        tag_list = [RunTag(k, str(v)[:5000]) for k, v in dict(tags).items()]
        for i in range(max(-(-len(metrics) // _BATCH), -(-len(tag_list) // _TAGS))):
            batch = metrics[i * _BATCH:(i + 1) * _BATCH]
            self.client.log_batch(run_id, metrics=batch, tags=tag_list[i * _TAGS:(i + 1) * _TAGS])
            if batch:
                faults.reached("mlflow_batch")
                have.update((m.key, m.step) for m in batch)
        return len(metrics)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.log_points(run_id, (), tags)

    def finish_trial(self, run_id: str, status: str, summary: Mapping[str, Any],
                     artifacts: Mapping[str, Mapping[str, Any]] = (), tags: Mapping[str, Any] = ()) -> None:
        """Final metrics (at step 0) and tags in one batch, small JSON artifacts, then FINISHED / FAILED / KILLED."""
        self.log_points(run_id, [(k, 0, v) for k, v in summary.items()
                                 if k.startswith("final_") and _number(v) is not None], tags)
        for name, content in dict(artifacts).items():
            self.client.log_dict(run_id, dict(content), name)
        faults.reached("mlflow_finish")
        self.client.set_terminated(run_id, status=status)

    # ----------------------------------------------------------------------- internals
    def _tags(self, execution: str, role: str) -> dict[str, str]:
        return {STUDY_TAG: self.study, ROLE_TAG: role, EXECUTION_TAG: execution}

    def _save_view(self, execution: str, varied: Sequence[str], plotted: Sequence[str] | None) -> None:
        """The execution's saved view (an experiment tag), written once: a view the user overrode in MLflow's UI
        is theirs; its timestamps are the execution's start, so a resumed driver or a sync writes the same tag."""
        key = VIEW_TAG_PREFIX + view_key(execution)
        if key in self.client.get_experiment(self.experiment_id).tags:
            return
        at = self.time_origin_ms or int(time.time() * 1000)
        self.client.set_experiment_tag(self.experiment_id, key, json.dumps(
            {"name": f"{self.study} {execution}", "createdAt": at, "updatedAt": at,
             "state": json.dumps(view_state(self.study, execution, varied, plotted))}))

    def _existing(self, run_id: str) -> set[tuple[str, int]]:
        """(key, step) of every point the run holds: read from MLflow once per process, kept up to date after."""
        if run_id not in self._points:
            have: set[tuple[str, int]] = set()
            for key in self.client.get_run(run_id).data.metrics:
                have.update((key, m.step) for m in self.client.get_metric_history(run_id, key))
            self._points[run_id] = have
        return self._points[run_id]

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _search(self, filter_string: str):
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=50000)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


class Mirror:
    """A study's MLflow mirror, failure-isolated: the first failed call prints one warning (what happened and the
    command that rebuilds the mirror from Parquet) and turns mirroring off for the rest of this run."""

    def __init__(self, open_tracker: Callable[[], MlflowTracker], sync_command: str):
        # the embedded store logs each failed SQL statement with a traceback (a full disk: one per write) before
        # it raises; the warning below says the same once, with the cause and the command that completes the mirror
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self._open = open_tracker
        self._tracker: MlflowTracker | None = None
        self.sync_command = sync_command
        self.offline: str | None = None  # why mirroring stopped

    def call(self, what: str, fn: Callable[[MlflowTracker], Any]) -> Any:
        if self.offline:
            return None
        try:
            if self._tracker is None:
                self._tracker = self._open()
            return fn(self._tracker)
        except Exception as exc:  # noqa: BLE001 — any MLflow failure: the record must not depend on it
            self.offline = f"{what} failed: {_first_line(exc)}"
            *_, root = chain(exc)
            if root is not exc:  # SQLAlchemy's first line is its own preamble; the cause says what happened
                self.offline += f" (cause: {_first_line(root)})"
            print(f"warning: MLflow mirror off for the rest of this run ({self.offline}). The study goes on and "
                  f"Parquet stays complete; once MLflow is reachable, complete the mirror with:\n    "
                  f"{self.sync_command}", file=sys.stderr, flush=True)
            return None
