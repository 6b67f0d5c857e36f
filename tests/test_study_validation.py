"""Bad studies fail before Ray starts, with one message naming the field and the fix."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eeray.config import ConfigError, DataConfig, EEConfig, ModelConfig, TrialConfig
from eeray.study import Resources, Study
from eeray.study_validation import check_safe_exploration, validate_study


def study(**kw) -> Study:
    base = TrialConfig(data=DataConfig(name="random16", n_train=64), model=ModelConfig(arch="lenet"))
    return Study(name="t", base=base, **kw)


def test_grid_and_variants_expand_to_readable_trials():
    s = study(grid={"model.lenet_mc": [1, 2], "seed": [0, 1]},
              variants={"standard": {"ee.enabled": False}, "ee c=2": {"ee.m_H_factor": 2.0}})
    specs = validate_study(s)
    assert len(specs) == 8
    assert specs[0].name == "standard m_c=1 seed=0" and specs[-1].name == "ee c=2 m_c=2 seed=1"
    assert specs[-1].config.ee.m_H_factor == 2.0 and specs[-1].config.model.lenet_mc == 2


def test_factors_that_give_one_head_width_are_refused_as_one_trial_run_twice():
    """m_H = ⌈c·n/m_(H−1)⌉: at n = 64 and LeNet m_c = 1 (m_(H−1) = 513), c = 0.5 and c = 4 both give m_H = 1."""
    ee = {"ee.enabled": True}
    s = study(grid={"seed": [0]}, variants={"a": {**ee, "ee.m_H_factor": 0.5}, "b": {**ee, "ee.m_H_factor": 4.0}})
    with pytest.raises(ConfigError, match=r"'ee.m_H_factor' = 4.0 .*trials 'a seed=0' \(c = 0.5\) and 'b seed=0' "
                                          r"\(c = 4\) are one run: both give m_H = 1 .*n = 64, m_\{H−1\} = 513"):
        validate_study(s)
    distinct = study(grid={"seed": [0]}, variants={"a": {**ee, "ee.m_H_factor": 0.5}, "b": {**ee, "ee.m_H": 2}})
    assert len(validate_study(distinct)) == 2
    with pytest.raises(ConfigError, match=r"'study.trials' = 'b seed=0' .*it repeats trial 'a'"):
        validate_study(study(grid={"seed": [0]}, variants={"a": {"seed": 0}, "b": {}}))


def test_a_list_of_grids_joins_their_points_and_refuses_a_point_two_of_them_give():
    joined = study(grid=[{"model.lenet_mc": [1], "seed": [0, 1, 2]}, {"model.lenet_mc": [2], "seed": [0]}])
    assert [s.name for s in validate_study(joined)] == ["m_c=1 seed=0", "m_c=1 seed=1", "m_c=1 seed=2", "m_c=2 seed=0"]
    with pytest.raises(ConfigError, match=r"'study.trials' = 'seed=0 m_c=1' .*it repeats trial 'm_c=1 seed=0'"):
        validate_study(study(grid=[{"model.lenet_mc": [1], "seed": [0]}, {"seed": [0], "model.lenet_mc": [1]}]))
    with pytest.raises(ConfigError, match=r"'grid\[1\].seed' = \[\] is invalid: a sweep axis needs"):
        validate_study(study(grid=[{"seed": [0]}, {"seed": []}]))
    for bad in ([], [{"seed": [0]}, ["seed"]]):
        with pytest.raises(ConfigError, match=r"'study.grid' .*or a non-empty list of such dicts"):
            validate_study(study(grid=bad))


def test_width_sweep_runs_each_head_width_of_fig_1_once():
    """The paper profile's c ∈ {0.5, 1, 2, 4} at n = 1000: m_H = 1, 2, 4, 8 (m_c = 1), 1, 1, 2, 4 (m_c = 2) and
    1, 1, 1, 2 (m_c = 4), so c = 1 runs at m_c = 1 only and c = 2 at m_c = 1 and 2."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
    import width_sweep

    variants = width_sweep.build("paper").variants
    assert {k: v.get("model.lenet_mc") for k, v in variants.items()} == {
        "standard": None, "ee c=0.5": None, "ee c=1 m_c=1": 1, "ee c=2 m_c=1": 1, "ee c=2 m_c=2": 2, "ee c=4": None}
    laptop = width_sweep.build("laptop")  # c ∈ {0.5, 2}: c = 2 gives m_c = 4 the m_H = 1 of c = 0.5
    assert list(laptop.variants) == ["standard", "ee c=0.5", "ee c=2 m_c=1", "ee c=2 m_c=2"]
    assert len(validate_study(laptop)) == 96


