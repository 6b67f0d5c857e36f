"""A study execution's identity (what --resume compares) and the one-driver lock, without Ray."""
import os
import signal
import subprocess
import sys
import time

import pytest

from eeray.config import ConfigError, DataConfig, OptimConfig, TrialConfig
from eeray.identity import compare, definition, fingerprint
from eeray.run_lock import StudyLock, StudyLocked
from eeray.study import Study
from eeray.study_validation import validate_study


def study(seeds=(0, 1), lr=0.1, **kw) -> Study:
    base = TrialConfig(data=DataConfig(name="sine"), optim=OptimConfig(lr=lr))
    return Study(name="s", base=base, grid={"seed": list(seeds)}, **kw)


def test_the_same_study_has_the_same_fingerprint_and_no_difference():
    a, b = definition(study(), "smoke"), definition(study(), "smoke")
    assert fingerprint(a) == fingerprint(b) and compare(a, b).empty


def test_an_added_grid_value_is_an_added_trial_and_only_that():
    diff = compare(definition(study(), "smoke"), definition(study(seeds=(0, 1, 2)), "smoke"))
    assert diff.added == ["seed=2"] and diff.only_added and not diff.changed


def test_a_changed_base_hyperparameter_changes_every_trial_field_by_field():
    diff = compare(definition(study(), "smoke"), definition(study(lr=0.02), "smoke"))
    assert not diff.only_added and set(diff.changed) == {"seed=0", "seed=1"}
    assert diff.changed["seed=0"] == {"optim.lr": (0.1, 0.02)}
    assert "trial 'seed=0' changed: optim.lr: 0.1 -> 0.02" in "\n".join(diff.lines())


def test_profile_and_study_settings_are_part_of_the_identity():
    diff = compare(definition(study(), "smoke"), definition(study(max_failures=3), "laptop"))
    assert diff.settings == {"profile": ("smoke", "laptop"), "study.max_failures": (1, 3)}
    assert fingerprint(definition(study(), "smoke")) != fingerprint(definition(study(), "laptop"))


def test_removed_trials_are_named():
    diff = compare(definition(study(seeds=(0, 1, 2)), "smoke"), definition(study(), "smoke"))
    assert diff.removed == ["seed=2"] and not diff.only_added


def test_a_summary_column_the_trials_table_does_not_have_is_refused_before_ray():
    with pytest.raises(ConfigError, match="study.summary_columns.*'method2_rank'"):
        validate_study(study(summary_columns=("final_train_error", "method2_rank")))


# --------------------------------------------------------------------------- the lock
HOLD = "import sys, time; from eeray.run_lock import StudyLock; l = StudyLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(120)"


def test_a_live_holder_is_named_and_a_killed_one_releases_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyLocked, match=f"live .*pid {holder.pid} on host"):
            StudyLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup: the kernel drops the flock with the process
        holder.wait()
    lock = StudyLock(tmp_path).acquire()
    assert lock.previous and lock.previous["pid"] == holder.pid  # the stale holder, taken over
    lock.release()


def test_a_released_lock_is_taken_again_and_names_no_stale_holder(tmp_path):
    for _ in range(3):
        with StudyLock(tmp_path) as lock:
            assert str(os.getpid()) in lock.path.read_text() and lock.previous is None
        time.sleep(0.01)
