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
