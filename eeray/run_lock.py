"""One driver per study results directory.

Two drivers writing the same Parquet dataset and MLflow parent would duplicate trials under new ids and
overwrite ``execution.json``. The driver holds an exclusive ``fcntl.flock`` on ``<study dir>/.eeray.lock`` for
as long as it runs; the kernel releases it when the process ends in any way (SIGKILL and crashes included), so
a stale lock can never block a later run: taking it over needs no guesswork about dead pids. The file also names
the holder (pid, host, start time) so a refused driver can say who is live.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = ".eeray.lock"


class StudyLocked(RuntimeError):
    """Another driver holds this study directory."""


class StudyLock:
    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / LOCK_FILE
        self._fd: int | None = None
        self.previous: dict | None = None  # the holder recorded by an earlier driver that ended without releasing

    def acquire(self) -> "StudyLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
                   if holder else "a process that has not written its name yet")
            raise StudyLocked(f"a run of this study is live in {self.path.parent}: {who}. One driver per results "
                              f"directory: wait for it to finish, or stop it (Ctrl-C, or kill {holder.get('pid', '')}) "
                              f"and then continue it with --resume") from None
        self.previous = _read(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty file: nobody holds it
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
