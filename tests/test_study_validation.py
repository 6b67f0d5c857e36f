"""Bad studies fail before Ray starts, with one message naming the field and the fix."""
import subprocess
import sys

import pytest
import yaml

from eeray.config import ConfigError, DataConfig, EEConfig, ModelConfig, TrialConfig
from eeray.study import Resources, Study, check_safe_exploration, validate_study


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
