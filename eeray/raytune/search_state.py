"""Tune's searcher state agrees with its experiment state before ``Tuner.restore`` reads them.

Tune saves three files per snapshot into its staging directory — the experiment state (the trials),
``search_gen_state-*`` (how many trials were created, the concurrency limiter's live trials) and
``searcher-state-*`` (eeray's searcher: which points were suggested) — and uploads them one by one, while it
may already be writing the next snapshot. A driver killed between two uploads, or an upload that read one file
a snapshot later than another, leaves them disagreeing (seen in CI: a one-trial experiment state with a searcher
that had suggested both points, so every ``--resume`` waited for a trial that no longer existed and exited 130).

The experiment state is what Tune restores trials from, so it is the truth: :func:`reconcile` rewrites the newest
searcher and search-generator states so that a point counts as suggested exactly when a stored trial has its
config, the trial counter is the number of stored trials, and the limiter's live trials are the stored trials
that will run again. A point suggested after the experiment state was saved is suggested again; a stored trial
the searcher had not yet recorded is not suggested twice.

Tune restores the trials from storage but the searcher from the driver's staging directory, after copying
storage's state files into it. On a cluster that outlives the driver (``--address``) a killed driver's staging
directory is still there, holding state files it never uploaded, and the resumed driver would restore its
searcher from those: :func:`drop_staged_state` removes them first (storage has everything Tune needs).

Tune's state is saved every few seconds, not at every event (its size grows with the study, so a save per event
would make the driver's cost per trial grow with the study); eeray's Parquet record is written at every event. A
killed driver therefore leaves a state that lags the record by up to one save period. :func:`apply_record` brings
the state up to the record before anything else reads it: a trial the record holds as completed or stopped is
TERMINATED (Tune would otherwise run it again); a point whose trial ended after the save is not suggested again
(the searchers' ``reconcile`` takes the recorded names); and the trial ids that neither the state nor the record
knows (started after the save, not ended: their point runs again under a new id) are returned, so that their
partial rows and MLflow run are removed before the point runs again.
"""
from __future__ import annotations

import glob
import json
import os
import pickle
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow.fs as pafs
import ray.cloudpickle as cloudpickle
from ray.tune.utils.serialization import _loads_with_cloudpickle  # the decoder Tune's own restore uses

from eeray.raytune.safe_pickle import UnsafeState, load_searcher_state

_STATE_FILES = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json")
_KEPT = {"TERMINATED"}  # every other status runs again on --resume (resume_unfinished, resume_errored)
# a trial the record holds with one of these ended for good; "failed" is left to Tune (an errored trial runs again
# on --resume, and one that failed after the save is continued from its checkpoint and fails the same way again)
RECORDED_DONE = ("completed", "stopped")


@dataclass(frozen=True)
class StoredTrial:
    trial_id: str
    config: dict
    done: bool  # TERMINATED: restored as it is, never reported to the searcher again


