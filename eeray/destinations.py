"""Can the driver write where it was told to? Checked before Ray starts, so a destination that cannot take the
record is one refusal naming it (exit 2), not a traceback halfway through (a lock file that cannot be opened, Tune
failing to create its experiment directory) nor minutes of retries (an MLflow store SQLite cannot open).

Writability is probed by creating a file, not by ``os.access``: root passes ``access`` on a directory it may not
write (a read-only mount says EROFS only to a write), and a probe asks exactly what the driver is about to do.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from eeray.mlflow_store import sqlite_file

# SQLite's unix VFS opens paths shorter than 512 bytes and appends "-journal" (8 bytes) to the database's own:
# measured here, a mlflow.db path of 504 bytes opens and one of 505 does not ("unable to open database file"),
# which MLflow retries for about 100 s before the mirror gives up
SQLITE_MAX_PATH = 504
# the deepest path the driver writes below a study directory: a chunk's temporary file,
# diagnostics/dataset=<name>/phase=explore/.<trial id>-<9-digit step>-<reason>.parquet.<pid>.tmp, is under 120
# characters for the registry's dataset names; Tune's checkpoints (_tune/<segment>/<trial id>/checkpoint_<n>/...)
# are shorter
DEEPEST_BELOW_STUDY = 160


def unwritable(path: str | os.PathLike) -> str | None:
    """None if a file can be created in ``path`` (where it does not exist yet: in its nearest existing ancestor,
    where the driver would create it); else why not, naming the directory."""
    p = Path(path).absolute()
    existing = next((q for q in (p, *p.parents) if q.exists()), None)
    if existing is None or not existing.is_dir():
        return f"{existing or p} is not a directory"
    try:
        fd, probe = tempfile.mkstemp(prefix=".eeray-write-probe-", dir=existing)
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror})"
    os.close(fd)
    os.unlink(probe)
    return None


def too_long(study_dir: str | os.PathLike, tracking_uri: str) -> str | None:
    """Why paths under ``study_dir`` (and the embedded MLflow store, when ``tracking_uri`` is one) are too long for
    the file system or for SQLite; None when they fit."""
    study_dir = Path(study_dir).absolute()
    db = sqlite_file(tracking_uri)
    if db is not None:
        if len(os.fsencode(db)) > SQLITE_MAX_PATH:
            return (f"the embedded MLflow store {db} would be a path of {len(os.fsencode(db))} bytes, and SQLite "
                    f"opens at most {SQLITE_MAX_PATH}: choose a --results-dir of at most "
                    f"{SQLITE_MAX_PATH - len('/mlflow.db')} bytes (as an absolute path), or set MLFLOW_TRACKING_URI "
                    "to a tracking server")
    existing = next(q for q in (study_dir, *study_dir.parents) if q.exists())
    limit = os.pathconf(existing, "PC_PATH_MAX")
    need = len(os.fsencode(str(study_dir))) + DEEPEST_BELOW_STUDY
    if need > limit:
        return (f"{study_dir} is {len(os.fsencode(str(study_dir)))} bytes long; the record's files below it need "
                f"up to {DEEPEST_BELOW_STUDY} more, and this file system takes paths of at most {limit}: choose a "
                "shorter --results-dir")
    return None
