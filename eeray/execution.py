"""One execution of a study and its results directory, without Ray: the study directory (made by eeray, marked, one
path component), the refusals judged from the files before Ray starts, and ``<results>/<study>/execution.json``.

An execution is recorded in ``execution.json``: its id, profile, git commit, the expanded definition
(:mod:`eeray.identity`) and its segments. A segment is one Tune experiment over a list of trials: the first holds
the study as started, each ``--extend`` adds one with exactly the added trials. Paths in the file are relative to
the study directory (a copied results directory resumes where it is), except a ``--storage`` the user passed. One
driver at a time holds the directory (:mod:`eeray.run_lock`); :mod:`eeray.raytune.tuner` runs the segments.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from eeray import destinations, identity, record_check
from eeray.identity import EXECUTION_FILE
from eeray.raytune.atomic_storage import local_path  # pyarrow only: no Ray
from eeray.results import write_whole
from eeray.run_lock import LOCK_FILE
from eeray.study import Study

MARKER_FILE = ".eeray-study"  # written into every study directory eeray creates: --fresh deletes only those
TUNE_DIR = "_tune"


class Refused(Exception):
    """A refusal before any work: printed as one 'error:' line, exit status 2."""


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_study_dir(results_dir: Path, study_dir: Path) -> None:
    name = study_dir.name
    if study_dir.parent != results_dir or name in ("", ".", "..") or "/" in name:
        raise Refused(f"study name {name!r} must be one path component (letters, digits, '-', '_', '.')")


def check_destination(given: str, study_dir: Path, tracking_uri: str) -> None:
    """The study directory takes files (its lock is the first), and the paths below it fit: refused here, naming
    it, rather than a traceback from the lock or MLflow retrying a SQLite file it cannot open."""
    why = destinations.unwritable(study_dir)
    if why:
        raise Refused(f"--results-dir {given}: {why}; the study's lock, Parquet record, Tune state and MLflow store "
                       "are written there: make it writable or choose another --results-dir")
    why = destinations.too_long(study_dir, tracking_uri)
    if why:
        raise Refused(f"--results-dir {given}: {why}")


def make_study_dir(study_dir: Path, name: str) -> None:
    marker = study_dir / MARKER_FILE
    if not study_dir.exists():
        study_dir.mkdir(parents=True)
        marker.write_text(json.dumps({"study": name}) + "\n")
    elif not marker.exists() and any(study_dir.iterdir()):
        raise Refused(f"{study_dir} exists and was not created by eeray (no {MARKER_FILE}): choose another "
                       f"--results-dir; nothing there is touched")


def open_execution(study: Study, profile: str, args, study_dir: Path, continuing: bool) -> tuple[dict, bool]:
    """The execution this run continues (checked against the study as it is now), or a new one; and whether it
    must be written (new, or extended) once Ray has accepted the driver."""
    exec_file = study_dir / EXECUTION_FILE
    preflight(args.storage or (json.loads(exec_file.read_text())["storage"] if continuing else None))
    current = identity.definition(study, profile)
    if args.fresh:
        delete_study_contents(study_dir, study.name)
    elif exec_file.exists() and not continuing:
        meta = json.loads(exec_file.read_text())
        raise Refused(f"{study_dir} holds an execution of '{study.name}' ({meta.get('execution')}, profile "
                       f"{meta.get('profile')}). Continue it with --resume, add new trials to it with --extend, or "
                       f"start over with --fresh (deletes it) or another --results-dir")
    if continuing:
        meta = json.loads(exec_file.read_text())
        diff = identity.compare(meta["definition"], current)
        if args.storage and args.storage != meta["storage"]:
            raise Refused(f"--storage {args.storage} differs from the execution's {meta['storage']}")
        if diff.only_added and args.extend:
            seg = {"name": f"tune-ext{len(meta['segments'])}", "trials": diff.added}
            meta["segments"].append(seg)
            meta["definition"], meta["fingerprint"] = current, identity.fingerprint(current)
            print(f"--extend: {len(diff.added)} trial(s) added to execution {meta['execution']}; the "
                  f"{len(meta['definition']['trials']) - len(diff.added)} recorded ones are kept as they are", flush=True)
        elif not diff.empty:
            choices = ("run it with the recorded definition (undo the edit), " +
                       ("add the new trials with --extend, " if diff.only_added else "") +
                       "or start a new execution with --fresh (deletes this one) or another --results-dir")
            raise Refused(f"the study differs from the execution recorded in {exec_file} "
                           f"({meta['execution']}):\n" + "\n".join(diff.lines()) + f"\nChoices: {choices}")
        # the record is what a resume trusts (a trial it holds as ended never runs again): a file of it unreadable
        # or gone would be rows silently missing at the end, so it refuses here, naming it (eeray.record_check)
        try:
            record_check.check(study_dir.parent, study.name)
        except record_check.IncompleteRecord as exc:
            raise Refused(f"{'--extend' if args.extend else '--resume'}: {exc}") from None
        return meta, diff.only_added and args.extend
    meta = {"study": study.name, "execution": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
            "profile": profile, "git_commit": git_commit(),
            "storage": args.storage or TUNE_DIR,  # relative to the study directory unless the user named one
            "fingerprint": identity.fingerprint(current), "definition": current,
            "segments": [{"name": "tune", "trials": list(current["trials"])}], "runs": []}
    return meta, True


def preflight(storage: str | None) -> None:
    """An ``s3://`` storage must take an object before anything is deleted (--fresh), written or started: a
    missing bucket, refused credentials or an unreachable endpoint is one refusal, not every trial failing. A
    path (NFS, a local directory) must take a file: a read-only one is one refusal, not Tune's traceback."""
    from eeray.raytune import s3

    if storage and s3.is_s3(storage):
        try:
            s3.check(storage)
        except s3.StorageError as exc:
            raise Refused(str(exc)) from None
    elif storage and storage != TUNE_DIR and local_path(storage) is not None:  # _tune: the study directory's
        why = destinations.unwritable(local_path(storage))
        if why:
            raise Refused(f"--storage {storage}: {why}; Tune's checkpoints and state are written there: make it "
                           "writable or choose another --storage")


def delete_study_contents(study_dir: Path, name: str) -> None:
    """--fresh: only a directory eeray created for this very study, and never the lock this driver holds."""
    marker = study_dir / MARKER_FILE
    try:
        owner = json.loads(marker.read_text()).get("study")
    except (OSError, ValueError):
        owner = None
    if owner != name:
        raise Refused(f"--fresh: {study_dir} was not created by eeray for study '{name}' (no {MARKER_FILE} naming "
                       f"it); nothing deleted")
    for entry in study_dir.iterdir():
        if entry.name in (MARKER_FILE, LOCK_FILE):
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def storage_of(study_dir: Path, meta: dict) -> str:
    """Where this execution's Tune experiments live: ``_tune`` inside the study directory, or, under a storage the
    user named (which other studies and executions may share), ``<storage>/<study>/<execution>``."""
    s = meta["storage"]
    if s == TUNE_DIR:
        return str(study_dir / s)
    return f"{s.rstrip('/')}/{meta['study']}/{meta['execution']}"


def write_execution(study_dir: Path, meta: dict) -> None:
    text = json.dumps(meta, indent=2, default=str)
    write_whole(study_dir / EXECUTION_FILE, lambda tmp: tmp.write_text(text))
