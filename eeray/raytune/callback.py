"""The driver side of a study: one ``tune.Callback`` that writes Parquet and MLflow (the only writer of both).

It is pickled with the Tuner (``Tuner.restore`` brings it back), so clients are created lazily and dropped
from the pickle. Time spent writing is accumulated for ``benchmarks/orchestration.py``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray import tune

from eeray.config import to_flat
from eeray.results import ResultsWriter
from eeray.mlflow_mirror import MlflowTracker

STATUS_TO_MLFLOW = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}
# what is worth a curve in the MLflow UI; Parquet keeps every column
DIAG_METRICS = ("step", "q_t", "residual", "rank", "lambda_min", "lambda_max", "delta_m_fro_sq", "delta_m_spec_sq",
                "energy_1e-08", "cert_bound", "seconds_total")


class StudyCallback(tune.Callback):
    def __init__(self, study, results_dir: str, tracking_uri: str, execution: str, git_commit: str, profile: str):
        self.study, self.results_dir, self.tracking_uri = study, str(results_dir), tracking_uri
        self.execution, self.git_commit, self.profile = execution, git_commit, profile
        self.write_seconds = {"parquet": 0.0, "mlflow": 0.0}
        self.attempts: dict[str, int] = {}
        self.where: dict[str, list[dict[str, Any]]] = {}  # per attempt: node, actor nodes, why it ended
        self._writer: ResultsWriter | None = None
        self._tracker: MlflowTracker | None = None
        self._finished: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_writer"] = state["_tracker"] = None
        return state

    # ----------------------------------------------------------------------- lazy clients
    @property
    def writer(self) -> ResultsWriter:
        if self._writer is None:
            self._writer = ResultsWriter(self.results_dir, self.study.name)
        return self._writer

    @property
    def tracker(self) -> MlflowTracker:
        if self._tracker is None:
            self._tracker = open_tracker(self)
        return self._tracker

    # ----------------------------------------------------------------------- Tune hooks
    def on_trial_start(self, iteration, trials, trial, **info):
        self._child(trial)
        if trial.trial_id not in self.attempts and trial.checkpoint is not None:  # begun by a driver now lost
            self.attempts[trial.trial_id] = 1
            self.where[trial.trial_id] = [{"node": (trial.last_result or {}).get("node_ip"), "actors": [],
                                           "error": "the driver was lost; continued with --resume"}]
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1
        self.where.setdefault(trial.trial_id, []).append({"node": None, "actors": [], "error": None})

    def on_trial_recover(self, iteration, trials, trial, **info):
        """An attempt failed and Tune will retry the trial (a lost node, a lost actor): keep why."""
        if self.where.get(trial.trial_id):
            self.where[trial.trial_id][-1]["error"] = _error_text(trial).splitlines()[0][:500]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        rows = result.pop("rows", None)  # keep Tune's own experiment state small
        self._record_where(trial, result, rows or {})
        chunk = result.get("chunk")
        if rows is None or chunk is None:
            return
        cfg = self.study.config(trial.config)
        dataset = cfg.data.name
        t0 = time.perf_counter()
        for table in ("steps", "diagnostics", "safety"):
            if rows.get(table):
                self.writer.write_chunk(table, trial.trial_id, chunk, rows[table], dataset)
        t1 = time.perf_counter()
        run_id = self._child(trial)
        diag = [{k: r[k] for k in DIAG_METRICS if k in r} for r in rows.get("diagnostics", [])]
        tags = {}
        for event in rows.get("events", []):
            if event.get("event") == "phase_switch":
                tags = {"eeray.phase_switch_step": event["step"], "eeray.perturb_norm": f"{event['perturb_norm']:.6g}"}
        self.tracker.log_chunk(run_id, chunk, {"steps": (rows.get("steps", []), ""),
                                               "diagnostics": (diag, "diag_")}, tags)
        self.write_seconds["mlflow"] += time.perf_counter() - t1
        self.write_seconds["parquet"] += t1 - t0
        if rows.get("summary"):
            self._finish(trial, "completed", rows["summary"][-1])
        elif result.get("failure_reason"):
            self._finish(trial, "failed", {"failure_reason": result["failure_reason"]})

    def on_trial_complete(self, iteration, trials, trial, **info):
        """A trial that ends without its summary was stopped early by the scheduler (ASHA)."""
        if trial.trial_id not in self._finished:
            last = trial.last_result or {}
            self._finish(trial, "stopped", {"failure_reason": "stopped early by the scheduler",
                                            **{f"final_{k}": last[k] for k in ("train_loss", "train_error",
                                                                              "test_error") if k in last}})

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = _error_text(trial)
        self._finish(trial, "failed", {"failure_reason": reason})

    def on_experiment_end(self, trials, **info):
        self.tracker.finish_study("FINISHED")

    # ----------------------------------------------------------------------- helpers
    def _child(self, trial) -> str:
        cfg = self.study.config(trial.config)
        name = self.study.trial_name(trial.config)
        return self.tracker.child(trial.trial_id, name, to_flat(cfg),
                                  {"eeray.dataset": cfg.data.name, "mlflow.source.git.commit": self.git_commit,
                                   "eeray.profile": self.profile, "eeray.ee": str(cfg.ee.enabled)})

    def _finish(self, trial, status: str, summary: dict[str, Any]) -> None:
        if trial.trial_id in self._finished:
            return
        cfg = self.study.config(trial.config)
        row = {**{k: v for k, v in summary.items() if k != "status"},
               "trial_name": self.study.trial_name(trial.config), "status": status,
               "attempts": self.attempts.get(trial.trial_id, 1), "git_commit": self.git_commit,
               **self._where_fields(trial.trial_id),
               **{f"cfg.{k}": v for k, v in to_flat(cfg).items()}}
        t0 = time.perf_counter()
        self.writer.write_trial(trial.trial_id, row, cfg.data.name)
        t1 = time.perf_counter()
        run_id = self._child(trial)
        if status == "failed":
            self.tracker.set_tags(run_id, {"eeray.failure_reason": str(summary.get("failure_reason"))[:5000]})
        self.tracker.finish_trial(run_id, STATUS_TO_MLFLOW[status], summary,
                                  {"config.json": to_flat(cfg), "summary.json": _jsonable(summary)})
        self.write_seconds["mlflow"] += time.perf_counter() - t1
        self.write_seconds["parquet"] += t1 - t0
        self._finished.add(trial.trial_id)


    def _record_where(self, trial, result: dict, rows: dict) -> None:
        """The node of this attempt (Tune puts ``node_ip`` in every result) and where its diagnostic actors run."""
        attempts = self.where.setdefault(trial.trial_id, [{"node": None, "actors": [], "error": None}])
        if attempts[-1]["node"] is None and result.get("node_ip"):
            attempts[-1]["node"] = result["node_ip"]
        for event in rows.get("events", []):
            if event.get("event") == "diag_actors":
                attempts[-1]["actors"] += [n for n in event["nodes"] if n not in attempts[-1]["actors"]]

    def _where_fields(self, trial_id: str) -> dict[str, str]:
        attempts = self.where.get(trial_id, [])
        return {"attempt_nodes": json.dumps([a["node"] for a in attempts]),
                "diag_actor_nodes": json.dumps([a["actors"] for a in attempts]),
                "attempt_errors": json.dumps([a["error"] for a in attempts[:-1]])}


def open_tracker(cb: StudyCallback) -> MlflowTracker:
    tracker = MlflowTracker(cb.tracking_uri, cb.study.name, Path(cb.results_dir).resolve() / "mlartifacts")
    tracker.start_study(cb.execution, f"{cb.study.name} {cb.execution}",
                        {"profile": cb.profile, "trials": len(cb.study.points()) * cb.study.samples_per_point,
                         "grid": json.dumps({k: list(v) for k, v in cb.study.grid.items()}, default=str),
                         "variants": json.dumps(list(cb.study.variants))},
                        {"mlflow.source.git.commit": cb.git_commit, "eeray.profile": cb.profile})
    return tracker


def _error_text(trial) -> str:
    text = getattr(trial, "error_msg", None)
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if not text and path and Path(str(path)).is_file():
        text = Path(str(path)).read_text(errors="replace")
    text = (text or "trial errored (no message)").strip()
    last = [line for line in text.splitlines() if line.strip()][-1:]  # the exception line, then the traceback
    return (last[0] + "\n" + text)[:4000] if last else text[:4000]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
