"""--resume restores Tune's trials from its experiment state and eeray's searcher from its own state file; Tune
uploads them one by one, so a kill can leave them a snapshot apart. :func:`reconcile` makes the searcher agree
with the trials, so the resumed experiment runs every point exactly once (the CI failure: the searcher had
suggested both points, the experiment state held one trial, and every resume exited 130)."""
import json
import pickle
import shutil

import pytest
import ray
import ray.cloudpickle as cloudpickle
from ray import tune

from eeray.raytune.atomic_storage import tune_storage
from eeray.raytune.search_state import StoredTrial, apply_record, drop_staged_state, reconcile
from eeray.raytune.searchers import GridOptunaSearch, PointsSearch

pytestmark = pytest.mark.ray
POINTS = [{"a": 1, "shape": (2, 3)}, {"a": 2, "shape": (2, 3)}]  # a tuple: stored configs hold lists


def _trainable():
    def trainable(config):  # local: pickled by value, since Ray's workers cannot import this test module
        tune.report({"score": config["a"]})

    return trainable


trainable = _trainable()


def fit(path, restore: bool):
    storage, fs = tune_storage(str(path))
    if restore:  # every restore in this one Ray session stages in one directory, as resumes on a cluster do
        drop_staged_state(str(path / "exp"), fs)
        tuner = tune.Tuner.restore(str(path / "exp"), trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=PointsSearch(POINTS), num_samples=2,
                                                                  max_concurrent_trials=1),
                           run_config=tune.RunConfig(name="exp", storage_path=storage, storage_filesystem=fs,
                                                     verbose=0))
    return sorted(r.config["a"] for r in tuner.fit())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real two-trial Tune experiment, run to the end through eeray's storage."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    path = tmp_path_factory.mktemp("search_state") / "done"
    try:
        assert fit(path, restore=False) == [1, 2]
        yield path
    finally:
        ray.shutdown()


def files(path):
    exp = path / "exp"
    return (max(exp.glob("experiment_state-*.json")), max(exp.glob("searcher-state-*.pkl")),
            max(exp.glob("search_gen_state-*.json")))


def keep_first_trial_only(path):
    """The experiment state of the snapshot before the second trial existed (the newer searcher states stay)."""
    state_file, _, _ = files(path)
    state = json.loads(state_file.read_text())
    state["trial_data"] = [t for t in state["trial_data"] if json.loads(t[0])["config"]["a"] == 1]
    state_file.write_text(json.dumps(state))


def forget_second_suggestion(path):
    """The searcher states of the snapshot before the second point was suggested (the experiment state stays)."""
    _, searcher_file, gen_file = files(path)
    searcher = pickle.loads(searcher_file.read_bytes())
    searcher["_suggested"] = [True, False]
    searcher_file.write_bytes(pickle.dumps(searcher))
    gen = cloudpickle.loads(gen_file.read_bytes())
    gen["counter"] = 1
    gen_file.write_bytes(cloudpickle.dumps(gen))


def copy(finished, tmp_path, name, damage):
    path = tmp_path / name
    shutil.copytree(finished, path)
    damage(path)
    return path


def test_an_experiment_state_a_snapshot_behind_its_searcher_runs_the_lost_point_on_resume(finished, tmp_path):
    as_left = copy(finished, tmp_path, "as_left", keep_first_trial_only)
    assert fit(as_left, restore=True) == [1]  # without reconcile: point 2 counts as suggested, and never runs

    path = copy(finished, tmp_path, "reconciled", keep_first_trial_only)
    storage, fs = tune_storage(str(path / "exp"))
    repairs = reconcile(storage, fs, PointsSearch)
    assert len(repairs) == 2, repairs
    assert "suggested again (no stored trial): {'a': 2, 'shape': (2, 3)}" in repairs[0]
    assert "trial counter was 2, the experiment state holds 1" in repairs[1]
    _, searcher_file, gen_file = files(path)
    assert pickle.loads(searcher_file.read_bytes())["_suggested"] == [True, False]
    gen = cloudpickle.loads(gen_file.read_bytes())
    assert (gen["counter"], gen["finished"], gen["name:ConcurrencyLimiter"]["live_trials"]) == (1, False, set())
    assert not list((path / "exp").glob(".*.tmp"))
    assert reconcile(storage, fs, PointsSearch) == []  # agreeing states are left as they are
    assert fit(path, restore=True) == [1, 2]


