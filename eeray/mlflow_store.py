"""eeray's embedded MLflow store (``<results>/mlflow.db``, artifacts under ``<results>/mlartifacts``): made once by
whichever driver comes first, and kept inside its results directory when that directory is copied or moved.

**Made once** (:func:`creating`). MLflow creates a SQLite store's schema on first use by running its migrations, with
no lock: two studies started at the same moment on a fresh results directory both ran them, and one failed
(``duplicate column name: step``) and turned its mirror off. The first use of a SQLite store is held under an
``flock`` on ``<db>.lock`` beside it, so the second driver finds the schema made.

**Kept inside its directory** (:func:`relocate`). MLflow's SQLite store keeps absolute artifact URIs: each
experiment's ``artifact_location`` and each run's ``artifact_uri``. After ``cp -a A B`` and ``--resume --results-dir
B`` they still named A, so the resumed study wrote its MLflow artifacts into A (and recreated A when A had been moved
away), and the UI served from B read A's files. MLflow has no API that changes either (an experiment's artifact
location is fixed when it is created), so when eeray opens its *embedded* store from a directory other than the one
that created it, it rewrites those two columns, every experiment and run that pointed at the old root, in one SQLite
transaction. A tracking server's store belongs to the server and is never touched.

This is MLflow's own schema (``experiments.artifact_location``, ``runs.artifact_uri``, unchanged since MLflow 1.x),
the one place eeray writes it directly; tests/test_faults.py's copied-directory test reads the result back through
``MlflowClient``, so a schema change fails that test rather than passing silently.
"""
from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from pathlib import Path


def sqlite_file(tracking_uri: str) -> str | None:
    """The file of a local SQLite tracking URI (``sqlite:////abs/mlflow.db`` -> ``/abs/mlflow.db``), else None."""
    return tracking_uri.removeprefix("sqlite:///") if tracking_uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def creating(tracking_uri: str):
    """Hold the lock under which a local SQLite store is first used (its schema made); other URIs: no lock."""
    file = sqlite_file(tracking_uri)
    if file is None:
        yield
        return
    db = Path(file)
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, and by the kernel if this process dies
        yield


def embedded_store(tracking_uri: str, artifact_root: str | Path | None) -> Path | None:
    """The SQLite file of ``tracking_uri`` when it is eeray's embedded store beside ``artifact_root``, else None."""
    file = sqlite_file(tracking_uri)
    if artifact_root is None or file is None:
        return None
    db = Path(file)
    return db if db.parent == Path(artifact_root).resolve().parent else None


def relocate(db: Path, experiment_id: str, root_uri: str) -> str | None:
    """Point the artifacts of experiment ``experiment_id`` — and of every experiment that shared its old root, with
    their runs — at ``root_uri``; returns the old root, or None when it already was ``root_uri``."""
    con = sqlite3.connect(db, timeout=60)
    try:
        with con:  # one transaction: every URI moves, or none
            row = con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = ?",
                              (int(experiment_id),)).fetchone()
            if row is None or row[0] is None or row[0].rstrip("/") == root_uri.rstrip("/"):
                return None
            old = row[0].rstrip("/")
            con.execute("UPDATE experiments SET artifact_location = ? WHERE rtrim(artifact_location, '/') = ?",
                        (root_uri, old))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE substr(artifact_uri, 1, ?) = ?", (root_uri.rstrip("/"), len(old) + 1, len(old) + 1,
                                                                  old + "/"))
        return old
    finally:
        con.close()
