"""Parquet results: the source of truth (docs/architecture.md principle 6).

Layout under ``<results_dir>/<study>/``::

    trials/dataset=<d>/<trial_id>.parquet                               one row per trial
    steps/dataset=<d>/phase=<p>/<trial_id>-<chunk>.parquet              one row per evaluation point
    diagnostics/dataset=<d>/phase=<p>/<trial_id>-<chunk>.parquet        one row per alignment report
    safety/dataset=<d>/kind=<k>/<trial_id>-<chunk>.parquet              Assumption 4 / Lemma 5 reports

Every file has an explicit Arrow schema (``SCHEMAS``) with the schema version in its metadata, so files
written by different trials concatenate. Rows arrive in chunks that end at a trial checkpoint, and a chunk's
file name is its (trial, checkpoint) key: a trial resumed from a checkpoint re-emits exactly the chunks after
it under the same names, so a rewrite replaces, never duplicates (exactly-once rows under retries and resume).
Writes go to a temporary file and are renamed into place: no half-written files.

Branches (``eeray.branching``) are stored once: a branch's files hold only its rows from its ``branch_step`` on;
the rows before it are its trunk's (``trunk_trial_id`` in ``trials``). :func:`load` puts the trunk's rows with
``step < branch_step`` back under the branch's ``trial_id``, so every trial's history reads as if it ran alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from eeray.config import TrialConfig
from eeray.errors import is_number

SCHEMA_VERSION = 2  # 2: diagnostics ``N`` became ``gram_size`` (readers that ignore case saw two columns ``n``)
SCHEMA_VERSION_KEY = b"eeray_schema_version"  # every file's Parquet metadata: the version it was written under
# columns renamed since version 1, per table: old name -> new name. :func:`load` (and compaction) read a file
# written under an older version with its columns renamed, so old records load under today's names.
RENAMED = {"diagnostics": {"N": "gram_size"}}
EMPTY_FILE = "part-empty.parquet"  # a table with no rows: no rows, the table's schema (outside readers' globs)
COMPACTED_PREFIX = "part-"  # a compacted file (eeray.compaction); never a trial id (Tune's are hex)
# the chunk of a trial's failure report: its rows after its last checkpoint (a trial continued from that checkpoint
# re-emits them under their own chunks, and this one is then dropped: raytune/callback.py)
FAILED_CHUNK = "999999999-failed"
COVERS_KEY = b"eeray_covers"  # a compacted file's metadata: the names of the files whose rows it holds
PARQUET_TABLES = ("trials", "steps", "diagnostics", "safety")  # the datasets under <results_dir>/<study>/
PARTITIONS = {"trials": ("dataset",), "steps": ("dataset", "phase"), "diagnostics": ("dataset", "phase"),
              "safety": ("dataset", "kind")}
ROW_ORDER = {"trials": ("trial_id",), "steps": ("trial_id", "step", "phase"),
             "diagnostics": ("trial_id", "step", "phase"), "safety": ("trial_id", "step", "phase")}

_F, _I, _S, _B = pa.float64(), pa.int64(), pa.string(), pa.bool_()
_KEY = [("study", _S), ("trial_id", _S)]

STEPS = pa.schema(_KEY + [
    ("step", _I), ("epoch", _F), ("phase", _S), ("train_loss", _F), ("train_error", _F), ("test_loss", _F),
    ("test_error", _F), ("batch_loss", _F), ("lr", _F), ("norm_body", _F), ("norm_hidden", _F), ("norm_head", _F),
    ("explore_seconds", _F), ("exploit_seconds", _F), ("eval_seconds", _F)])

SUMMARY_FIELDS = [
    ("trial_name", _S), ("status", _S), ("failure_reason", _S), ("attempts", _I),
    ("n", _I), ("m_y", _I), ("loss", _S), ("d", _I), ("steps_per_epoch", _I), ("total_steps", _I), ("tau_step", _I),
    ("final_train_loss", _F), ("final_train_error", _F), ("final_test_loss", _F), ("final_test_error", _F),
    ("explore_seconds", _F), ("exploit_seconds", _F), ("eval_seconds", _F), ("setup_seconds", _F),
    ("train_seconds", _F), ("diag_seconds", _F), ("device", _S), ("hardware", _S), ("torch", _S),
    ("perturb_seed", _I), ("surgery_mode", _S), ("m_bar", _I), ("m_H_minus_1", _I), ("m_H", _I), ("m_H_source", _S),
    ("d_body", _I), ("d_hidden", _I), ("d_head", _I), ("trainable", _I), ("perturb_epsilon", _F), ("perturb_d", _I),
    ("perturb_norm", _F), ("perturb_expected_norm", _F), ("final_Q_T", _I), ("diag_evaluations", _I),
    ("final_residual", _F), ("final_aligned", _B), ("last_Q_T_increment_step", _I),
    ("assumption4_certified", _B), ("lemma5_full_rank", _B), ("git_commit", _S),
    ("frozen_body_graphs", _S), ("train_step_graphs", _S),
    ("memory_format", _S),
    # where it ran (JSON lists, one entry per attempt; docs/cluster.md): the node (IP, and Ray's node id) of each
    # attempt, the nodes of its diagnostic actors, and why each attempt before the last ended (a lost node, ...)
    ("attempt_nodes", _S), ("attempt_node_ids", _S), ("diag_actor_nodes", _S), ("attempt_errors", _S), ("diag_failed_evaluations", _I),
    # branching (eeray.branching): a branch's trunk and the step it left it at; null for a trial run from scratch
    ("trunk_trial_id", _S), ("branch_step", _I),
    # how many rows the trial itself wrote to each table (counted by the trial, carried in its checkpoints): what
    # lets a --resume tell a record file deleted by hand from a trial that wrote nothing there (eeray.record_check)
    *((f"{t}_rows", _I) for t in ("steps", "diagnostics", "safety"))]


def _arrow_type(tp: Any) -> pa.DataType:
    """Arrow type of a config dataclass field; non-scalars (tuples, mappings, nested configs) become JSON text."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return _arrow_type(args[0]) if len(args) == 1 else _S
    return {bool: _B, int: _I, float: _F, str: _S}.get(tp, _S)


