"""The grid × Optuna searcher: each grid point gets its own seeded Optuna study, suggestions go round robin."""
import pytest
from ray import tune

from eeray.raytune.searchers import GridOptunaSearch, PointsSearch

pytestmark = pytest.mark.ray


def suggestions(seed: int):
    points = [{"variant": "", "model.lenet_mc": 1}, {"variant": "", "model.lenet_mc": 2}]
    search = GridOptunaSearch(points, {"optim.lr": tune.loguniform(1e-3, 1e-1)}, metric="train_error", mode="min",
                              samples_per_point=2, seed=seed)
    out = [search.suggest(f"t{i}") for i in range(5)]
    return search, out


def test_round_robin_over_grid_points_with_seeded_optuna():
    search, out = suggestions(seed=0)
    assert [o["model.lenet_mc"] for o in out[:4]] == [1, 2, 1, 2] and out[4] == search.FINISHED
    assert all(1e-3 <= o["optim.lr"] <= 1e-1 for o in out[:4])
    assert len({o["optim.lr"] for o in out[:4]}) == 4
    assert suggestions(seed=0)[1][:4] == out[:4]  # seeded: the same study suggests the same learning rates
    assert suggestions(seed=1)[1][:4] != out[:4]
    search.on_trial_complete("t0", {"train_error": 0.5, "optim.lr": out[0]["optim.lr"]})  # routed to point 1


def test_state_survives_save_and_restore(tmp_path):
    search, out = suggestions(seed=0)
    search.save(str(tmp_path / "s.pkl"))
    fresh = GridOptunaSearch([{"variant": ""}], {"optim.lr": tune.uniform(0, 1)}, metric="m", mode="min",
                             samples_per_point=1)
    fresh.restore(str(tmp_path / "s.pkl"))
    assert fresh.suggest("t9") == fresh.FINISHED  # all four samples were already handed out
    points = PointsSearch([{"a": 1}, {"a": 2}])
    assert [points.suggest("x"), points.suggest("y"), points.suggest("z")] == [{"a": 1}, {"a": 2}, points.FINISHED]


def test_points_search_suggests_a_branch_only_once_its_state_exists_and_never_holds_a_slot(tmp_path):
    """Trunks and trials alone first; a waiting branch is None (ask again), not FINISHED; a branch whose trunk
    failed is suggested (to fail at once with the trunk's reason); the restored searcher reads the states where
    the running driver keeps them."""
    from eeray.raytune.branches import Branching, Role

    roles = {"b": Role("branch", "tree", trunk="t", step=5), "t": Role("trunk", "tree", points=(5, 7),
             siblings={5: ("b",), 7: ("c",)}), "c": Role("branch", "tree", trunk="t", step=7), "s": Role("alone")}
    branching = Branching(roles, str(tmp_path / "states"), "seg")
    names = ["b", "t", "c", "s"]
    search = PointsSearch([{"n": n} for n in names], branching, names)
    assert [search.suggest(str(i)) for i in range(3)] == [{"n": "t"}, {"n": "s"}, None]
    branching.store.put("tree", 7, {"x": 1})
    assert search.suggest("3") == {"n": "c"} and search.suggest("4") is None  # b still waits for step 5
    search.save(str(tmp_path / "s.pkl"))
    moved = Branching(roles, str(tmp_path / "moved"), "seg")  # the driver now keeps the states elsewhere
    restored = PointsSearch([], None, [])
    restored.restore(str(tmp_path / "s.pkl"))
    assert restored._branching is moved and restored.suggest("5") is None
    moved.mark_trunk_failed("t", "TrialDiverged: loss nan at step 3")
    assert moved.trunk_failure("b") == "TrialDiverged: loss nan at step 3"
    assert restored.suggest("6") == {"n": "b"} and restored.suggest("7") == restored.FINISHED
    moved.store.put("tree", 5, {"x": 2})
    moved.store.put("tree", 7, {"x": 3})
    assert moved.discard_done("tree", {"c"}) == [7] and moved.store.has("tree", 5)  # b has not ended yet