def test_a_searcher_a_snapshot_behind_the_experiment_state_does_not_run_a_point_twice(finished, tmp_path):
    as_left = copy(finished, tmp_path, "as_left", forget_second_suggestion)
    assert fit(as_left, restore=True) == [1, 2, 2]  # without reconcile: point 2 is suggested a second time

    path = copy(finished, tmp_path, "reconciled", forget_second_suggestion)
    storage, fs = tune_storage(str(path / "exp"))
    repairs = reconcile(storage, fs, PointsSearch)
    assert "stored but not recorded as suggested: {'a': 2, 'shape': (2, 3)}" in repairs[0], repairs
    assert fit(path, restore=True) == [1, 2]


def test_grid_optuna_search_hands_out_again_exactly_the_suggestions_without_a_stored_trial():
    points = [{"m": 1}, {"m": 2}]
    search = GridOptunaSearch(points, {"lr": tune.uniform(0, 1)}, metric="e", mode="min", samples_per_point=2)
    configs = {f"t{i}": search.suggest(f"t{i}") for i in range(4)}  # m = 1, 2, 1, 2
    stored = [StoredTrial(t, configs[t], done=False) for t in ("t0", "t1", "t2")]  # t3 was lost
    assert "1 suggestion(s) without a stored trial" in search.reconcile(stored)
    assert search._remaining == [0, 1] and sorted(search._owner) == ["t0", "t1", "t2"]
    assert search.suggest("t4")["m"] == 2 and search.suggest("t5") == search.FINISHED
    assert search.reconcile([*stored, StoredTrial("t4", {"m": 2, "lr": 0.5}, done=False)]) is None
    with pytest.raises(ValueError, match="is 0 of the searcher's points"):
        search.reconcile([StoredTrial("t9", {"m": 3}, done=True)])


def test_a_resume_on_a_cluster_that_outlived_the_last_driver_restores_nothing_that_driver_staged(finished, tmp_path):
    """Tune stages a restored experiment under the Ray session, named by its first trial's start: a second
    driver on the same cluster would find the first one's files there, never uploaded, newer than storage's."""
    path = copy(finished, tmp_path, "again", lambda p: None)
    assert fit(path, restore=True) == [1, 2]  # this driver's state files are now staged in the session
    storage, fs = tune_storage(str(path / "exp"))
    dropped = drop_staged_state(storage, fs)
    session = ray._private.worker._global_node.get_session_dir_path()
    assert dropped and all(p.startswith(session) for p in dropped), dropped
    assert {p.rsplit("/", 1)[1].split("-")[0] for p in dropped} == {"experiment_state", "searcher", "search_gen_state"}
    assert drop_staged_state(storage, fs) == []


def test_a_trial_the_record_holds_as_completed_is_terminated_in_an_older_experiment_state(finished, tmp_path):
    """Tune saves its state every few seconds, eeray's record at every event: a trial that completed after the
    last save is RUNNING in the state a kill leaves, and must not run again on --resume."""
    path = tmp_path / "stale"
    shutil.copytree(finished, path)
    state_file, _, _ = files(path)
    state = json.loads(state_file.read_text())
    second = json.loads(state["trial_data"][1][0])
    second["status"] = "RUNNING"
    state["trial_data"][1][0] = json.dumps(second)
    state_file.write_text(json.dumps(state))
    storage, fs = tune_storage(str(path / "exp"))
    repairs, ids = apply_record(storage, fs, {second["trial_id"]: "completed"})
    assert ids == {json.loads(t[0])["trial_id"] for t in state["trial_data"]}
    assert repairs and "1 trial(s) ended after Tune's last save" in repairs[0]
    assert [json.loads(t[0])["status"] for t in json.loads(files(path)[0].read_text())["trial_data"]] == \
        ["TERMINATED", "TERMINATED"]
    assert apply_record(storage, fs, {second["trial_id"]: "completed"})[0] == []  # agrees now: left as it is
    # a failed trial is left to Tune: an errored one runs again on --resume, as before
    state_file.write_text(json.dumps(state))
    assert apply_record(storage, fs, {second["trial_id"]: "failed"})[0] == []


def test_a_point_whose_trial_ended_after_the_last_save_is_not_suggested_again():
    search = PointsSearch(POINTS, None, ["one", "two"])
    assert search.suggest("t1") == POINTS[0] and search.suggest("t2") == POINTS[1]
    stored = [StoredTrial("t1", json.loads(json.dumps(POINTS[0])), done=True)]  # the state saved before t2
    assert search.reconcile(stored, {"one", "two"}) is None  # t2 is in the record: still suggested
    assert "suggested again (no stored trial): two" in search.reconcile(stored, {"one"})
    assert search.suggest("t3") == POINTS[1] and search.suggest("t4") == PointsSearch.FINISHED
