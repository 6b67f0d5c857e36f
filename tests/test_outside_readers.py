"""The record read by tools eeray did not write (issue 27, item 3): DuckDB and polars, running the queries of
docs/results-schema.md as written there, get what ``eeray.results.load`` gets, on a branched study run through the
CLI (each branch's prefix stored once, under its trunk); no table has two columns that differ only in case (DuckDB
would merge them: ``SELECT N`` returned ``n``); a table with no rows reads by glob with its schema; a record
written under schema version 1 (``N``) still loads, under today's name ``gram_size``."""
from __future__ import annotations

import math
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eeray import branch_runner, compaction, record_check, results
from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, TrainConfig, TrialConfig
from eeray.records import MemorySink
from eeray.results import PARQUET_TABLES, ROW_ORDER, ResultsWriter, load, load_table, schema

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results-schema.md"
STUDY = "tests/studies/branching_study.py"
SORT = {t: [*ROW_ORDER[t], *(["head"] if t == "safety" else [])] for t in PARQUET_TABLES}  # a row's full key


def doc_block(language: str) -> str:
    """The one ```<language> block of the page's 'Reading without eeray' section: the test runs what the page says."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Reading without eeray"):]
    section = section[:section.index("\n## ", 1)]
    (block,) = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    return block


def at(block: str, results_dir: Path) -> str:
    """The page's query with its example study directory (``results/branching``) replaced by ``results_dir``'s."""
    assert "results/branching" in block
    return block.replace("results/branching", (results_dir / "branching").as_posix())


def duckdb_tables(results_dir: Path) -> dict[str, pd.DataFrame]:
    con = duckdb.connect()
    con.execute(at(doc_block("sql"), results_dir))
    def arrow(query):  # DuckDB 2 names it to_arrow_table, 1.x fetch_arrow_table; Arrow, then pandas as load does
        result = con.sql(query)
        return getattr(result, "to_arrow_table", None) or result.fetch_arrow_table

    out = {t: arrow(f"SELECT * FROM {t}")() for t in [*PARQUET_TABLES, "steps_stored"]}
    return {t: v.to_pandas() for t, v in out.items()}


def polars_tables(results_dir: Path) -> dict[str, pd.DataFrame]:
    scope: dict = {}
    exec(compile(at(doc_block("python"), results_dir), str(DOC), "exec"), scope)  # noqa: S102 (the page's code)
    return {t: scope[t].to_pandas(use_pyarrow_extension_array=False) for t in PARQUET_TABLES}


def _value(v):
    """One cell, compared exactly: None for null or NaN (the record's two spellings of "not computed"), plain
    Python scalars otherwise (numpy's, Arrow's and pandas' integer and float types compare equal by value)."""
    if v is None or v is pd.NA or (isinstance(v, float | np.floating) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
        return int(v)  # an int64 column with nulls reads as float64 in pandas: the value is what counts
    return v


def rows(frame: pd.DataFrame, table: str) -> list[tuple]:
    frame = frame.sort_values(SORT[table], kind="stable").reset_index(drop=True)
    cols = sorted(frame.columns)
    return [tuple(_value(v) for v in row) for row in frame[cols].itertuples(index=False, name=None)]


def assert_same(got: pd.DataFrame, want: pd.DataFrame, table: str, reader: str) -> None:
    assert sorted(got.columns) == sorted(want.columns), (reader, table, set(got.columns) ^ set(want.columns))
    assert len(got) == len(want), (reader, table, len(got), len(want))
    g, w = rows(got, table), rows(want, table)
    for i, (a, b) in enumerate(zip(g, w)):
        assert a == b, (reader, table, i, [(c, x, y) for c, x, y in zip(sorted(got.columns), a, b) if x != y])


@pytest.fixture(scope="module")
def branched(smoke):
    """The branching study's --smoke run (shared with tests/test_branching_runner.py: read only)."""
    results_dir, stdout = smoke(STUDY)
    assert "branching: 1 trunk(s) explore once for 3 branch(es)" in stdout
    return results_dir


def test_no_table_has_two_columns_that_differ_only_in_case():
    for table in PARQUET_TABLES:
        names = schema(table).names
        lower = [n.lower() for n in names]
        assert len(set(lower)) == len(lower), (table, [n for n in names if lower.count(n.lower()) > 1])


@pytest.mark.slow
@pytest.mark.ray
def test_duckdb_views_equal_load_on_a_branched_study(branched):
    want = load(branched, "branching")
    stored = load(branched, "branching", expand_branches=False)
    got = duckdb_tables(branched)
    # the stored rows miss the branches' prefixes (what the views are for): the comparison below can tell
    assert len(got["steps_stored"]) == len(stored.steps) < len(want.steps)
    # the counts the page quotes for this study ("47 against 69") are this study's
    quoted = re.search(r"branching_study.py --smoke`, (\d+) against (\d+)\)", DOC.read_text(encoding="utf-8"))
    assert quoted and (len(stored.steps), len(want.steps)) == tuple(map(int, quoted.groups()))
    for table in PARQUET_TABLES:
        assert len(getattr(want, table)), table  # every table has rows: an empty comparison proves nothing
        assert_same(got[table], getattr(want, table), table, "duckdb")
    # n and gram_size (N = n·m_y) are two columns with their own values to DuckDB, not one merged column
    con = duckdb.connect()
    con.execute(at(doc_block("sql"), branched))
    pairs = con.execute("SELECT trial_id, step, phase, n, m_y, gram_size FROM diagnostics").df()
    assert len(pairs) and (pairs.gram_size == pairs.n * pairs.m_y).all()
    names = [r[0] for r in con.execute("DESCRIBE diagnostics").fetchall()]
    assert "gram_size" in names and "n" in names and not any(n in ("N", "N_1") for n in names), names
    w = want.diagnostics.sort_values(SORT["diagnostics"], kind="stable")
    g = pairs.sort_values(SORT["diagnostics"], kind="stable")
    assert g.n.tolist() == w.n.tolist() and g.gram_size.tolist() == w.gram_size.tolist()


@pytest.mark.slow
@pytest.mark.ray
def test_polars_queries_equal_load_on_a_branched_study(branched):
    want = load(branched, "branching")
    got = polars_tables(branched)
    assert len(pl.scan_parquet(f"{branched}/branching/steps/**/*.parquet", hive_partitioning=True).collect()) \
        < len(want.steps)  # read directly, the branches lack their prefixes
    for table in PARQUET_TABLES:
        assert len(getattr(want, table)), table
        assert_same(got[table], getattr(want, table), table, "polars")
    assert "N" not in got["diagnostics"].columns
    assert got["diagnostics"].sort_values(SORT["diagnostics"]).gram_size.tolist() == \
        want.diagnostics.sort_values(SORT["diagnostics"]).gram_size.tolist()


def small(**diag) -> TrialConfig:
    return TrialConfig(data=DataConfig(name="sine", n_train=16, n_test=8), model=ModelConfig(arch="fcnet", fc_width=8),
                       ee=EEConfig(tau=0.5, m_H=4), train=TrainConfig(epochs=2, batch_size=8, eval_every=1),
                       diag=DiagConfig(**diag))


def test_a_table_with_no_rows_reads_by_glob_with_its_schema(tmp_path):
    """No diagnostics and no safety rows (both off): each is one empty file with its schema, which every reader's
    glob reads as zero rows with every column, while load, the record check and compaction are unchanged."""
    configs = [small(alignment=False, lemma5=False)]
    sinks = [MemorySink()]
    ran = branch_runner.run_branched(configs, lambda i: sinks[i])
    branch_runner.write_results(str(tmp_path), "branching", ["only"], configs, ran, sinks)
    study = tmp_path / "branching"
    for table in ("diagnostics", "safety"):
        files = list((study / table).rglob("*.parquet"))
        assert [f.name for f in files] == [results.EMPTY_FILE], files
        names = set(schema(table).names)
        glob = f"{study}/{table}/**/*.parquet"
        got = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)").df()
        assert len(got) == 0 and set(got.columns) == names, (table, set(got.columns) ^ names)
        got = pl.scan_parquet(glob, hive_partitioning=True).collect()
        assert got.height == 0 and set(got.columns) == names, (table, set(got.columns) ^ names)
        assert len(load_table(tmp_path, "branching", table)) == 0
    # the queries of the page run on it too
    assert len(duckdb_tables(tmp_path)["diagnostics"]) == 0 and len(polars_tables(tmp_path)["safety"]) == 0
    # tables with rows got no empty file; the empty file is no trial's chunk (never deleted, compacted or counted)
    assert not list((study / "steps").rglob(results.EMPTY_FILE))
    writer = ResultsWriter(tmp_path, "branching")
    assert all(p.name != results.EMPTY_FILE for _, p in writer.loose_files())
    record_check.check(tmp_path, "branching")  # the trial's counted rows (0 in diagnostics and safety) are what the record holds
    assert writer.write_empty_tables("sine") == []  # written once: a table that has a file gets none


def v1_file(path: Path, rows: list[dict]) -> None:
    """A diagnostics file as schema version 1 wrote it: ``gram_size`` named ``N``, version 1 in its metadata."""
    table = results.to_table("diagnostics", rows).drop_columns(["dataset", "phase"])
    meta = {**table.schema.metadata, results.SCHEMA_VERSION_KEY: b"1"}
    table = table.rename_columns(["N" if c == "gram_size" else c for c in table.column_names])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_a_version_1_record_loads_with_n_renamed(tmp_path):
    """Old results still load: a version-1 file's ``N`` is read as ``gram_size`` (whole tables, chosen columns,
    files of both versions side by side, and after compaction merges them)."""
    base = {"study": "old", "method": "dense", "loss": "bce", "m_y": 3, "d": 7, "residual": 0.5}
    old = [{**base, "trial_id": "aa", "step": s, "n": 4, "gram_size": 12} for s in (0, 2)]
    new = [{**base, "trial_id": "bb", "step": s, "n": 5, "gram_size": 15} for s in (0, 2)]
    directory = tmp_path / "old" / "diagnostics" / "dataset=sine" / "phase=explore"
    v1_file(directory / "aa-0.parquet", old)
    assert "N" in pq.read_schema(directory / "aa-0.parquet").names
    ResultsWriter(tmp_path, "old").write_chunk("diagnostics", "bb", "0", [{**r, "phase": "explore"} for r in new],
                                               "sine")

    def check():
        frame = load_table(tmp_path, "old", "diagnostics")
        assert "N" not in frame.columns and list(frame.columns) == schema("diagnostics").names
        assert frame[["trial_id", "n", "gram_size"]].values.tolist() == [["aa", 4, 12]] * 2 + [["bb", 5, 15]] * 2
        assert load_table(tmp_path, "old", "diagnostics", ["gram_size"]).gram_size.tolist() == [12, 12, 15, 15]
        assert results.read_whole(tmp_path, "old", "diagnostics").column("gram_size").to_pylist() == [12, 12, 15, 15]

    check()
    # DuckDB reads today's file with n and gram_size apart (m_y = 3: a merged column would show n twice)
    got = duckdb.sql(f"SELECT n, gram_size FROM read_parquet('{directory}/bb-0.parquet')").fetchall()
    assert got == [(5, 15), (5, 15)]
    # polars, as the page says for a version-1 record: each file read alone, joined by name, N taken as gram_size
    files = sorted(directory.glob("*.parquet"))
    frame = pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed").with_columns(
        gram_size=pl.coalesce("gram_size", "N")).drop("N").collect()
    assert sorted(zip(frame["trial_id"], frame["n"], frame["gram_size"])) == [("aa", 4, 12)] * 2 + [("bb", 5, 15)] * 2
    assert 'pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed")' in DOC.read_text(encoding="utf-8")
    compaction.compact(sorted(directory.glob("*.parquet")))
    (part,) = directory.glob("part-*.parquet")
    stored = pq.read_schema(part)
    assert "gram_size" in stored.names and "N" not in stored.names
    assert stored.metadata[results.SCHEMA_VERSION_KEY] == str(results.SCHEMA_VERSION).encode()
    check()


def test_the_page_documents_the_schema_version_and_the_rename():
    text = DOC.read_text(encoding="utf-8")
    assert results.SCHEMA_VERSION == 2 and results.RENAMED == {"diagnostics": {"N": "gram_size"}}
    assert "Version 2 renamed the `diagnostics` column `N`" in text
    assert schema("diagnostics").field("gram_size").type == pa.int64() and "N" not in schema("diagnostics").names


@pytest.mark.slow
@pytest.mark.ray
def test_the_driver_leaves_tables_no_trial_wrote_to_readable_by_glob(smoke):
    """Through the CLI: every trial diverges at once (tests/studies/all_failed_study.py), so some tables get no
    rows; the driver leaves each of them one empty file with its schema, and each glob reads what load reads.
    (The run is shared with tests/test_faults.py's every-trial-failed test, which checks its exit status 3.)"""
    record, _ = smoke("tests/studies/all_failed_study.py", expect=3, own_ray=True)
    res = load(record, "all_failed")
    empty = [t for t in PARQUET_TABLES if len(getattr(res, t)) == 0]
    assert empty, "every table has rows: this study no longer tests empty tables"
    for table in PARQUET_TABLES:
        files = [f.name for f in (record / "all_failed" / table).rglob("*.parquet")]
        assert (files == [results.EMPTY_FILE]) == (table in empty), (table, files)
        glob = f"{record}/all_failed/{table}/**/*.parquet"
        got = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)").df()
        assert len(got) == len(getattr(res, table)) and set(got.columns) == set(schema(table).names), table
        got = pl.scan_parquet(glob, hive_partitioning=True).collect()
        assert got.height == len(getattr(res, table)) and set(got.columns) == set(schema(table).names), table