def test_unknown_sweep_key_names_the_key_and_valid_keys():
    with pytest.raises(ConfigError, match=r"'model.lenet_m' .*unknown key; valid keys: .*model\.lenet_mc"):
        validate_study(study(grid={"model.lenet_m": [1, 2]}))


def test_invalid_sweep_value_names_the_trial():
    with pytest.raises(ConfigError, match=r"'ee.epsilon' = -1.0 is invalid: .*\(trial 'eps=-1'\)"):
        validate_study(study(grid={"ee.epsilon": [1e-3, -1.0]}))


def test_gpus_requested_where_none_exist(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # the check is about machines without a GPU
    with pytest.raises(ConfigError, match=r"'resources.gpu' = 0.25 .*none is visible.*--smoke"):
        validate_study(study(resources=Resources(gpu=0.25)))


def test_safe_exploration_condition_gives_the_smallest_m_H():
    cfg = TrialConfig(data=DataConfig(name="random16", n_train=1000), model=ModelConfig(arch="lenet"),
                      ee=EEConfig(m_H=1))
    with pytest.raises(ConfigError, match=r"'ee.m_H' = 1 .*1·513 = 513 < n = 1000.*smallest m_H .* is 2"):
        check_safe_exploration(cfg)
    with pytest.raises(ConfigError, match=r"'ee.m_H_factor' = 0.5 .*smallest m_H that could satisfy it is 2"):
        validate_study(Study("t", cfg.replace(**{"ee.m_H": None}), grid={"ee.m_H_factor": [0.5, 2.0]},
                             require_safe_exploration=True))


def test_asha_only_for_learning_rate_tuning():
    with pytest.raises(ConfigError, match=r"'study.scheduler' = 'asha' .*only when the study tunes a learning rate"):
        validate_study(study(scheduler="asha"))


def test_missing_real_dataset_fails_before_ray(tmp_path, monkeypatch):
    monkeypatch.setenv("EERAY_DATA_ROOT", str(tmp_path))
    base = TrialConfig(data=DataConfig(name="cifar10"), model=ModelConfig(arch="lenet"))
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py/data_batch_1.*cs\.toronto\.edu"):
        validate_study(Study("t", base))


def test_study_command_line_fails_fast_without_starting_ray(tmp_path):
    script = tmp_path / "bad_study.py"
    script.write_text(
        "from eeray.config import TrialConfig\nfrom eeray.cli import main\nfrom eeray.study import Study\n"
        "def build(profile):\n    return Study('bad', TrialConfig(), grid={'ee.tau': [0.5, 2.0]})\n"
        "rc = main(build)\nimport sys\nprint('ray imported' if 'ray' in sys.modules else 'no ray')\n"
        "raise SystemExit(rc)\n")
    out = subprocess.run([sys.executable, str(script), "--smoke", "--results-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "config field 'ee.tau' = 2.0 is invalid: with tau_unit 'fraction'" in out.stderr
    assert "no ray" in out.stdout and not (tmp_path / "r").exists()  # Ray not even imported; nothing written


def test_cluster_yaml_validates_with_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(open("cluster.yaml"))
    validate_config(prepare_config(raw))
    text = open("cluster.yaml").read()
    assert "0.0.0.0" not in text and "--dashboard-host=127.0.0.1" in text and "--host 127.0.0.1" in text
    assert raw["docker"]["image"].startswith("rayproject/ray:2.60.") and "ray-ml" not in raw["docker"]["image"]
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
               for t in raw["available_node_types"].values())
    assert all(t["resources"].keys() >= {"CPU", "GPU"} for t in raw["available_node_types"].values())


# --------------------------------------------------------------------------- the pre-Ray list, on the real CLI
# Every case is a real command: eeray.cli.main (or a study file run as __main__) with its argv, in one fresh
# Python process for all cases (one torch import instead of forty), each case's stdout, stderr and exit status
# captured separately, and the process reporting at the end whether anything imported Ray. A few cases also run
# as their own process below (test_study_command_line_fails_fast_without_starting_ray, the crafted pickle).
ROOT = Path(__file__).resolve().parents[1]
DRIVER = r"""
import contextlib, io, json, os, runpy, sys, traceback
sys.path.insert(0, "studies")
from eeray.config import DataConfig, DiagConfig, EEConfig, ModelConfig, TrainConfig, TrialConfig
from eeray.cli import main
from eeray.study import Resources, Study

BASE = TrialConfig(data=DataConfig(name="sine"), train=TrainConfig(epochs=5))  # n = 100, batch 100: 5 steps
cases, out, env0, result = json.load(open(sys.argv[1])), {}, dict(os.environ), sys.argv[2]
for name, case in cases.items():
    os.environ.clear(); os.environ.update({**env0, **case.get("env", {})})
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            if case.get("script"):
                sys.argv = [case["script"], *case["argv"]]
                try:
                    runpy.run_path(case["script"], run_name="__main__")
                    rc = 0
                except SystemExit as e:
                    rc = e.code or 0
            else:
                sys.argv = ["a_study.py"]
                rc = main(lambda profile, expr=case["study"]: eval(expr), case["argv"])
        except BaseException:
            rc = "raised"
            err.write(traceback.format_exc())
    out[name] = {"rc": rc, "stdout": std.getvalue(), "stderr": err.getvalue()}
out["ray imported"] = "ray" in sys.modules
json.dump(out, open(result, "w"))
"""

# name -> (the study built, fragments of its one error line); run as `<study file> --smoke` (not --validate-only:
# a valid study would go on to start Ray)
PRE_RAY_CASES = {
    # τ in each unit, past the end of a 5-step run (sine: n = 100, batch 100, 5 epochs)
    "tau_steps_beyond_run": ("Study('v', BASE.replace(**{'ee.tau': 6, 'ee.tau_unit': 'steps'}))",
                             ["'ee.tau' = 6.0", "τ = 6 steps lies outside the run (0..5 steps = 5 epochs × 1 steps)"]),
    "tau_epochs_beyond_run": ("Study('v', BASE.replace(**{'ee.tau': 6, 'ee.tau_unit': 'epochs'}))",
                              ["'ee.tau' = 6.0", "an integer in [0, 5] (train.epochs = 5)"]),
    "tau_fraction_above_one": ("Study('v', BASE, grid={'ee.tau': [0.5, 1.5]})",
                               ["'ee.tau' = 1.5", "τ0 must be in [0, 1]", "(trial 'tau0=1.5')"]),
    "tau_steps_beyond_run_after_split": (  # 80 training samples after the 80/20 split, batch 40: 2 steps/epoch
        "Study('v', BASE.replace(**{'data.val_fraction': 0.2, 'train.batch_size': 40, 'ee.tau': 11, "
        "'ee.tau_unit': 'steps'}))", ["'ee.tau' = 11.0", "(0..10 steps = 5 epochs × 2 steps)"]),
    "tau_is_a_bool": ("Study('v', BASE.replace(**{'ee.tau': True}))",
                      ["'ee.tau' = True", "must be a number; a bool is not a number here"]),
    "bool_for_a_number": ("Study('v', BASE, grid={'train.epochs': [True]})",
                          ["'train.epochs' = True", "must be an integer; a bool"]),
    "string_for_a_bool": ("Study('v', BASE, grid={'ee.enabled': ['false']})",
                          ["'ee.enabled' = 'false'", "must be a bool (True/False)"]),
    "n_train_beyond_dataset": ("Study('v', BASE.replace(**{'data.name': 'digits16', 'data.n_train': 2000, "
                               "'model.arch': 'lenet'}))",
                               ["'data.n_train' = 2000", "dataset 'digits16' has 1000 training samples"]),
    "cpu_zero": ("Study('v', BASE, resources=Resources(cpu=0))", ["'resources.cpu' = 0", "must be > 0"]),
    "duplicate_grid_values": ("Study('v', BASE, grid={'seed': [0, 1, 0]})",
                              ["'grid.seed' = [0, 1, 0]", "the value 0 is listed twice"]),
    "duplicate_grid_values_int_float": ("Study('v', BASE, grid={'optim.lr': [0.1, 1, 1.0]})",
                                        ["'grid.optim.lr'", "the value 1.0 is listed twice"]),
    "grid_axis_not_a_list": ("Study('v', BASE, grid={'seed': 3})",
                             ["'grid.seed' = 3", "a sweep axis is a list of values, e.g. {'seed': [3]}"]),
    "grid_axis_a_string": ("Study('v', BASE, grid={'seed': '01'})",
                           ["'grid.seed' = '01'", "a sweep axis is a list of values"]),
    "samples_per_point_zero": ("Study('v', BASE, samples_per_point=0)",
                               ["'study.samples_per_point' = 0", "an integer >= 1"]),
    "max_failures_forever": ("Study('v', BASE, max_failures=-1)",
                             ["'study.max_failures' = -1", "an integer >= 0", "retry forever, is refused"]),
    "max_failures_not_an_int": ("Study('v', BASE, max_failures=True)", ["'study.max_failures' = True"]),
    "branching_not_a_bool": ("Study('v', BASE, branching='yes')", ["'study.branching' = 'yes'", "must be True"]),
    # sine + FCNet 300 x 2: n = 100, m_(H−1) = 301, m_H = 300 (the replaced width); the budget 1e-4 GiB =
    # 107,374 bytes; the Grams need 8·(100² + 100·(301 + 300) + 2·100) = 562,400 bytes
    "safety_gram_budget": ("Study('v', BASE.replace(**{'diag.memory_budget_gb': 1e-4}))",
                           ["'diag.memory_budget_gb' = 0.0001", "need at least 562,400 bytes (0.000524 GiB)",
                            "n = 100, m_H = 300, m_(H−1) = 301", "or set diag.lemma5 = False"]),
    # the dense report for N = 100: 7·N²·8 + M_0's N²·8 = 640,000 bytes
    "dense_alignment_budget": ("Study('v', BASE.replace(**{'ee.enabled': False, 'diag.alignment': True, "
                               "'diag.method': 'dense', 'diag.memory_budget_gb': 1e-4}))",
                               ["'diag.memory_budget_gb' = 0.0001", "dense alignment report",
                                "needs at least 640,000 bytes", "use diag.method 'auto'"]),
    "user_optimizer_not_importable": ("Study('v', BASE.replace(**{'optim.name': 'no_such_module:make'}))",
                                      ["'optim.name' = 'no_such_module:make'", "cannot import the user factory",
                                       "ModuleNotFoundError"]),
    "assumption4_without_ee": ("Study('v', BASE.replace(**{'ee.enabled': False, 'diag.assumption4': True}))",
                               ["'diag.assumption4' = True", "Assumption 4 is about the EE model"]),
    "no_trial": ("Study('v', BASE, variants={})", ["'study.variants' = {}", "expands to no trial"]),
}
UNSAFE_NAMES = ["", "..", ".", "a/b", "/tmp/elsewhere", ".hidden", "a\\b"]
STUDIES = ["width_sweep", "sine_wave", "optimizer_sweep", "safe_exploration", "ee_vs_standard"]


def _paper_data(root: Path) -> Path:
    """Tiny files in every paper dataset's real format (what the paper profile reads)."""
    from test_data_real import make_cifar, make_idx, make_semeion, make_svhn

    root.mkdir(parents=True)
    for name in ("mnist", "kmnist"):
        make_idx(root, name, gz=True)
    make_cifar(root, "cifar10")
    make_cifar(root, "cifar100")
    make_svhn(root)
    make_semeion(root / "semeion.data", 30)
    return root


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Runs every case below in one process; ``cli[name]`` -> {"rc", "stdout", "stderr"}, plus the work dir."""
    from test_data_real import make_idx

    work = tmp_path_factory.mktemp("cli")
    cases: dict[str, dict] = {}
    for name, (study, _) in PRE_RAY_CASES.items():
        cases[name] = {"study": study, "argv": ["--smoke", "--results-dir", str(work / name / "results")]}
    for i, name in enumerate(UNSAFE_NAMES):  # a results dir with another study and the MLflow store in it
        results = work / f"unsafe{i}" / "results"
        (results / "other_study").mkdir(parents=True)
        (results / "other_study" / "keep.parquet").write_text("x")
        (results / "mlflow.db").write_text("x")
        cases[f"unsafe{i}"] = {"study": f"Study({name!r}, BASE)", "argv": ["--smoke", "--fresh", "--results-dir",
                                                                           str(results)]}
    base = ["--smoke", "--results-dir", str(work / "r")]
    cases["data_root_missing"] = {"study": "Study('v', BASE)", "argv": [*base, "--data-root", str(work / "nowhere")]}
    cases["data_root_env_missing"] = {"study": "Study('v', BASE)", "argv": base,
                                      "env": {"EERAY_DATA_ROOT": str(work / "nowhere")}}
    cases["cpu_kernels_env_invalid"] = {"study": "Study('v', BASE)", "argv": base,
                                        "env": {"EERAY_CPU_KERNELS": "fast"}}
    make_idx(work / "mnist", "mnist", gz=True)
    mnist = "Study('v', BASE.replace(**{'data.name': 'mnist', 'model.arch': 'lenet', 'data.n_train': %s}))"
    cases["n_train_beyond_files"] = {"study": mnist % 13, "argv": [*base, "--data-root", str(work / "mnist")]}
    cases["n_train_within_files"] = {"study": mnist % 12, "argv": [*base, "--data-root", str(work / "mnist"),
                                                                   "--validate-only"]}
    make_idx(work / "corrupt", "mnist", gz=False)
    p = work / "corrupt/MNIST/raw/t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-1])  # one byte short of what its header says
    cases["corrupt_idx"] = {"study": mnist % None, "argv": [*base, "--data-root", str(work / "corrupt")]}
    for s in STUDIES:
        cases[f"validate_only_{s}"] = {"script": f"studies/{s}.py", "argv": [
            "--smoke", "--validate-only", "--results-dir", str(work / f"v_{s}")]}
    cases["final_without_grid"] = {"script": "studies/ee_vs_standard.py", "argv": [
        "--smoke", "--stage", "final", "--results-dir", str(work / "final")]}
    paper = _paper_data(work / "paper")
    partial = _paper_data(work / "partial")
    (partial / "test_32x32.mat").unlink()
    # --address: validated for a cluster (no local GPU needed); --validate-only never contacts it
    paper_args = ["--profile", "paper", "--address", "127.0.0.1:1", "--validate-only", "--results-dir",
                  str(work / "pr")]
    cases["paper_all_present"] = {"script": "studies/ee_vs_standard.py",
                                  "argv": [*paper_args, "--data-root", str(paper)]}
    cases["paper_one_absent"] = {"script": "studies/ee_vs_standard.py",
                                 "argv": [*paper_args, "--data-root", str(partial)]}
    cases["paper_one_absent_present_only"] = {"script": "studies/ee_vs_standard.py",
                                              "argv": [*paper_args, "--data-root", str(partial),
                                                       "--present-datasets-only"]}
    for value in ("-1", "0"):  # Tune would take -1 into its pickled state; 0 would silently mean "no limit"
        cases[f"max_concurrent_{value}"] = {"study": "Study('v', BASE)", "argv": [*base, "--max-concurrent", value]}
    (work / "a_file").write_text("x")
    cases["results_dir_a_file"] = {"study": "Study('v', BASE)", "argv": ["--smoke", "--results-dir",
                                                                         str(work / "a_file")]}
    (work / "cases.json").write_text(json.dumps(cases))
    (work / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(work / "driver.py"), str(work / "cases.json"), str(work / "out.json")],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((work / "out.json").read_text())
    assert out.pop("ray imported") is False  # no case, valid or not, imported Ray
    return {**out, "work": work}


def assert_refused(out: dict, *fragments: str) -> str:
    """Exit status 2, one ``error: ...`` line naming what the fragments say, no traceback."""
    lines = [line for line in out["stderr"].splitlines() if line.strip()]
    assert out["rc"] == 2, (out["rc"], out["stdout"][-2000:], out["stderr"][-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), out["stderr"]
    assert "Traceback" not in out["stderr"] + out["stdout"]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", list(PRE_RAY_CASES))
def test_pre_ray_refusal(cli, case):
    assert_refused(cli[case], *PRE_RAY_CASES[case][1])
    assert not (cli["work"] / case / "results").exists()  # nothing written


@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_concurrent_below_one_is_refused_before_ray(cli, value):
    assert_refused(cli[f"max_concurrent_{value}"], f"'--max-concurrent' = {value}", "an integer >= 1")


def test_a_results_dir_that_is_a_file_is_refused_before_ray(cli):
    assert_refused(cli["results_dir_a_file"], "'--results-dir' = ", "must be a directory (or not exist yet): it is a file")
    assert (cli["work"] / "a_file").read_text() == "x"


def test_a_flag_is_never_taken_from_its_prefix():
    """argparse would read --fr as --fresh, which deletes results."""
    from eeray.cli import parse_args

    with pytest.raises(SystemExit) as refused:
        parse_args(["--fr"], None)
    assert refused.value.code == 2
    assert parse_args(["--fresh"], None).fresh


@pytest.mark.parametrize("i", range(len(UNSAFE_NAMES)), ids=[repr(n) for n in UNSAFE_NAMES])
def test_unsafe_study_name_refused_and_fresh_deletes_nothing(cli, i):
    assert_refused(cli[f"unsafe{i}"], "'study.name' = ", "one path component")
    results = cli["work"] / f"unsafe{i}" / "results"
    assert (results / "other_study" / "keep.parquet").exists() and (results / "mlflow.db").exists()
    assert sorted(p.name for p in results.iterdir()) == ["mlflow.db", "other_study"]


def test_data_root_that_does_not_exist(cli):
    nowhere = cli["work"] / "nowhere"
    assert_refused(cli["data_root_missing"], f"'--data-root' = '{nowhere}'", "must be an existing directory")
    assert_refused(cli["data_root_env_missing"], f"'EERAY_DATA_ROOT' = '{nowhere}'", "must be an existing directory")


def test_an_unknown_cpu_kernels_choice_is_refused_before_ray(cli):
    """EERAY_CPU_KERNELS is read by every trial (eeray.cpu_kernels): a bad value is one error here, not every
    trial failing."""
    assert_refused(cli["cpu_kernels_env_invalid"], "EERAY_CPU_KERNELS = 'fast' is invalid: 'native' lets PyTorch",
                   "unset or 'portable' caps them at AVX2")


def test_n_train_checked_against_the_files(cli):
    """n_train is checked against what the files hold (12 images here), not the registry's 60,000."""
    assert_refused(cli["n_train_beyond_files"], "'data.n_train' = 13",
                   "dataset 'mnist' has 12 training samples in its files")
    assert cli["n_train_within_files"]["rc"] == 0, cli["n_train_within_files"]["stderr"]


def test_corrupt_data_file_refused_before_ray(cli):
    p = cli["work"] / "corrupt/MNIST/raw/t10k-images-idx3-ubyte"
    line = assert_refused(cli["corrupt_idx"], f"file {p} is corrupt", "header says (5, 28, 28) = 3920 bytes, "
                          "found 3919", "Replace it", "ossci-datasets")
    assert "expected files: train-images-idx3-ubyte[.gz]" in line


@pytest.mark.parametrize("script", STUDIES)
def test_validate_only_every_study(cli, script):
    out = cli[f"validate_only_{script}"]
    assert out["rc"] == 0, out["stderr"][-3000:]
    assert "Traceback" not in out["stderr"] and "study '" in out["stdout"]
    assert not (cli["work"] / f"v_{script}").exists()
    # it ends by saying what was validated: the trials, the datasets and the memory budgets
    last = out["stdout"].strip().splitlines()[-1]
    assert re.match(r"valid: study '\w+': \d+ trial\(s\) \(\d+ grid point\(s\) × \d+ sample\(s\)\)", last), last
    assert "dataset(s) " in last and "diag.memory_budget_gb = " in last and "Ray not started" in last, last
    if script == "ee_vs_standard":  # all three stages, the final one before its grid has run
        for name in ("ee_vs_standard_certify", "ee_vs_standard_grid", "ee_vs_standard'"):
            assert f"study '{name}" in out["stdout"]
        assert "the grid stage has no results yet" in out["stdout"]


def test_final_stage_without_grid_results_refuses(cli):
    assert_refused(cli["final_without_grid"], "'--chosen' = 'grid'", "run --stage grid", "--chosen paper")


def test_paper_study_validates_against_real_format_files(cli):
    out = cli["paper_all_present"]
    assert out["rc"] == 0, out["stderr"][-3000:]
    assert "skipped" not in out["stdout"] and "study 'ee_vs_standard_certify': 6 grid points" in out["stdout"]
    # 6 datasets × 2 ε × 3 τ0 with augmentation, + 3 without; final: 9 settings × 2 methods × 5 seeds
    assert "study 'ee_vs_standard_grid': 54 grid points" in out["stdout"]
    assert "study 'ee_vs_standard': 90 grid points" in out["stdout"]


def test_paper_study_with_an_absent_dataset_refuses(cli):
    line = assert_refused(cli["paper_one_absent"], "datasets not found: svhn: missing ", "test_32x32.mat",
                          "--present-datasets-only")
    assert "mnist" not in line.split("svhn")[0]
    out = cli["paper_one_absent_present_only"]
    assert out["rc"] == 0, out["stderr"][-3000:]
    assert out["stdout"].count("skipped dataset svhn (--present-datasets-only): missing") == 3  # each stage
    assert "study 'ee_vs_standard_certify': 5 grid points" in out["stdout"]  # mnist cifar10 cifar100 semeion kmnist


def test_crafted_cifar_pickle_refused_before_ray_and_runs_nothing(tmp_path):
    """Its own process: the security case end to end, as a user would hit it."""
    from test_data_real import write_cifar_with_payload

    marker = tmp_path / "pwned"
    write_cifar_with_payload(tmp_path / "data", marker)
    script = tmp_path / "cifar_study.py"
    script.write_text(
        "import sys\nfrom eeray.config import DataConfig, ModelConfig, TrialConfig\nfrom eeray.cli import main\n"
        "from eeray.study import Study\n"
        "def build(profile):\n    return Study('c', TrialConfig(data=DataConfig(name='cifar10'), "
        "model=ModelConfig(arch='lenet')))\n"
        "rc = main(build)\nprint('ray imported' if 'ray' in sys.modules else 'no ray')\nraise SystemExit(rc)\n")
    out = subprocess.run([sys.executable, str(script), "--smoke", "--data-root", str(tmp_path / "data"),
                          "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=180)
    line = assert_refused({"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr},
                          "data_batch_1 is corrupt", "refused global __builtin__.exec", "cs.toronto.edu")
    assert "no ray" in out.stdout and not marker.exists() and not (tmp_path / "r").exists(), line