def config_fields() -> list[tuple[str, pa.DataType]]:
    """One column per dotted config key, typed from the dataclass annotations (float fields that users write
    as integers, e.g. ``ee.tau = 2000`` steps, stay float64)."""
    out = [("seed", _I)]
    hints = {cls: typing.get_type_hints(cls) for cls in _config_classes()}
    for sec_name, sec_cls in typing.get_type_hints(TrialConfig).items():
        if sec_name == "seed":
            continue
        for f in dataclasses.fields(sec_cls):
            tp = hints[sec_cls][f.name]
            if f.name == "exploit_optim":
                from eeray.config import OptimConfig

                out += [(f"{sec_name}.exploit_optim.{g.name}", _arrow_type(hints[OptimConfig][g.name]))
                        for g in dataclasses.fields(OptimConfig)]
            else:
                out.append((f"{sec_name}.{f.name}", _arrow_type(tp)))
    return out


def _config_classes():
    from eeray import config as c

    return (c.DataConfig, c.ModelConfig, c.OptimConfig, c.EEConfig, c.TrainConfig, c.DiagConfig)


TRIALS = pa.schema(_KEY + SUMMARY_FIELDS + [(f"cfg.{k}", t) for k, t in config_fields()])


def _dataclass_fields(cls, skip: tuple[str, ...] = (), prefix: str = "") -> list[tuple[str, pa.DataType]]:
    hints = typing.get_type_hints(cls)
    return [(prefix + f.name, _arrow_type(hints[f.name])) for f in dataclasses.fields(cls) if f.name not in skip]


def _diagnostics_schema() -> pa.Schema:
    """Columns of ``AlignmentReport.to_record()``: the report's scalars, e(κ) per κ, the Theorem-3 certificate
    and what the tracker adds (Q_T, ‖ΔM‖)."""
    from eeray.diagnostics.alignment import AlignmentReport
    from eeray.diagnostics.certificate import Certificate
    from eeray.diagnostics.spectral import KAPPAS

    fields = _KEY + [("phase", _S)] + _dataclass_fields(AlignmentReport, ("energy", "certificate", "extra"))
    # (``gram_size`` is n·m_y, the paper's N: a column named ``N`` beside ``n`` is one column to DuckDB)
    fields += [(f"energy_{k:.0e}", _F) for k in KAPPAS]
    fields += _dataclass_fields(Certificate, prefix="cert_")
    fields += [("q_t", _I), ("q_evaluations", _I), ("delta_m_ref_step", _I), ("delta_m_fro_sq", _F),
               ("delta_m_spec_sq", _F), ("delta_m_fro_sq_stderr", _F), ("schedule", _S), ("diag_seconds", _F),
               ("evaluation_attempts", _I), ("evaluation_error", _S)]  # actor pool: retried or failed (why)
    return pa.schema(fields)


