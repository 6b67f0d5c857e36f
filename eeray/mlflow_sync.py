"""Build or complete a study's MLflow mirror from its Parquet record.

    python -m eeray.mlflow_sync results --study width_sweep [--tracking-uri http://127.0.0.1:5000]

After an MLflow outage, a driver killed at any instant, or to mirror a results directory into another MLflow:
the parent run of the execution and one child run per trial are found (by their execution and trial-id tags) or
created, and every metric point that Parquet implies and MLflow lacks is logged — never one twice (see
:mod:`eeray.mlflow_mirror`). Running it again changes nothing. It takes the study's lock, so it never races a live
driver.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eeray.mlflow_mirror import (STATUS_TO_MLFLOW, MlflowTracker, default_tracking_uri, definition_view,
                                 metric_points)
from eeray.identity import EXECUTION_FILE
from eeray.results import load
from eeray.run_lock import StudyLock, StudyLocked

_CFG = "cfg."


def sync(results_dir: str | Path, study: str, tracking_uri: str | None = None) -> dict[str, int]:
    """Mirror ``<results_dir>/<study>`` into MLflow; returns counts of runs and points written."""
    results_dir = Path(results_dir).resolve()
    study_dir = results_dir / study
    meta = json.loads((study_dir / EXECUTION_FILE).read_text())
    uri = tracking_uri or default_tracking_uri(results_dir)
    res = load(results_dir, study)
    with StudyLock(study_dir):
        from datetime import datetime, timezone

        origin = int(datetime.strptime(meta["execution"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                     .timestamp() * 1000)
        t = MlflowTracker(uri, study, results_dir / "mlartifacts", time_origin_ms=origin)
        t.start_study(meta["execution"], f"{study} {meta['execution']}",
                      {"profile": meta["profile"], "trials": len(meta["definition"]["trials"]),
                       "fingerprint": meta["fingerprint"]},
                      {"mlflow.source.git.commit": meta["git_commit"], "eeray.profile": meta["profile"]},
                      **definition_view(meta["definition"]))
        counts = {"runs": 0, "points": 0}
        ended = {r["trial_id"]: r for r in res.trials.to_dict("records")}
        for trial_id in sorted(set(res.steps.trial_id) | set(ended)):
            if ended.get(trial_id) is None and not t.has_child(trial_id):
                continue  # no name or config known without its trials row: it reruns on --resume
            counts["runs"] += 1
            counts["points"] += mirror_trial(t, res, trial_id, ended.get(trial_id), meta["profile"])
        outcome = (meta.get("runs") or [{}])[-1].get("outcome")
        t.finish_study({"completed": "FINISHED", "trials_failed": "FINISHED"}.get(outcome, "KILLED"))
    return counts


def mirror_trial(t: MlflowTracker, res, trial_id: str, row: dict | None, profile: str) -> int:
    """Make ``trial_id``'s child run hold what the record holds (``res``: :func:`eeray.results.load`): every point
    once, and, for a trial that ended (``row``: its ``trials`` row), its final metrics, artifacts and status; a
    trial that never ended is KILLED. Idempotent. Returns the points written."""
    steps = res.steps[res.steps.trial_id == trial_id].to_dict("records")
    diag = res.diagnostics[res.diagnostics.trial_id == trial_id].to_dict("records")
    if row is None:  # rows of a trial that never ended (interrupted): mirrored, its run KILLED
        run_id = t.children()[trial_id]
    else:
        cfg = {k[len(_CFG):]: v for k, v in row.items() if k.startswith(_CFG)}
        run_id = t.child(trial_id, row["trial_name"], cfg,
                         {"eeray.dataset": cfg["data.name"], "mlflow.source.git.commit": row["git_commit"],
                          "eeray.profile": profile, "eeray.ee": str(cfg["ee.enabled"])})
    points = t.log_points(run_id, metric_points(steps, diag))
    if row is None:
        if t.run_status(run_id) == "RUNNING":
            t.client.set_terminated(run_id, status="KILLED")
        return points
    summary = {k: v for k, v in row.items() if not k.startswith(_CFG)}
    if row["status"] == "failed":
        t.set_tags(run_id, {"eeray.failure_reason": str(row.get("failure_reason"))})
    t.finish_trial(run_id, STATUS_TO_MLFLOW[row["status"]], summary,
                   {"config.json": cfg, "summary.json": json.loads(json.dumps(summary, default=str))})
    return points


def finish_ended_runs(t: MlflowTracker, results_dir: str | Path, study: str, profile: str) -> int:
    """Resume: complete the child runs of trials the record holds as ended but whose run a killed driver left
    RUNNING (killed between a trial's ``trials`` row and its MLflow close; a resume never runs such a trial
    again, so nothing else would close it). Returns how many were completed."""
    running = [i for i, run_id in t.children().items() if t.run_status(run_id) == "RUNNING"]
    if not running:
        return 0
    res = load(results_dir, study)
    ended = {r["trial_id"]: r for r in res.trials.to_dict("records")}
    done = [i for i in running if i in ended]
    for trial_id in done:
        mirror_trial(t, res, trial_id, ended[trial_id], profile)
    return len(done)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eeray.mlflow_sync", description=__doc__.split("\n\n")[0])
    p.add_argument("results_dir")
    p.add_argument("--study", required=True)
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else <results_dir>/mlflow.db")
    args = p.parse_args(argv)
    if not (Path(args.results_dir) / args.study / EXECUTION_FILE).is_file():
        print(f"error: no execution of study '{args.study}' under {args.results_dir}", file=sys.stderr)
        return 2
    try:
        counts = sync(args.results_dir, args.study, args.tracking_uri)
    except StudyLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"mlflow_sync {args.study}: {counts['runs']} runs checked, {counts['points']} metric points added")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
