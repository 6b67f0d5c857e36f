"""Tune's storage on a local or mounted file system: every file replaced atomically, and an experiment state
that does not parse never replaces one that does.

Tune keeps its experiment state (the file ``Tuner.restore`` reads) in a staging directory and uploads it, its
searcher and callback states and the trials' checkpoints with ``pyarrow.fs.copy_files``, in a background
thread. Two things can leave a truncated ``experiment_state-*.json`` on storage, after which no ``--resume`` can
restore the execution ("Failed to restore the run state ... JSONDecodeError"; seen in CI):

* the copy truncates the destination and then writes it, so a driver killed during it leaves half a file;
* Tune rewrites the staging file in place (truncate, then write) at every save (every >= 10 s; every loop step
  for Optuna studies), also while the previous upload is still reading it, so the upload itself can carry an empty or truncated copy.

Through :func:`tune_storage` every file is written beside its destination under a hidden temporary name and
renamed over it once complete, and an experiment state is renamed only if it parses as JSON (otherwise the copy
is dropped and the next upload, a loop step later, brings a whole one). A kill leaves at most the hidden
temporary file of the write it interrupted, which nothing reads. An object store replaces an object atomically
already, so ``s3://`` (the S3 file system the environment describes, :mod:`eeray.raytune.s3`) only needs the
staging race closed: :class:`CheckedStateS3Handler` uploads an experiment state only if it parses. Other URIs
(``gs://``) go to Ray's own file system, race included; a state cut short there is refused by
:func:`unreadable_state` before a resume.

Like eeray's Parquet writes, a replace is not fsynced: it survives a killed process, not a power cut of the
machine that holds the storage.
"""
from __future__ import annotations

import functools
import glob
import io
import json
import os
import threading

import pyarrow as pa
import pyarrow.fs as pafs

from eeray import faults
from eeray.raytune import s3


def local_path(storage: str) -> str | None:
    """The file-system path a storage names (a path, or ``file://`` + path); None for an object-store URI."""
    if "://" in storage and not storage.startswith("file://"):
        return None
    return storage.removeprefix("file://")


def tune_storage(storage: str) -> tuple[str, pafs.FileSystem | None]:
    """(path, filesystem) for Tune's ``storage_path`` / ``storage_filesystem``: a local path (or ``file://``) goes
    through :class:`AtomicLocalHandler`, ``s3://bucket/key`` is ``bucket/key`` on :func:`eeray.raytune.s3.
    filesystem`; any other URI is left to Ray's own file system."""
    path = local_path(storage)
    if path is not None:
        return os.path.abspath(path), pafs.PyFileSystem(AtomicLocalHandler())
    if s3.is_s3(storage):
        return s3.fs_path(storage), pafs.PyFileSystem(CheckedStateS3Handler(s3.filesystem(s3.split(storage)[0])))
    return storage, None


