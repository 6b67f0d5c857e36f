"""Where a trunk's branch-point states wait for its branches (:mod:`eeray.branching` plans the trees).

:class:`BranchStateStore` keeps them on disk or in an S3 bucket (what the Ray runner uses, eeray.raytune.branches),
:class:`MemoryStateStore` in one process (:mod:`eeray.branch_runner`), and :class:`OfferingSink` hands a trunk's
branch-point states to a store while its rows go on to the trial's own sink.
"""
from __future__ import annotations

from eeray.branching import BRANCH_POINT


class BranchStateStore:
    """Branch-point states, ``<root>/<tree_id>/<step>.pt``, kept by eeray itself (Tune rotates its own checkpoints
    away: ``num_to_keep``) until every branch at that step has started. ``root`` is a directory (writes are
    atomic: a temporary file renamed) or an ``s3://`` URI (objects are written whole, in one upload: an object
    store never shows half of one). Loading runs no code: tensors, numbers and strings only. ``fs``: the S3 file
    system to use for an ``s3://`` root (default: the one this process's environment describes)."""

    def __init__(self, root: str, fs=None):
        import os

        self.root = root
        self._fs, self._base = _object_store(root, fs)
        if self._fs is None:
            os.makedirs(self._base, exist_ok=True)

    def _path(self, tree: str, step: int) -> str:
        return self.path(tree, f"{step:09d}.pt")

    def path(self, tree: str, name: str) -> str:
        """Where ``<root>/<tree>/<name>`` is on this store's file system (a local path, or ``bucket/key``)."""
        return "/".join((self._base, tree, name))

    def put(self, tree: str, step: int, state: dict) -> None:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.write(self._path(tree, step), buf.getvalue())

    def has(self, tree: str, step: int) -> bool:
        return self.exists(self._path(tree, step))

    def get(self, tree: str, step: int) -> dict:
        import io

        import torch

        return torch.load(io.BytesIO(self.read(self._path(tree, step))), weights_only=True, map_location="cpu")

    def discard(self, tree: str, step: int) -> None:
        if self.has(tree, step):
            self.delete(self._path(tree, step))

    # the file operations, for the states and for :mod:`eeray.raytune.branches`' marker files
    def write(self, path: str, data: bytes) -> None:
        import os

        if self._fs is not None:
            with self._fs.open_output_stream(path) as f:
                f.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)

    def exists(self, path: str) -> bool:
        import os

        if self._fs is None:
            return os.path.exists(path)
        import pyarrow.fs as pafs

        return self._fs.get_file_info(path).type == pafs.FileType.File

    def read(self, path: str) -> bytes:
        if self._fs is None:
            with open(path, "rb") as f:
                return f.read()
        with self._fs.open_input_stream(path) as f:
            return f.readall()

    def delete(self, path: str) -> None:
        import os

        os.remove(path) if self._fs is None else self._fs.delete_file(path)


def _object_store(root: str, fs=None):
    """(pyarrow file system, path on it) for an ``s3://`` root; (None, its path) for a local directory."""
    if not root.startswith("s3://"):
        return None, root.removeprefix("file://").rstrip("/") or "/"
    from eeray.raytune import s3  # pyarrow only: no Ray

    return fs or s3.filesystem(s3.split(root)[0]), s3.fs_path(root)


class MemoryStateStore:
    """:class:`BranchStateStore`'s interface in memory (one process, nothing to resume)."""

    def __init__(self):
        self._states: dict[tuple[str, int], dict] = {}

    def put(self, tree: str, step: int, state: dict) -> None:
        self._states[tree, step] = state

    def has(self, tree: str, step: int) -> bool:
        return (tree, step) in self._states

    def get(self, tree: str, step: int) -> dict:
        return self._states[tree, step]

    def discard(self, tree: str, step: int) -> None:
        self._states.pop((tree, step), None)


class OfferingSink:
    """Forwards everything to ``inner``; branch-point states also go to ``store`` under ``tree``."""

    def __init__(self, inner, store: BranchStateStore, tree: str):
        self.inner, self.store, self.tree = inner, store, tree

    def emit(self, table: str, row) -> None:
        self.inner.emit(table, row)

    def checkpoint(self, make_state, *, step: int, epoch: int, reason: str) -> None:
        if reason == BRANCH_POINT:
            self.store.put(self.tree, step, make_state())
        else:
            self.inner.checkpoint(make_state, step=step, epoch=epoch, reason=reason)
