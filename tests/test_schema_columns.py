"""Summaries ask for the schema's columns, and asking for one it does not have is an error (no filter that hides
schema drift): eeray.results.columns, the Parquet round trip, and Table 2's summary with both methods."""
import importlib.util
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch

from eeray import results
from eeray.diagnostics import random_gate_certificate

ROOT = Path(__file__).resolve().parents[1]


def safe_exploration():
    spec = importlib.util.spec_from_file_location("safe_exploration_study", ROOT / "studies" / "safe_exploration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def written_study(tmp_path) -> results.Results:
    """One Assumption-4 row and one trial row, through the writer and back: exactly what a study leaves."""
    z = torch.cat([torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                   torch.ones(6, 1, dtype=torch.float64)], 1)  # (n, m_{H−1}) = (6, 4), the constant neuron last
    gram = random_gate_certificate(z, 3, seed=0)  # both methods fit: eigvalsh is the second
    writer = results.ResultsWriter(tmp_path, "safe_exploration")
    writer.write_chunk("safety", "t1", "000000000-end", [{"kind": "assumption4", "head": None, "step": 0,
                                                         "phase": "explore", "m_H": 3, "m_H_minus_1": 4, "seed": 0,
                                                         **asdict(gram)}], "digits16")
    writer.write_trial("t1", {"trial_name": "digits16", "status": "completed", "n": 6}, "digits16")
    return results.load(tmp_path, "safe_exploration")


def test_columns_names_the_missing_column_and_the_valid_ones():
    frame = pd.DataFrame({"n": [1], "certified": [True]})
    assert list(results.columns(frame, ["certified", "n"]).columns) == ["certified", "n"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['method2_rank'\] in this table; valid: \['certified', 'n'\]"):
        results.columns(frame, ["n", "method2_rank"])


def test_rows_are_ordered_and_partitioned_by_schema_columns(tmp_path):
    assert set(results.ROW_ORDER) == set(results.PARTITIONS) == set(results.PARQUET_TABLES)
    for table in results.PARQUET_TABLES:
        names = results.schema(table).names
        assert set(results.ROW_ORDER[table]) <= set(names) and set(results.PARTITIONS[table]) <= set(names), table
    res = written_study(tmp_path)
    assert res.safety.dataset.tolist() == ["digits16"] and res.safety.kind.tolist() == ["assumption4"]
    assert res.trials.dataset.tolist() == ["digits16"] and res.trials.trial_name.tolist() == ["digits16"]


def test_table2_summary_shows_the_second_methods_cross_check(tmp_path):
    study = safe_exploration()
    res = written_study(tmp_path)
    out = study.summarize(res)
    assert list(out.columns) == ["trial", "dataset", *study.SUMMARY]
    row = out.iloc[0]
    assert row.second_method == "eigvalsh" and row.second_rank == 6 and bool(row.agree) and bool(row.certified)
    assert (row.n, row.m_H, row.m_H_minus_1, row.failed_pivot) == (6, 3, 4, 0)


def test_table2_summary_fails_on_a_column_the_schema_does_not_have(tmp_path):
    study = safe_exploration()
    res = written_study(tmp_path)
    res.safety = res.safety.drop(columns="second_rank")  # as if the schema had renamed it
    with pytest.raises(ValueError, match=r"no column\(s\) \['second_rank'\]"):
        study.summarize(res)


def test_every_studys_summary_columns_are_trials_columns(monkeypatch):
    """The end-of-study table (eeray.summary) shows ``Study.summary_columns``: each must be in the schema."""
    monkeypatch.syspath_prepend(str(ROOT / "studies"))  # ee_vs_standard imports safe_exploration beside it
    trials = set(results.schema("trials").names)
    for path in sorted((ROOT / "studies").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"{path.stem}_study", path)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        builders = [m.build] if hasattr(m, "build") else [
            m.build_grid, m.build_certify, lambda profile: m.build_final(profile, m.PAPER_CHOSEN)]
        for build in builders:
            study = build("smoke")
            assert set(study.summary_columns) <= trials, (study.name, set(study.summary_columns) - trials)


def test_what_the_tune_callback_and_sink_read_are_schema_columns():
    from eeray.mlflow_mirror import DIAG_METRICS
    from eeray.raytune.trainable import REPORT_KEYS, TuneSink

    assert set(DIAG_METRICS) <= set(results.schema("diagnostics").names)
    assert set(REPORT_KEYS) <= set(results.schema("steps").names)
    sink = TuneSink({})
    sink.emit("diagnostics", {"step": 4, "q_t": 2, "residual": 0.5})
    assert sink.latest["Q_T"] == 2  # the progress table's Q_T column comes from the rows' q_t