def unreadable_state(experiment: str) -> str | None:
    """Why the newest experiment state of a Tune experiment directory (local or ``s3://``) cannot be restored
    (None: it can, or there is none). The same file Tune would choose: the greatest name."""
    path = local_path(experiment)
    if path is None and not s3.is_s3(experiment):
        return None  # another object store: Tune's restore reports it
    if path is not None:
        states = sorted(glob.glob(os.path.join(path, "experiment_state-*.json")))
        read = _read_local
    else:
        root, fs = tune_storage(experiment)
        states = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
                        if i.type == pafs.FileType.File and i.base_name.startswith("experiment_state-")
                        and i.base_name.endswith(".json"))
        read = functools.partial(_read_fs, fs)
    if not states:
        return None
    try:
        why = _json_text_error(read(states[-1]))
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc}"
    shown = states[-1] if path is not None else f"s3://{states[-1]}"
    return f"{shown} is unreadable ({why})" if why else None


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_fs(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.readall()


class _Delegating(pafs.FileSystemHandler):
    """A file system that passes everything but its writes to ``fs``; subclasses decide how a file is written
    (and how the handler pickles: Tune ships the storage's file system to every trial, on every node)."""

    def __init__(self, fs: pafs.FileSystem):
        self._fs = fs

    def __ne__(self, other):
        return not self == other

    def normalize_path(self, path):
        return self._fs.normalize_path(path)

    def get_file_info(self, paths):
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self._fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise PermissionError("eeray's Tune storage never empties the root of its file system")

    def delete_file(self, path):
        self._fs.delete_file(path)

    def move(self, src, dest):
        self._fs.move(src, dest)  # a rename on a local or mounted file system: atomic already

    def open_input_stream(self, path):
        return self._fs.open_input_stream(path)

    def open_input_file(self, path):
        return self._fs.open_input_file(path)


class AtomicLocalHandler(_Delegating):
    """pyarrow's local file system, except that an output stream is a temporary file renamed over its path when
    it is closed (discarded instead when a write failed). Pickles to a fresh handler: Tune ships the storage's
    file system to every trial, on every node."""

    def __init__(self):
        super().__init__(pafs.LocalFileSystem())

    def __reduce__(self):
        return AtomicLocalHandler, ()

    def __eq__(self, other):
        return isinstance(other, AtomicLocalHandler)

    def get_type_name(self):
        return "eeray-atomic-local"

    def copy_file(self, src, dest):
        with self._fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_ReplacingFile(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path)  # Tune never appends; an append cannot be made atomic this way


class _ReplacingFile:
    """A write-only file that becomes ``path`` when closed, if every write succeeded."""

    def __init__(self, path: str):
        head, tail = os.path.split(path)
        self.path = path
        self.tmp = os.path.join(head, f".{tail}.{os.getpid()}-{threading.get_ident()}.tmp")
        self._file = open(self.tmp, "wb")
        self._ok = True
        self._state = os.path.basename(path).startswith("experiment_state-")  # the file Tuner.restore reads

    @property
    def closed(self) -> bool:
        return self._file.closed

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._file.tell()

    def write(self, data) -> int:
        try:
            n = self._file.write(data)
        except BaseException:
            self._ok = False
            raise
        if self._state:
            faults.reached("tune_state")  # half of Tune's experiment state is written, the old one still stands
        return n

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        # a state that does not parse is an upload that read Tune's staging file while Tune was rewriting it
        if self._ok and (not self._state or _json_error(self.tmp) is None):
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


class CheckedStateS3Handler(_Delegating):
    """An S3 file system whose experiment-state uploads are kept in memory and sent, whole, only if they parse
    as JSON (one that does not is an upload that read Tune's staging file mid-rewrite: dropped, the next loop
    step brings a whole one). Everything else goes to the S3 file system as it is. Pickles with it (its endpoint
    included) to every trial. Through this handler Ray's ``copy_files`` uploads with threads (Ray turns them off
    only for a plain ``S3FileSystem``, for apache/arrow#15233, a deadlock fixed in pyarrow 19):
    tests/test_s3_storage.py checks that a threaded upload of more files than threads completes."""

    def __reduce__(self):
        return CheckedStateS3Handler, (self._fs,)

    def __eq__(self, other):
        return isinstance(other, CheckedStateS3Handler) and self._fs.equals(other._fs)

    def get_type_name(self):
        return "eeray-checked-s3"

    def copy_file(self, src, dest):
        self._fs.copy_file(src, dest)  # on the server: an object is copied whole

    def open_output_stream(self, path, metadata):
        if os.path.basename(path).startswith("experiment_state-"):
            return pa.PythonFile(_CheckedUpload(self._fs, path), mode="w")
        return self._fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self._fs.open_append_stream(path, metadata=metadata)  # S3 refuses: objects are not appended to


class _CheckedUpload:
    """A write-only file kept in memory and uploaded as one object when closed, if it parses as JSON."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        self.fs, self.path, self._buf = fs, path, io.BytesIO()

    @property
    def closed(self) -> bool:
        return self._buf.closed

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._buf.tell()

    def write(self, data) -> int:
        n = self._buf.write(data)
        faults.reached("tune_state")  # half of Tune's experiment state is written, the old one still stands
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._buf.closed:
            return
        data = self._buf.getvalue()
        self._buf.close()
        if _json_text_error(data) is None:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)


def _json_error(path: str) -> str | None:
    """Why the file does not parse as JSON (None: it does)."""
    return _json_text_error(_read_local(path))


def _json_text_error(data: bytes) -> str | None:
    """Why the bytes do not parse as JSON (None: they do)."""
    try:
        json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError included
        return f"{type(exc).__name__}: {exc}"
    return None