def _safety_schema() -> pa.Schema:
    """One row per certificate: kind 'assumption4' (head null) or 'lemma5' (one row per head j)."""
    from eeray.diagnostics.hadamard import GramRankReport

    return pa.schema(_KEY + [("step", _I), ("phase", _S), ("kind", _S), ("head", _I), ("m_H", _I),
                             ("m_H_minus_1", _I), ("seed", _I)] + _dataclass_fields(GramRankReport))


def schema(table: str) -> pa.Schema:
    """The explicit Arrow schema of ``table`` (partition columns included), with the schema version."""
    base = {"trials": lambda: TRIALS, "steps": lambda: STEPS, "diagnostics": _diagnostics_schema,
            "safety": _safety_schema}[table]()
    if "dataset" not in base.names:
        base = base.append(pa.field("dataset", _S))
    return base.with_metadata({SCHEMA_VERSION_KEY.decode(): str(SCHEMA_VERSION), "eeray_table": table})


def upgrade(table: str, data: pa.Table) -> pa.Table:
    """``data`` (rows of ``table`` as some file stored them) under today's column names: a column an older schema
    version named otherwise (:data:`RENAMED`) is renamed, or merged into today's column where a read gave both
    (an Arrow dataset read with a schema holding both names: null in the files that lack one)."""
    for old, new in RENAMED.get(table, {}).items():
        if old not in data.column_names:
            continue
        values = data.column(old)
        if new in data.column_names:
            import pyarrow.compute as pc

            data = data.set_column(data.column_names.index(new), data.field(new),
                                   pc.coalesce(data.column(new), values)).drop_columns([old])
        else:
            data = data.set_column(data.column_names.index(old), pa.field(new, values.type), values)
        meta = data.schema.metadata
        if meta and SCHEMA_VERSION_KEY in meta:  # its columns are today's now (a partition file says so)
            data = data.replace_schema_metadata({**meta, SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()})
    return data


def _with_old_names(table: str, sch: pa.Schema) -> pa.Schema:
    """``sch`` plus the columns older schema versions had under other names, so a dataset read sees them too."""
    for old, new in RENAMED.get(table, {}).items():
        sch = sch.append(pa.field(old, sch.field(new).type))
    return sch


