"""Configs: the flat (dotted) form round-trips, and bad input fails before any work with one clear message."""
import pytest

from eeray.config import (ConfigError, DataConfig, EEConfig, OptimConfig, TrainConfig, TrialConfig, from_dict,
                          from_flat, to_dict, to_flat, validate)


def test_flat_round_trip_with_exploit_optimizer():
    cfg = TrialConfig(ee=EEConfig(exploit_optim=OptimConfig(name="lbfgs", lbfgs_iters=7)), seed=3)
    flat = to_flat(cfg)
    assert flat["ee.exploit_optim.name"] == "lbfgs" and flat["ee.exploit_optim.lbfgs_iters"] == 7
    assert from_flat(flat) == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_replace_with_dotted_keys():
    cfg = TrialConfig().replace(**{"ee.epsilon": 1e-5, "ee.exploit_optim.name": "lbfgs", "seed": 4})
    assert cfg.ee.epsilon == 1e-5 and cfg.ee.exploit_optim.name == "lbfgs" and cfg.seed == 4


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"'ee.epsilom'.*unknown key; valid keys: .*ee\.epsilon"):
        TrialConfig().replace(**{"ee.epsilom": 1e-3})


@pytest.mark.parametrize("dotted, value, message", [
    ("ee.tau", 1.5, r"'ee.tau' = 1.5 is invalid: with tau_unit 'fraction', τ0 must be in \[0, 1\]"),
    ("ee.epsilon", 0.0, r"'ee.epsilon' = 0.0 is invalid: must be a finite number > 0"),
    ("ee.epsilon", -1e-3, r"'ee.epsilon' = -0.001 is invalid"),
    ("optim.name", "adagrad", r"'optim.name' = 'adagrad' is invalid: must be one of 'sgd', 'adam', 'adamw', "
                              r"'lbfgs' or a user factory"),
    ("ee.m_H", 0, r"'ee.m_H' = 0 is invalid: must be an integer > 0"),
    ("data.name", "imagenet", r"'data.name' = 'imagenet' is invalid: must be one of 'sine'"),
    ("train.loss", "ce", r"'train.loss' = 'ce' is invalid: dataset 'sine' is binary"),
    ("optim.momentum", 1.0, r"'optim.momentum' = 1.0 is invalid: must be in \[0, 1\)"),
])
def test_bad_values_name_field_value_and_valid(dotted, value, message):
    with pytest.raises(ConfigError, match=message):
        validate(TrialConfig().replace(**{dotted: value}))


def test_tau_in_epochs_outside_the_run():
    cfg = TrialConfig(train=TrainConfig(epochs=10), ee=EEConfig(tau=11, tau_unit="epochs"))
    with pytest.raises(ConfigError, match=r"'ee.tau' = 11 .*integer in \[0, 10\]"):
        validate(cfg)


def test_tau_in_steps_outside_the_run_fails_before_training():
    from eeray.trial import run_trial

    cfg = TrialConfig(train=TrainConfig(epochs=3), ee=EEConfig(tau=301, tau_unit="steps"))
    with pytest.raises(ConfigError, match=r"'ee.tau' = 301 .*outside the run \(0..3 steps"):
        run_trial(cfg)


def test_lbfgs_is_only_an_exploitation_optimizer():
    with pytest.raises(ConfigError, match="G̃"):
        validate(TrialConfig(optim=OptimConfig(name="lbfgs")))


def test_augmentation_only_where_the_paper_has_one():
    with pytest.raises(ConfigError, match=r"'data.augment' = True .*no paper augmentation"):
        validate(TrialConfig(data=DataConfig(name="sine", augment=True)))


def test_user_factory_must_import():
    from eeray.wrapper import make_optimizer_factory

    with pytest.raises(ConfigError, match="cannot import the user factory"):
        make_optimizer_factory(OptimConfig(name="no_such_module:make"))


def test_importing_eeray_and_running_a_trial_imports_no_ray():
    import subprocess
    import sys

    code = ("import sys, eeray, eeray.diagnostics, eeray.analysis\n"
            "eeray.run_trial(eeray.TrialConfig(train=eeray.TrainConfig(epochs=2), ee=eeray.EEConfig(tau=0.5)))\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
