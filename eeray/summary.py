"""The summary a study prints when its run ends: the trials by outcome, the study's own table (``summary.csv``),
and where the record, the MLflow view and the report are, each command on a line of its own to paste."""
from __future__ import annotations

from pathlib import Path

from eeray import commands
from eeray.mlflow_mirror import classic_view_url, ui_command, view_key
from eeray.results import load
from eeray.study import Study


def print_summary(study: Study, results_dir: Path, uri: str, wall: float, recorder, unfinished: int,
                  cluster: str) -> None:
    import pandas as pd

    res = load(results_dir, study.name)
    trials = res.trials
    cols = ["trial_name", "status", *study.summary_columns, "train_seconds"]  # validated before Ray started
    interrupted = len(set(recorder.attempts) - set(trials.trial_id))  # started in this run, did not end
    with pd.option_context("display.max_rows", 200, "display.width", 160, "display.max_colwidth", 60):
        counts = [f"{(trials.status == s).sum()} {s}" for s in ("completed", "failed")]
        if (trials.status == "stopped").any():
            counts.append(f"{(trials.status == 'stopped').sum()} stopped early")
        if unfinished:  # both counts, zeros included: what a resume will continue and what it will start
            counts += [f"{interrupted} interrupted", f"{unfinished - interrupted} never ran"]
        total = len(trials) + unfinished
        print(f"\n{study.name}: {total} trials ({', '.join(counts)}) in {wall:.0f} s on {cluster}")
        if len(trials):
            print(trials.sort_values("trial_name")[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for _, r in trials[trials.status == "failed"].iterrows():
            print(f"  failed: {r.trial_name}: {str(r.failure_reason).splitlines()[0]}")
        for name, why in study.skipped_datasets.items():  # absent, skipped at the user's request
            print(f"  skipped dataset {name} (--present-datasets-only): {why}")
    if len(trials) and not unfinished and (trials.status == "failed").all():
        # the summary's tables below come out empty: said here, so an empty table does not read as "no answer yet"
        print(f"\nEvery trial failed ({len(trials)} of {total}; each one's reason is above): no completed trial "
              "to summarize")
    if study.summarize is not None and not unfinished:
        table = study.summarize(res)
        if len(table):
            table.to_csv(results_dir / study.name / "summary.csv", index=False)
            with pd.option_context("display.width", 160):
                print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    # every command below is printed on a line of its own, as it is to be pasted: it names this interpreter by
    # absolute path, so it works in a fresh shell without an activated environment (eeray.commands)
    print(f"\nParquet: {results_dir / study.name}   (eeray.results.load({str(results_dir)!r}, {study.name!r}))")
    if recorder.mirror.offline:
        print(f"MLflow:  INCOMPLETE — {recorder.mirror.offline}. Complete it from Parquet with:\n"
              f"    {recorder.mirror.sync_command}")
    else:
        # the address of the study's runs in the Model-training view, its own line to paste (MLflow's front page
        # opens on the GenAI overview in a browser that never chose otherwise): the printed UI command's port
        server = "http://127.0.0.1:5000" if ui_command(uri) else uri
        view = recorder.mirror.call("reading the experiment's id", lambda t: classic_view_url(
            server, t.experiment_id, view_key(t.execution))) or server
        if ui_command(uri):
            print("MLflow:  serve the UI with the command below, then open the address under it (the study's runs; "
                  "its chart view plots what the study varies against final_train_error):\n"
                  f"    {ui_command(uri)}\n    {view}")
        else:
            print(f"MLflow:  open this address in a browser (on a cluster through an SSH tunnel: docs/cluster.md):"
                  f"\n    {view}")
    if not unfinished and len(trials):
        print(f"Report:  {results_dir / study.name / 'report' / 'index.html'}, written by:\n"
              f"    {commands.report(results_dir, study.name)}")
    if unfinished:
        print(f"\nInterrupted: {unfinished} of {total} trials did not finish. Continue with:\n    "
              f"{commands.resume()}")