def plain(value: Any) -> Any:
    """A config as JSON gives it back (tuples become lists), so a point and a stored config compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def matches(point: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """The stored trial's config is this point's (a grid point's keys are a subset of its trials' configs)."""
    point, config = plain(dict(point)), plain(dict(config))
    return all(k in config and config[k] == v for k, v in point.items())


def apply_record(experiment: str, fs: pafs.FileSystem | None, ended: Mapping[str, str]) -> tuple[list[str], set[str]]:
    """Bring the newest experiment state up to eeray's record (``ended``: trial id -> recorded status of every
    trial with a ``trials`` row). Returns (one line per repair, the ids of the trials the state holds)."""
    if fs is None:
        fs, experiment = pafs.FileSystem.from_uri(experiment)
    path = _newest(fs, experiment, "experiment_state-", ".json")
    if path is None:
        return [], set()
    state = json.loads(_read(fs, path))  # plain JSON: Tune's pickled fallbacks are strings inside it
    ids, ended_late = set(), []
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        ids.add(trial["trial_id"])
        if ended.get(trial["trial_id"]) in RECORDED_DONE and trial["status"] not in _KEPT:
            trial["status"] = "TERMINATED"
            entry[0] = json.dumps(trial, indent=2)
            ended_late.append(trial["trial_id"])
    if not ended_late:
        return [], ids
    _write(fs, path, json.dumps(state).encode())
    return [f"{len(ended_late)} trial(s) ended after Tune's last save of {os.path.basename(path)}: TERMINATED there, "
            "as in the record"], ids


def reconcile(experiment: str, fs: pafs.FileSystem | None, searcher_cls, recorded: set[str] = frozenset()) -> list[str]:
    """Make the newest searcher states of the Tune experiment directory agree with its newest experiment state;
    returns one line per repair (empty: they agreed, or there is nothing to restore). ``searcher_cls`` is the
    eeray searcher the experiment was made with; its ``reconcile(trials, recorded)`` updates its own pickled
    fields. ``recorded``: the names of the trials with a ``trials`` row (ended), which are never suggested again."""
    if fs is None:
        fs, experiment = pafs.FileSystem.from_uri(experiment)
    paths = [_newest(fs, experiment, *pattern.split("*")) for pattern in _STATE_FILES]
    if None in paths:
        return []
    state_file, searcher_file, gen_file = paths
    names = [os.path.basename(p) for p in paths]
    trials = stored_trials(_read(fs, state_file))
    searcher = searcher_cls.__new__(searcher_cls)
    searcher.__dict__.update(load_searcher_state(_read(fs, searcher_file), searcher_file))  # runs nothing it names
    repairs = [r for r in [searcher.reconcile(trials, recorded)] if r]
    gen = cloudpickle.loads(_read(fs, gen_file))
    if gen["counter"] != len(trials):
        repairs.append(f"Tune's trial counter was {gen['counter']}, the experiment state holds {len(trials)} trial(s)")
    live = {t.trial_id for t in trials if not t.done}
    limiter = gen.get("name:ConcurrencyLimiter")  # present when max_concurrent_trials is set
    if limiter is not None and limiter["live_trials"] != live:
        repairs.append(f"the concurrency limiter counted {len(limiter['live_trials'])} live trial(s), "
                       f"{len(live)} will run")
    if not repairs:
        return []
    gen["counter"], gen["finished"] = len(trials), False  # a finished searcher answers FINISHED again by itself
    if limiter is not None:
        limiter["live_trials"], limiter["num_unfinished_live_trials"] = live, len(live)
    fields = {k: v for k, v in searcher._saved_fields().items() if k != "_index"}  # _point_of's look-up table
    _write(fs, searcher_file, pickle.dumps(fields))  # as _PicklingSearcher.save writes it
    _write(fs, gen_file, cloudpickle.dumps(gen))
    return [f"{names[0]} and {names[1]} disagree: {r}" for r in repairs]


def relocate(experiment: str, fs: pafs.FileSystem | None) -> str | None:
    """Point the trials Tune has yet to create at this experiment directory, wherever it was first written; returns
    the old location (None: it was here).

    ``Tuner.restore`` moves the trials it restores to the directory it restores from (``_restore_trials``), but the
    trials its search generator creates afterwards take their storage from the ``Experiment`` pickled in
    ``search_gen_state-*``, which keeps the absolute path of the directory that saved it. In a copied results
    directory (``cp -a A B``, ``--resume --results-dir B``) those trials checkpointed into A, and with A moved away
    failed for good ("Unable to set up cluster storage", ``storage_fs_path=…/A/…``). The same three fields Tune
    updates for each restored trial are updated here."""
    if fs is None:
        fs, experiment = pafs.FileSystem.from_uri(experiment)
    gen_file = _newest(fs, experiment, "search_gen_state-", ".json")
    if gen_file is None:
        return None
    gen = cloudpickle.loads(_read(fs, gen_file))
    exp = gen.get("experiment")
    here, name = os.path.split(experiment.rstrip("/"))
    contexts = [c for c in (getattr(exp, "storage", None), getattr(exp, "spec", {}).get("storage")) if c is not None]
    old = {c.storage_fs_path for c in contexts if (c.storage_fs_path, c.experiment_dir_name) != (here, name)}
    if not old:
        return None
    for c in contexts:
        c.storage_filesystem, c.storage_fs_path, c.experiment_dir_name = fs, here, name
    _write(fs, gen_file, cloudpickle.dumps(gen))
    return ", ".join(sorted(old))


def unsafe_searcher_state(experiment: str, fs: pafs.FileSystem | None) -> str | None:
    """Why the newest searcher state of a Tune experiment directory cannot be loaded safely (None: it can, or
    there is none): checked before Ray starts, so a crafted or foreign file is a refusal naming it, and neither
    eeray nor Tune's restore reads it."""
    if fs is None:
        fs, experiment = pafs.FileSystem.from_uri(experiment)
    try:
        path = _newest(fs, experiment, "searcher-state-", ".pkl")
    except FileNotFoundError:
        return None  # the segment never started: nothing to restore
    if path is None:
        return None
    try:
        load_searcher_state(_read(fs, path), path)
    except UnsafeState as exc:
        return str(exc)
    return None


def drop_staged_state(experiment: str, fs: pafs.FileSystem | None) -> list[str]:
    """Remove the state files of this experiment from this driver's staging directory (the one Tune's restore
    will use: named by the first stored trial's start, ``TuneController.restore_from_dir``); returns them. Ray
    must be connected: the directory is in its session."""
    from ray.train.constants import _get_ray_train_session_dir

    if fs is None:
        fs, experiment = pafs.FileSystem.from_uri(experiment)
    state = _newest(fs, experiment, "experiment_state-", ".json")
    if state is None:
        return []
    trials = _loads_with_cloudpickle(_read(fs, state))["trial_data"]
    if not trials:
        return []
    storage = _loads_with_cloudpickle(trials[0][0])["storage"]
    staging = os.path.join(_get_ray_train_session_dir(), storage._timestamp, storage.experiment_dir_name,
                           "driver_artifacts")
    dropped = sorted(p for pattern in _STATE_FILES for p in glob.glob(os.path.join(staging, pattern)))
    for p in dropped:
        os.unlink(p)
    return dropped


def stored_trials(experiment_state: bytes) -> list[StoredTrial]:
    trials = []
    for trial_json, _run_metadata in _loads_with_cloudpickle(experiment_state)["trial_data"]:
        t = _loads_with_cloudpickle(trial_json)
        trials.append(StoredTrial(t["trial_id"], t["config"], t["status"] in _KEPT))
    return trials


def _newest(fs: pafs.FileSystem, directory: str, prefix: str, suffix: str) -> str | None:
    """The file Tune restores of a kind: the greatest name."""
    found = [i.path for i in fs.get_file_info(pafs.FileSelector(directory)) if i.type == pafs.FileType.File
             and i.base_name.startswith(prefix) and i.base_name.endswith(suffix)]
    return max(found, default=None)


def _read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.readall()


def _write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:  # eeray's local storage: a temporary renamed over the file
        f.write(data)
