"""A trial from its record (issue #29, item 1): a smoke study run once through the real CLI on Ray; every trial's
config rebuilt from its Parquet row equals the one the study file defines; ``python -m eeray.rerun`` re-runs a
Standard trial and an EE branch outside Ray, bitwise equal to the record, and names the first difference of a
record changed by one ulp.

The optimizer sweep's smoke has all three kinds: Standard trials, EE trunks (G̃ = SGD) and EE branches
(G̃ = L-BFGS, a set ``ee.exploit_optim`` whose rows before τ are their trunk's)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from eeray.recorded import trial_config
from eeray.results import load

STUDY = "optimizer_sweep"


def _defined(study: str) -> dict:
    """Trial name -> the TrialConfig the study file defines for the smoke profile (built here, not on Ray)."""
    spec = importlib.util.spec_from_file_location(f"{study}_rerun_study", ROOT / "studies" / f"{study}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {t.name: t.config for t in module.build("smoke").trials()}


def _rerun(results_dir, trial: str, *args: str, study: str = STUDY, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eeray.rerun", str(results_dir), "--study", study, "--trial", trial,
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=None if env is None else {**os.environ, **env})


@pytest.fixture(scope="module")
def record(smoke):
    results_dir, _ = smoke(STUDY)
    return results_dir, load(results_dir, STUDY)


def test_every_trial_rebuilds_from_its_row(record):
    _, results = record
    defined = _defined(STUDY)
    trials = results.trials
    assert sorted(trials.trial_name) == sorted(defined)
    assert trials.trunk_trial_id.notna().any() and (~trials["cfg.ee.enabled"]).any()  # branches and Standard
    for trial_id, name in zip(trials.trial_id, trials.trial_name):
        assert trial_config(results, trial_id) == defined[name], name
    lbfgs = trial_config(results, trials[trials["cfg.ee.exploit_optim.name"] == "lbfgs"].trial_id.iloc[0])
    assert lbfgs.ee.exploit_optim.name == "lbfgs" and type(lbfgs.optim.betas) is tuple and type(lbfgs.seed) is int


def _pick(results):
    t = results.trials
    standard = t[~t["cfg.ee.enabled"]].trial_name.iloc[0]
    branch = t[t.trunk_trial_id.notna()].trial_id.iloc[0]
    return standard, branch


def test_a_standard_trial_and_an_ee_branch_rerun_bitwise_equal(record):
    results_dir, results = record
    standard, branch = _pick(results)
    out = _rerun(results_dir, standard)
    assert out.returncode == 0, out.stdout + out.stderr
    steps = (results.steps.trial_id == results.trials.set_index("trial_name").trial_id[standard]).sum()
    assert f"equal: {steps} rows in steps, " in out.stdout and "1 row in trials" in out.stdout, out.stdout
    assert "steps: explore_seconds, exploit_seconds, eval_seconds;" in out.stdout  # what was not compared
    assert "note:" not in out.stdout  # the same CPU, instruction set and threads as the record

    out = _rerun(results_dir, branch, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout)
    step = int(results.trials.set_index("trial_id").branch_step[branch])
    assert got["equal"] and got["trial_id"] == branch and set(got["differences"].values()) == {None}
    # compared with the whole history: the trunk's rows before the branch step and the branch's own after it
    assert got["rows"]["steps"] == (results.steps.trial_id == branch).sum() and got["rows"]["safety"] > 0
    assert (results.steps[results.steps.trial_id == branch].step < step).any()


def test_a_rerun_on_another_instruction_set_says_so(record):
    """PyTorch's CPU kernels forced to their plain (non-vector) versions, as on a CPU without AVX: the re-run's
    hardware differs from the record's, and it says that bitwise equality is then not expected (measured: the
    first step's loss already differs in the 9th digit; docs/results-schema.md, "What is bitwise")."""
    import torch

    results_dir, results = record
    standard, _ = _pick(results)
    recorded = results.trials.set_index("trial_name").hardware[standard]
    assert recorded.endswith(f", {torch.backends.cpu.get_cpu_capability()} (1 threads)"), recorded
    out = _rerun(results_dir, standard, env={"ATEN_CPU_CAPABILITY": "default"})
    assert out.returncode in (0, 1), out.stdout + out.stderr  # 1: values differ, as expected across kernels
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":  # this machine has no vector kernels to turn off
        assert out.returncode == 0 and "note:" not in out.stdout, out.stdout
    else:
        assert f"note: the record ran on {recorded!r}, this re-run on " in out.stdout, out.stdout
        assert ", DEFAULT (1 threads)'" in out.stdout and "What is bitwise" in out.stdout


def test_a_record_one_ulp_off_is_named(record, tmp_path):
    """The comparison can fail: one train_loss of the Standard trial moved by one ulp in a copy of the record."""
    results_dir, results = record
    standard, _ = _pick(results)
    trial_id = results.trials.set_index("trial_name").trial_id[standard]
    rows = results.steps[results.steps.trial_id == trial_id]
    step = int(rows.step.iloc[2])
    copy = tmp_path / "copy"
    shutil.copytree(results_dir / STUDY, copy / STUDY, ignore=shutil.ignore_patterns("_tune"))
    changed = 0
    for path in (copy / STUDY / "steps").rglob("*.parquet"):
        table = pq.read_table(path)
        hit = pc.and_(pc.equal(table["trial_id"], trial_id), pc.equal(table["step"], step))
        if pc.any(hit).as_py():
            loss = table["train_loss"].to_numpy(zero_copy_only=False).copy()
            mask = hit.to_numpy(zero_copy_only=False)
            recorded = float(loss[mask][0])
            loss[mask] = np.nextafter(loss[mask], np.inf)
            i = table.schema.get_field_index("train_loss")
            pq.write_table(table.set_column(i, table.schema.field(i), pa.array(loss)), path)
            changed += int(mask.sum())
    assert changed == 1
    out = _rerun(copy, standard)
    assert out.returncode == 1, out.stdout + out.stderr
    phase = rows.phase.iloc[2]
    assert (f"different: steps: step {step}, phase {phase}, column train_loss: "
            f"recorded {float(np.nextafter(recorded, np.inf))!r}, re-run {recorded!r}") in out.stdout, out.stdout
    assert "equal: 0 rows in diagnostics" in out.stdout  # the other tables still compared, and equal


def test_bad_input_exits_2_and_says_why(record, tmp_path):
    results_dir, results = record
    out = _rerun(results_dir, "no such trial")
    assert out.returncode == 2 and "no trial 'no such trial'" in out.stderr and "valid: " in out.stderr
    assert results.trials.trial_id.iloc[0] in out.stderr  # a few valid ones are listed
    out = _rerun(results_dir, "x", study="nope")
    assert out.returncode == 2 and "no results for study 'nope'" in out.stderr