# --------------------------------------------------------------------------- writing
def _plain(value: Any, typ: pa.DataType) -> Any:
    if value is None or (typ != _F and isinstance(value, float) and value != value):
        return None  # NaN means "not computed" in a record; in an int/bool/string column that is null
    if typ == _S and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, default=str)
    if typ == _F and is_number(value, finite=False):
        return float(value)
    if typ == _I and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def to_table(table: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) -> an Arrow table of the table's schema. Unknown columns are an error (schema drift is a
    bug, not something to drop silently); missing columns are null."""
    sch = schema(table)
    rows = list(rows)
    names = set(sch.names)
    for r in rows:
        unknown = set(r) - names
        if unknown:
            raise ValueError(f"table '{table}' has no columns {sorted(unknown)}; add them to eeray.results "
                             f"(schema version {SCHEMA_VERSION}) or stop emitting them")
    cols = {f.name: [_plain(r.get(f.name), f.type) for r in rows] for f in sch}
    return pa.Table.from_pydict(cols, schema=sch)


class ResultsWriter:
    """Writes one study's Parquet dataset. Safe to call again with the same chunk: the file is replaced."""

    def __init__(self, results_dir: str | os.PathLike, study: str):
        self.root = Path(results_dir) / study
        self.study = study
        self.root.mkdir(parents=True, exist_ok=True)

    def write_chunk(self, table: str, trial_id: str, chunk: str, rows: list[Mapping[str, Any]],
                    dataset: str) -> list[Path]:
        """Rows of one trial between two checkpoints; split by the table's partition keys."""
        if table not in ("steps", "diagnostics", "safety"):
            raise ValueError(f"write_chunk takes steps, diagnostics or safety; got {table!r}")
        groups: dict[tuple, list] = {}
        second = PARTITIONS[table][1]
        for r in rows:
            full = {"study": self.study, "trial_id": trial_id, "dataset": dataset, **r}
            groups.setdefault((dataset, full.get(second)), []).append(full)
        paths = []
        for (ds, part), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
            path = self.root / table / f"dataset={ds}" / f"{second}={part}" / f"{trial_id}-{chunk}.parquet"
            paths.append(self._write(path, to_table(table, [{k: v for k, v in g.items() if k != second}
                                                            for g in group])))
        return paths

    def write_trial(self, trial_id: str, row: Mapping[str, Any], dataset: str) -> Path:
        full = {"study": self.study, "trial_id": trial_id, **row}
        path = self.root / "trials" / f"dataset={dataset}" / f"{trial_id}.parquet"
        return self._write(path, to_table("trials", [full]))

    def write_empty_tables(self, dataset: str) -> list[Path]:
        """For each table with no rows on disk, an empty file with the table's schema (:data:`EMPTY_FILE`), so a
        glob over the table (DuckDB's ``read_parquet``, polars' ``scan_parquet``) reads zero rows with every column
        instead of failing on a folder that does not exist. It goes in a partition directory (``dataset`` and the
        first value of the second key) because hive-partitioned readers refuse files with differing partition
        keys. It holds no rows, so row counts (``<table>_rows``, :mod:`eeray.record_check`) are unchanged; its
        name starts with ``part-``, so it is never taken for a trial's chunk (deleted, compacted or counted)."""
        written = []
        for table in PARQUET_TABLES:
            base = self.root / table
            if base.exists() and any(not p.name.startswith((".", "_")) for p in base.rglob("*.parquet")):
                continue
            second = {"steps": "phase=explore", "diagnostics": "phase=explore", "safety": "kind=assumption4"}
            path = base / f"dataset={dataset}" / second.get(table, "") / EMPTY_FILE
            written.append(self._write(path, schema(table).empty_table()))
        return written

    def chunk_files(self) -> Iterable[tuple[str, Path]]:
        """(trial id, path) of every chunk file (``<trial_id>-<chunk>.parquet``) of steps, diagnostics, safety."""
        for table in PARQUET_TABLES[1:]:
            for path in (self.root / table).rglob("*.parquet"):
                if not path.name.startswith((".", "_", COMPACTED_PREFIX)):
                    yield path.name.split("-", 1)[0], path

    def loose_files(self) -> Iterable[tuple[str, Path]]:
        """(trial id, path) of every file of one trial (chunks, and ``trials`` rows): those not compacted."""
        yield from self.chunk_files()
        for path in (self.root / "trials").rglob("*.parquet"):
            if not path.name.startswith((".", "_", COMPACTED_PREFIX)):
                yield path.stem, path

    def drop_chunk(self, trial_id: str, chunk: str) -> list[Path]:
        """Delete one chunk of one trial, in every table and partition; returns the files deleted."""
        gone = []
        for table in PARQUET_TABLES[1:]:
            for path in (self.root / table).glob(f"*/*/{trial_id}-{chunk}.parquet"):
                path.unlink()
                gone.append(path)
        return gone

    def delete_chunks_except(self, keep: set[str]) -> dict[str, int]:
        """Delete the chunk files of every trial not in ``keep``; returns trial id -> files deleted."""
        deleted: dict[str, int] = {}
        for trial_id, path in list(self.chunk_files()):
            if trial_id not in keep:
                path.unlink()
                deleted[trial_id] = deleted.get(trial_id, 0) + 1
        return deleted

    def _write(self, path: Path, table: pa.Table) -> Path:
        # partition values live in the directory names; to_table gave the table every schema column
        table = table.drop_columns(list(PARTITIONS[table.schema.metadata[b"eeray_table"].decode()]))
        return write_whole(path, lambda tmp: pq.write_table(table, tmp))


class RecordWriteError(OSError):
    """A file of the study's record could not be written (a full disk, a read-only or vanished mount). Nothing of
    it is on disk (:func:`write_whole`), so the record holds every row written before it; the driver stops, names
    the file and prints the command that continues (docs/reference.md, Exit status)."""

    def __init__(self, path: Path, cause: OSError):
        # the system's words for the errno: pyarrow's own message wraps them ("Error writing bytes to file. ...")
        super().__init__(cause.errno, f"{os.strerror(cause.errno) if cause.errno else cause}: {path}")
        self.path, self.cause = path, cause


