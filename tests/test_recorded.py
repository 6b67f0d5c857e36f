"""A config rebuilt from its ``trials`` row (eeray.recorded) and rows compared cell by cell (eeray.row_compare),
without Ray: the row is written and read back through the real Parquet path, so the forms decoded are the ones a
record holds (JSON text, numpy scalars, NaN for null)."""
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pytest
import torch

from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, OptimConfig, TrialConfig, to_flat
from eeray.recorded import RecordError, config_from_row, decode, find_trial, trial_config
from eeray.results import ResultsWriter, load
from eeray.row_compare import excluded, first_difference, same

# every kind of field: a tuple, a mapping, a set G̃ whose lbfgs_line_search is None, None and set optionals
ODD = TrialConfig(
    data=DataConfig(name="sine", n_train=50, moons_noise=None),
    model=ModelConfig(fc_width=40, fc_first_layer_std=1.0),
    optim=OptimConfig(name="adam", lr=0.01, betas=(0.8, 0.99), extra={"amsgrad": True, "eps": 1e-7}),
    ee=EEConfig(m_H=7, tau=3.0, tau_unit="epochs", perturb_seed=12345,
                exploit_optim=OptimConfig(name="lbfgs", lr=1.0, lbfgs_line_search=None, lbfgs_iters=5)),
    diag=DiagConfig(max_samples=None),
    seed=2 ** 40 + 3)
PLAIN = TrialConfig(data=DataConfig(name="sine"), ee=EEConfig(enabled=False), seed=1)


def _record(tmp_path, configs):
    writer = ResultsWriter(tmp_path, "s")
    for i, cfg in enumerate(configs):
        writer.write_trial(f"t{i}", {"trial_name": f"trial {i}", "status": "completed",
                                     **{f"cfg.{k}": v for k, v in to_flat(cfg).items()}}, cfg.data.name)
    return load(tmp_path, "s")


def test_every_field_comes_back_exactly_from_parquet(tmp_path):
    results = _record(tmp_path, [ODD, PLAIN])
    row = find_trial(results, "t0")
    # what the record holds is not what went in (the issue): JSON text, numpy integers, NaN for an int's null
    assert row["cfg.optim.betas"] == "[0.8, 0.99]"
    assert isinstance(results.trials["cfg.seed"].iloc[0], np.integer)
    assert decode("seed", results.trials["cfg.seed"].iloc[0], int) == ODD.seed
    assert find_trial(results, "t1")["cfg.ee.m_H"] != find_trial(results, "t1")["cfg.ee.m_H"]  # NaN
    assert results.trials["cfg.ee.m_H"].dtype == np.float64  # an int column with nulls
    assert trial_config(results, "t0") == ODD
    assert trial_config(results, "trial 1") == PLAIN  # by trial_name too
    rebuilt = trial_config(results, "t0")
    assert type(rebuilt.seed) is int and type(rebuilt.ee.m_H) is int and type(rebuilt.ee.perturb_seed) is int
    assert type(rebuilt.optim.betas) is tuple and type(rebuilt.ee.exploit_optim.lbfgs_line_search) is type(None)
    assert type(rebuilt.model.fc_first_layer_std) is float and type(rebuilt.ee.tau) is float
    torch.Generator().manual_seed(rebuilt.seed)  # the numpy integer it was read as is refused here
    assert trial_config(results, "t1").ee.exploit_optim is None and trial_config(results, "t1").ee.m_H is None


@pytest.mark.parametrize("key,value,tp,want", [
    ("optim.betas", "[0.9, 0.999]", tuple[float, float], (0.9, 0.999)),
    ("seed", np.int64(7), int, 7),
    ("ee.m_H", np.float64(300.0), int | None, 300),  # int column with nulls: float64
    ("ee.m_H", float("nan"), int | None, None),
    ("model.fc_first_layer_std", np.float64("nan"), float | None, None),
    ("optim.lbfgs_line_search", None, str | None, None),
    ("ee.enabled", np.bool_(False), bool, False),
    ("optim.extra", '{"a": [1, 2]}', Mapping[str, Any], {"a": [1, 2]}),
])
def test_decode_by_declared_type(key, value, tp, want):
    got = decode(key, value, tp)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("key,value,tp,says", [
    ("optim.betas", "[0.9]", tuple[float, float], "cfg.optim.betas' = '[0.9]'"),
    ("optim.betas", "0.9,", tuple[float, float], "not JSON"),
    ("seed", 1.5, int, "cfg.seed' = 1.5"),
    ("seed", True, int, "cfg.seed' = True"),  # a bool is not an integer here
    ("ee.enabled", 1, bool, "cfg.ee.enabled' = 1"),
    ("optim.lr", float("nan"), float, "not optional"),
    ("data.name", None, str, "cfg.data.name' = None"),
    ("ee.m_H", 2.0 ** 60, int | None, "cfg.ee.m_H'"),  # beyond float64's exact integers
])
def test_a_value_that_does_not_fit_is_named(key, value, tp, says):
    with pytest.raises(RecordError, match="cannot be rebuilt") as err:
        decode(key, value, tp)
    assert says in str(err.value)


def test_a_column_or_field_without_a_counterpart_is_named():
    row = {f"cfg.{k}": v for k, v in to_flat(PLAIN).items()}
    with pytest.raises(RecordError, match=r"cfg\.optim\.old_knob.*0\.5.*not fields of the current config"):
        config_from_row({**row, "cfg.optim.old_knob": 0.5})
    del row["cfg.ee.tau"]
    with pytest.raises(RecordError, match=r"no column\(s\) \['cfg\.ee\.tau'\]"):
        config_from_row(row)


def test_an_unknown_trial_lists_valid_ones(tmp_path):
    results = _record(tmp_path, [PLAIN])
    with pytest.raises(RecordError, match=r"no trial 'nope'.*valid: t0 \(trial 0\)"):
        trial_config(results, "nope")


def test_cells_compare_bitwise():
    assert same(float("nan"), np.float64("nan")) and same(None, float("nan")) and same("a", "a")
    assert not same(0.0, -0.0) and not same(0.1, 0.1 + 1e-17 * 10) and not same(None, 0.0)
    assert same(np.int64(3), 3) and not same(True, 1) and same(np.bool_(True), True)


def test_first_difference_names_step_and_column():
    rows = pd.DataFrame({"trial_id": ["t"] * 3, "step": [0, 1, 2], "phase": ["explore"] * 3,
                         "train_loss": [0.5, 0.4, math.nan], "lr": [0.1, 0.1, 0.1], "eval_seconds": [1.0, 2.0, 3.0]})
    other = rows.copy()
    other["eval_seconds"] = [9.0, 9.0, 9.0]  # timings are not compared
    assert "eval_seconds" in excluded("steps", rows.columns)
    assert first_difference("steps", rows, other) is None
    other.loc[2, "lr"], other.loc[1, "train_loss"] = 0.2, 0.4000000000000001
    d = first_difference("steps", rows, other)
    assert (d.key, d.column, d.recorded, d.rerun) == ({"trial_id": "t", "step": 1, "phase": "explore"},
                                                      "train_loss", 0.4, 0.4000000000000001)
    assert d.describe() == "steps: step 1, phase explore, column train_loss: recorded 0.4, re-run 0.4000000000000001"
    d = first_difference("steps", rows, rows.iloc[:2])
    assert (d.column, d.key["step"], d.recorded, d.rerun) == (None, 2, "3 rows", "2 rows")
