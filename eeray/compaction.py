"""Compaction of a study's Parquet record: the small files of ended trials become a few partition files.

Every trial leaves one ``trials`` file and one file per chunk (a checkpoint's rows) per table and partition: a
study of thousands of trials would leave tens of thousands of small files, and reading them is what makes
:func:`eeray.results.load` slow. The driver compacts as it goes: every ``COMPACT_EVERY`` trials recorded as
completed or stopped — trials that never write again (``--resume`` never runs them again, see
:mod:`eeray.raytune.search_state`) — their files of each partition directory are written as one
``part-<id>.parquet`` in that directory; at the end of a driver's run the rest. The cost is the rows compacted
(each row once), so it is flat per trial, and a study keeps O(trials / COMPACT_EVERY) files per partition.

Exactly once, under a kill at any instant:

1. the partition file is written under a hidden temporary name (which no reader lists), then renamed into place;
   its Parquet metadata names the files it covers (``eeray_covers``);
2. then the covered files are deleted.

Between 1 and 2 a row is in two visible files; :func:`eeray.results.covered` gives what a reader must skip, and
:func:`eeray.results.load` skips every file a partition file covers, so it counts each row once at every instant.
A kill between 1 and 2 leaves covered files behind; the next driver (and :func:`finish`) deletes them first
(:func:`drop_covered`), after which any Parquet reader sees each row once. Files that are not covered are never
deleted, and a covered file is deleted only after the partition file holding its rows is in place.
"""
from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from eeray.results import COMPACTED_PREFIX, COVERS_KEY, PARQUET_TABLES, covered, upgrade, write_whole

COMPACT_EVERY = 250  # ended trials per compaction: ~12 partition files per partition at 3,000 trials

def drop_covered(root: Path) -> int:
    """Delete the files a partition file covers (left by a kill between its rename and their deletion)."""
    n = 0
    for directory in _partition_dirs(root):
        for name in covered(directory):
            if (directory / name).exists():
                (directory / name).unlink()
                n += 1
    return n


def compact(files: Iterable[Path]) -> int:
    """Write each partition directory's ``files`` as one partition file there, then delete them; returns the
    number of files compacted."""
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for f in files:
        if f.exists():
            by_dir[f.parent].append(f)
    n = 0
    for directory, group in sorted(by_dir.items()):
        group = sorted(group)
        # a file of an older schema version (a resumed older execution) gets today's column names: a partition
        # file never holds one column under two names
        tables = [upgrade(_table_of(f), pq.read_table(f)) for f in group]
        # files written before a column was added (a resumed older execution) lack it: it is null there, and
        # every column any file has is kept (promote), so nothing is dropped and no cast can fail
        table = pa.concat_tables(tables, promote_options="default")
        meta = dict(tables[0].schema.metadata or {})
        meta[COVERS_KEY] = json.dumps([f.name for f in group]).encode()
        table = table.replace_schema_metadata(meta)
        name = f"{COMPACTED_PREFIX}{uuid.uuid4().hex[:12]}.parquet"
        # from here load skips the covered files
        write_whole(directory / name, lambda tmp: pq.write_table(table, tmp))
        for f in group:
            f.unlink()
        n += len(group)
    return n


def _table_of(path: Path) -> str:
    """The table a record file belongs to: the directory under the study named like one of the tables."""
    return next(p for p in reversed(path.parts) if p in PARQUET_TABLES)


def _partition_dirs(root: Path) -> Iterable[Path]:
    for table in PARQUET_TABLES:
        base = root / table
        if base.exists():
            yield from (d for d in base.rglob("*") if d.is_dir() and not d.name.startswith((".", "_")))
