"""MLflow, written by the driver only (ARCHITECTURE.md principle 9): for browsing, not the source of truth.

One parent run per study execution, one child run per trial linked by the ``mlflow.parentRunId`` tag and named
readably (``m_c=2 seed=1``), parameters once, metrics with step = optimizer step, tags for the dataset, the
phase-switch step and the git commit, small artifacts at trial end. Every write names its run id explicitly
(no "active run" state), so a resumed study reopens the same parent and child runs instead of creating new ones,
and a chunk of rows already logged is never logged twice (its key is kept in the ``eeray.last_chunk`` tag).

Embedded default: SQLite under the results directory; ``MLFLOW_TRACKING_URI`` points at a server instead.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

STUDY_TAG, TRIAL_TAG, EXECUTION_TAG, CHUNK_TAG = "eeray.study", "eeray.trial_id", "eeray.execution", "eeray.last_chunk"
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def default_tracking_uri(results_dir: str | os.PathLike) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else an embedded SQLite store under the results directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


# The experiment's kind as MLflow's UI stores it (the tag its kind selector writes): studies train models. MLflow
# 3.17's UI picks the page layout from its global GenAI / Model-training switch instead (the ``workflowType`` URL
# parameter, else the browser's last choice, default GenAI), so the classic view is also asked for in the URL.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def classic_view_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs page in MLflow's classic model-training view (not the GenAI traces overview)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_command(tracking_uri: str, port: int = 5000) -> str:
    if tracking_uri.startswith("sqlite:"):
        return (f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port {port}  (in the sidebar "
                "choose 'Model training', not 'GenAI': MLflow remembers it)")
    return f"open {tracking_uri} in a browser (an SSH tunnel on a cluster: see README 'Run on a cluster')"


def chunk_order(chunk: str) -> tuple[int, int]:
    """Chunks are named '<step:09d>-<reason>'; order them by step, then by checkpoint reason in the order the
    loop offers them at one step: the epoch end, then the switch (before, after), then the trial's end."""
    step, _, reason = chunk.partition("-")
    rank = {"epoch": 0, "pre_switch": 1, "post_switch": 2, "end": 3}.get(reason, 4)
    return int(step), rank


class MlflowTracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | os.PathLike | None = None):
        self.client = MlflowClient(tracking_uri)
        self.uri = tracking_uri
        # creating the experiment creates the SQLite schema: once, in the driver, before any trial starts
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location,
                                                               tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            self.experiment_id = exp.experiment_id
        self.parent_id: str | None = None
        self._children: dict[str, str] = {}
        self._last_chunk: dict[tuple[str, str], str] = {}  # (run, stream) -> the last chunk logged
        self._opened: set[str] = set()  # runs this process has created or reopened

    # ----------------------------------------------------------------------- the study's parent run
    def start_study(self, execution: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Create the parent run of this study execution, or reopen it when the execution is resumed."""
        found = self._search(f"tags.`{EXECUTION_TAG}` = '{execution}' and tags.`{STUDY_TAG}` = 'parent'")
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for run in self._search(f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_id}'"):
                self._children[run.data.tags[TRIAL_TAG]] = run.info.run_id
                for tag, value in run.data.tags.items():
                    if tag.startswith(CHUNK_TAG + "."):
                        self._last_chunk[(run.info.run_id, tag[len(CHUNK_TAG) + 1:])] = value
            return self.parent_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={STUDY_TAG: "parent", EXECUTION_TAG: execution, **tags})
        self.parent_id = run.info.run_id
        self._log_params(self.parent_id, params)
        return self.parent_id

    def finish_study(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    # ----------------------------------------------------------------------- child runs
    def child(self, trial_id: str, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """The trial's child run: found by its trial id (resume, retries), else created with its params."""
        if trial_id in self._children:
            run_id = self._children[trial_id]
            if run_id not in self._opened:  # a run of an earlier (interrupted) execution: running again
                self.client.update_run(run_id, status="RUNNING")
                self._opened.add(run_id)
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={MLFLOW_PARENT_RUN_ID: self.parent_id, TRIAL_TAG: trial_id,
                                           MLFLOW_RUN_NAME: name, STUDY_TAG: "trial", **tags})
        run_id = run.info.run_id
        self._children[trial_id] = run_id
        self._opened.add(run_id)
        self._log_params(run_id, params)
        return run_id

    def log_chunk(self, run_id: str, chunk: str, streams: Mapping[str, tuple[Iterable[Mapping[str, Any]], str]],
                  tags: Mapping[str, Any] = ()) -> int:
        """One chunk of a trial's rows, ``streams = {name: (rows, metric prefix)}``: numeric columns become
        metrics at step = row['step']; a stream that already logged this chunk (the trial re-emitted it after a
        restart) is skipped. Metrics, the chunk-key tags and ``tags`` go in as few ``log_batch`` calls as MLflow
        allows: every call is a transaction on the store."""
        now = int(time.time() * 1000)
        metrics, marks = [], []
        for stream, (rows, prefix) in streams.items():
            last = self._last_chunk.get((run_id, stream), "")
            if last and chunk_order(chunk) <= chunk_order(last):
                continue
            metrics += [Metric(f"{prefix}{k}", float(v), now, int(row["step"]))
                        for row in rows for k, v in row.items()
                        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(float(v))]
            marks.append(stream)
        if not marks:
            return 0
        all_tags = [RunTag(f"{CHUNK_TAG}.{m}", chunk) for m in marks] + [RunTag(k, str(v)) for k, v in dict(tags).items()]
        for i in range(0, max(len(metrics), 1), _BATCH):
            last_call = i + _BATCH >= len(metrics)
            self.client.log_batch(run_id, metrics=metrics[i:i + _BATCH], tags=all_tags if last_call else [])
        for m in marks:
            self._last_chunk[(run_id, m)] = chunk
        return len(metrics)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish_trial(self, run_id: str, status: str, summary: Mapping[str, Any],
                     artifacts: Mapping[str, Mapping[str, Any]] = ()) -> None:
        """Final metrics and small JSON artifacts, then FINISHED / FAILED."""
        finals = {k: v for k, v in summary.items() if k.startswith("final_") and isinstance(v, (int, float))
                  and not isinstance(v, bool) and v is not None and math.isfinite(float(v))}
        if finals:
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in finals.items()])
        for name, content in dict(artifacts).items():
            self.client.log_dict(run_id, dict(content), name)
        self.client.set_terminated(run_id, status=status)

    # ----------------------------------------------------------------------- internals
    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # at most 100 params per batch
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _search(self, filter_string: str):
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=5000)