def write_whole(path: Path, write) -> Path:
    """``write(tmp)`` into a hidden file beside ``path``, then rename it to ``path``: readers see the old file or
    the new one, never a part. A write that fails leaves nothing behind (no part file, no space taken) and raises
    :class:`RecordWriteError` naming ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)  # atomic on POSIX
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RecordWriteError(path, exc) from exc
    except BaseException:  # Ctrl-C inside the write: no part file either
        tmp.unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------- reading
@dataclasses.dataclass
class Results:
    trials: "Any"  # pandas.DataFrame
    steps: "Any"
    diagnostics: "Any"
    safety: "Any"


class RecordFileError(ValueError):
    """Files of the record that cannot be read (truncated, overwritten with garbage): ``bad`` maps each path to
    what the Parquet reader said. A table read without them would be silently smaller, so reading stops here."""

    def __init__(self, table: str, bad: Mapping[str, str]):
        self.table, self.bad = table, dict(bad)
        lines = "\n".join(f"  {path}: {why}" for path, why in self.bad.items())
        super().__init__(f"the '{table}' table has {len(self.bad)} unreadable Parquet file(s) (truncated or "
                         f"overwritten?):\n{lines}\nThe record is not complete without them: restore them from a "
                         "copy of the results directory, or run the study again with --fresh (deletes this "
                         "execution) or into another --results-dir")


def covered(directory: Path) -> set[str]:
    """Names of the files in ``directory`` that a partition file there covers (to be skipped by readers): the
    partition file's Parquet metadata names them (``COVERS_KEY``; written by :mod:`eeray.compaction`)."""
    out: set[str] = set()
    for part in directory.glob(f"{COMPACTED_PREFIX}*.parquet"):
        meta = pq.read_schema(part).metadata or {}
        out.update(json.loads(meta.get(COVERS_KEY, b"[]")))
    return out


def record_files(results_dir: str | os.PathLike, study: str, table: str) -> list[str]:
    """The files that hold the table's rows, each row in exactly one: every visible ``.parquet`` file but those a
    partition file covers (compaction). A partition file whose metadata cannot be read is a
    :class:`RecordFileError` naming it (which files it covers is unknown, so no reading can go on)."""
    path = Path(results_dir) / study / table
    if not path.exists():
        return []
    files = []
    for directory in [path, *(d for d in path.rglob("*") if d.is_dir())]:
        if any(p.startswith((".", "_")) for p in directory.relative_to(path).parts):
            continue
        names = {f.name for f in directory.glob("*.parquet") if not f.name.startswith((".", "_"))}
        if any(n.startswith(COMPACTED_PREFIX) for n in names):  # a row is read from one file only (compaction)
            try:
                names -= covered(directory)
            except (pa.ArrowInvalid, OSError) as exc:
                raise RecordFileError(table, _unreadable(str(directory / n) for n in sorted(names)
                                                         if n.startswith(COMPACTED_PREFIX)) or
                                      {str(directory): str(exc)}) from exc
        files += [str(directory / n) for n in sorted(names)]
    return files


def _unreadable(files: Iterable[str]) -> dict[str, str]:
    """Path -> the reader's error, for each of ``files`` that cannot be read whole (footer and every page)."""
    bad = {}
    for f in files:
        try:
            pq.read_table(f)
        except (pa.ArrowException, OSError) as exc:
            why = (str(exc).splitlines() or [""])[0].replace(f"Could not open Parquet input source '{f}': ", "")
            bad[f] = f"{type(exc).__name__}: {why}".rstrip(": ")  # the path is the key: not said twice
    return bad


def _dataset(results_dir: str | os.PathLike, study: str, table: str) -> "pads.Dataset | None":
    """The table's files as one Arrow dataset (None when nothing was written). Every visible file is read: a
    corrupt one is an error naming it, never a silently smaller table."""
    files = record_files(results_dir, study, table)
    if not files:
        return None
    sch = schema(table)
    parts = pads.partitioning(pa.schema([sch.field(k) for k in PARTITIONS[table]]), flavor="hive")
    # files of an older schema version may hold a column under its old name: read it too (upgrade renames it)
    return pads.dataset(files, schema=_with_old_names(table, sch), format="parquet", partitioning=parts,
                        partition_base_dir=str(Path(results_dir) / study / table))


def _read(ds: "pads.Dataset", table: str, columns=None, filter=None) -> pa.Table:
    if columns is not None:  # a renamed column may be stored under its old name in older files
        columns = list(columns)
        columns += [old for old, new in RENAMED.get(table, {}).items() if new in columns and old not in columns]
    try:
        return upgrade(table, ds.to_table(columns=columns, filter=filter))
    except (pa.ArrowException, OSError) as exc:
        # which file: each is read whole (this is the error path only); the dataset's error names none of them
        bad = _unreadable(ds.files)
        if not bad:
            raise  # every file reads: the request itself was wrong (a column the schema lacks), not the record
        raise RecordFileError(table, bad) from exc


def read_whole(results_dir: str | os.PathLike, study: str, table: str) -> pa.Table:
    """Every column of every row of ``table`` as stored (no branch prefixes): reading it all is what shows a file
    whose footer is intact but whose pages are not (a read of a few columns would skip them)."""
    ds = _dataset(results_dir, study, table)
    return schema(table).empty_table() if ds is None else _read(ds, table)


def load_table(results_dir: str | os.PathLike, study: str, table: str, columns: Iterable[str] | None = None):
    """One table as a pandas DataFrame (empty, with the schema's columns, when nothing was written);
    ``columns``: only these."""
    sch = schema(table)
    ds = _dataset(results_dir, study, table)
    if ds is None:
        df = sch.empty_table().to_pandas()
        return df if columns is None else df[list(columns)]
    df = _read(ds, table, columns).to_pandas()
    order = [c for c in ROW_ORDER[table] if c in df.columns]
    return df.sort_values(order, kind="stable").reset_index(drop=True) if order else df


def load_trial_rows(results_dir: str | os.PathLike, study: str, table: str, trial_id: str):
    """The rows of one trial in one table (a branch's trunk prefix), sorted like :func:`load_table`."""
    ds = _dataset(results_dir, study, table)
    if ds is None:
        return schema(table).empty_table().to_pandas()
    df = _read(ds, table, filter=pads.field("trial_id") == trial_id).to_pandas()
    return df.sort_values(list(ROW_ORDER[table]), kind="stable").reset_index(drop=True)


def columns(frame, names: Iterable[str]):
    """``frame[names]``, where asking for a column the frame does not have is an error naming it and the valid
    ones (a summary must not silently drop a field the schema has renamed or never had)."""
    names = list(names)
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"no column(s) {missing} in this table; valid: {sorted(map(str, frame.columns))} "
                       f"(the schema is in eeray.results, schema version {SCHEMA_VERSION})")
    return frame[names]


def load(results_dir: str | os.PathLike, study: str, *, expand_branches: bool = True) -> Results:
    """``eeray.results.load("results", "width_sweep")`` -> trials, steps, diagnostics, safety DataFrames.

    ``expand_branches``: each branch's rows include its shared prefix (its trunk's rows before ``branch_step``,
    under the branch's ``trial_id``), as if it had run alone; False: the rows as stored, each prefix once."""
    if not (Path(results_dir) / study).is_dir():
        have = sorted(p.name for p in Path(results_dir).glob("*") if p.is_dir()) if Path(results_dir).is_dir() else []
        raise FileNotFoundError(f"no results for study '{study}' under {results_dir}; studies there: {have}")
    trials = load_table(results_dir, study, "trials")
    tables = {t: load_table(results_dir, study, t) for t in PARQUET_TABLES[1:]}
    if expand_branches:
        tables = {t: with_prefixes(trials, rows, ROW_ORDER[t]) for t, rows in tables.items()}
    return Results(trials, *tables.values())


def with_prefixes(trials, rows, order=("trial_id", "step", "phase")):
    """``rows`` (steps, diagnostics or safety) plus, for every branch in ``trials``, its trunk's rows with
    ``step < branch_step`` relabelled with the branch's trial_id. A branch whose trunk has no rows is an error."""
    import pandas as pd

    branches = trials[trials["trunk_trial_id"].notna()]
    if branches.empty:
        return rows
    parts = [rows]
    for trial_id, trunk, step in zip(branches["trial_id"], branches["trunk_trial_id"], branches["branch_step"]):
        if not (trials["trial_id"] == trunk).any():
            raise ValueError(f"branch {trial_id!r} names trunk {trunk!r}, which is not among the study's trials")
        prefix = rows[(rows["trial_id"] == trunk) & (rows["step"] < step)].copy()
        prefix["trial_id"] = trial_id
        parts.append(prefix)
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(list(order), kind="stable").reset_index(drop=True)
