"""A grid over the scaling axes with Optuna inside each grid point.

Size-versus-alignment questions need every width, seed and optimizer on the grid, while a continuous axis such
as the learning rate is best tuned per width. :class:`GridOptunaSearch` runs one seeded ``OptunaSearch`` per
grid point and hands Tune ``samples_per_point`` suggestions from each, round robin, so all widths progress
together. Its state (every sub-study) is saved with the experiment, so ``--resume`` continues the same studies.
"""
from __future__ import annotations

import json
import pickle
from collections import Counter
from typing import AbstractSet as Set, Any, Mapping, Sequence

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from eeray.raytune.safe_pickle import load_searcher_state
from eeray.raytune.search_state import StoredTrial, matches, plain


class _PicklingSearcher(Searcher):
    """Tune saves a searcher's state with the experiment and restores it on ``--resume``: these keep all of it."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self._saved_fields(), f)

    def restore(self, checkpoint_path: str) -> None:
        # read back with the restricted unpickler: the file lies in a results directory others may write to
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(load_searcher_state(f.read(), checkpoint_path))

    def _saved_fields(self) -> dict[str, Any]:
        """What ``save`` pickles: the state's data, nothing :mod:`eeray.raytune.safe_pickle` would refuse."""
        return dict(self.__dict__)

    def reconcile(self, trials: Sequence[StoredTrial], recorded: Set[str] = frozenset()) -> str | None:
        """Agree with the trials Tune stored and the names eeray's record holds as ended
        (:mod:`eeray.raytune.search_state`); what changed, or None."""
        raise NotImplementedError

    def _point_of(self, config: Mapping[str, Any]) -> int:
        # a PointsSearch trial's config is its point: one dictionary look-up (a resume of thousands of trials
        # would otherwise compare every stored config with every point)
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = {}
            for i, p in enumerate(self._points):
                index.setdefault(json.dumps(plain(p), sort_keys=True), []).append(i)
        exact = index.get(json.dumps(plain(dict(config)), sort_keys=True))
        if exact is not None and len(exact) == 1:
            return exact[0]
        found = [i for i, p in enumerate(self._points) if matches(p, config)]
        if len(found) != 1:
            raise ValueError(f"a stored trial's config {config} is {len(found)} of the searcher's points, not one")
        return found[0]


class GridOptunaSearch(_PicklingSearcher):
    def __init__(self, points: Sequence[Mapping[str, Any]], space: Mapping[str, Any], *, metric: str, mode: str,
                 samples_per_point: int, seed: int = 0):
        super().__init__(metric=metric, mode=mode)
        if not points:
            raise ValueError("GridOptunaSearch needs at least one grid point")
        self._points = [dict(p) for p in points]
        self._subs = [OptunaSearch(space=OptunaSearch.convert_search_space(dict(space)), metric=metric, mode=mode,
                                   seed=seed + i) for i in range(len(points))]
        self._remaining = [samples_per_point] * len(points)
        self._owner: dict[str, int] = {}
        self._cursor = 0

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(len(self._points)):
            i = self._cursor
            self._cursor = (self._cursor + 1) % len(self._points)
            if self._remaining[i] > 0:
                suggestion = self._subs[i].suggest(trial_id)
                if suggestion is None:
                    return None
                self._remaining[i] -= 1
                self._owner[trial_id] = i
                return {**self._points[i], **suggestion}
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner:
            self._subs[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._owner:
            self._subs[self._owner[trial_id]].on_trial_complete(trial_id, result, error)

    def reconcile(self, trials: Sequence[StoredTrial], recorded: Set[str] = frozenset()) -> str | None:
        # Tune saves a GridOptunaSearch experiment's state at every loop step (tuner.TUNE_SNAPSHOT_S), so no trial
        # ends unsaved: ``recorded`` adds nothing the stored trials do not already say
        # every suggestion is in _owner, so a point's samples are what it has left plus what it handed out
        handed = Counter(self._owner.values())
        samples = [left + handed[i] for i, left in enumerate(self._remaining)]
        stored = {t.trial_id: self._point_of(t.config) for t in trials}
        kept = Counter(stored.values())
        remaining = [samples[i] - kept[i] for i in range(len(self._points))]
        lost = sorted(t for t in self._owner if t not in stored)
        if remaining == self._remaining and not lost:
            return None
        # a lost trial's Optuna trial stays open in its sub-study; TPE leaves open trials out of its model
        unrecorded = sum(t not in self._owner for t in stored)
        message = (f"{len(lost)} suggestion(s) without a stored trial are made again, {unrecorded} stored trial(s) "
                   f"were not recorded as suggested; samples left per point now {remaining}")
        self._remaining = remaining
        self._owner = {t: i for t, i in self._owner.items() if t in stored}
        return message



class PointsSearch(_PicklingSearcher):
    """Exactly the study's points, in order, each once: Tune's trial config *is* the point. (Tune's own grid
    needs a full cartesian product, and a variant that pins an axis makes the study's grid a union of them.)

    With ``branching`` (:class:`eeray.raytune.branches.Branching`), trunks and trials alone come first and a
    branch is suggested only once its trunk's state at its branch step exists (or its trunk failed): until then
    ``suggest`` answers None ("nothing yet", Tune asks again) rather than FINISHED, so no branch ever holds a
    slot while it waits — with every slot held by a waiting branch the trunk could never run. Which points were
    suggested is pickled with the experiment, so ``--resume`` suggests each point once."""

    def __init__(self, points: Sequence[Mapping[str, Any]], branching=None, names: Sequence[str] = ()):
        super().__init__()
        self._points = [dict(p) for p in points]
        self._branching, self._names = branching, list(names)
        if branching is not None:  # stable: the study's order within trunks/alone, and within branches
            order = sorted(range(len(self._points)), key=lambda i: branching.role(self._names[i]).kind == "branch")
            self._points, self._names = [self._points[i] for i in order], [self._names[i] for i in order]
        self._suggested: list[bool] = [False] * len(self._points)

    def _saved_fields(self) -> dict[str, Any]:
        # the branching as its segment's name: restore takes this driver's own instance anyway, and the object
        # (a store with its file system) is not plain data the restricted unpickler would resolve
        fields = dict(self.__dict__)
        if self._branching is not None:
            fields["_branching"] = getattr(self._branching, "segment", self._branching)
        return fields

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._branching is not None:  # the states where this driver keeps them, not where the pickle's did
            from eeray.raytune.branches import active

            self._branching = active(self._branching)

    def suggest(self, trial_id: str) -> dict | None:
        if all(self._suggested):
            return Searcher.FINISHED
        for i, point in enumerate(self._points):
            if self._suggested[i]:
                continue
            if self._branching is None or self._branching.ready(self._names[i]):
                self._suggested[i] = True
                return dict(point)
        return None  # every point left is a branch whose trunk has not reached its branch step yet

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def reconcile(self, trials: Sequence[StoredTrial], recorded: Set[str] = frozenset()) -> str | None:
        # a point whose trial ended after Tune's last save is in the record only: it must not run again
        stored = {self._point_of(t.config) for t in trials}
        ended = {i for i in range(len(self._points)) if self._names and self._names[i] in recorded} - stored
        suggested = [i in stored or i in ended for i in range(len(self._points))]
        if suggested == self._suggested:
            return None
        changed = [(i, now) for i, (was, now) in enumerate(zip(self._suggested, suggested)) if was != now]
        again = [self._label(i) for i, now in changed if not now]
        known = [self._label(i) for i, now in changed if now and i in stored]
        late = [self._label(i) for i, now in changed if now and i not in stored]
        self._suggested = suggested
        return "; ".join([*([f"suggested again (no stored trial): {', '.join(again)}"] if again else []),
                          *([f"stored but not recorded as suggested: {', '.join(known)}"] if known else []),
                          *([f"ended after Tune's last save (in the record), not suggested again: {', '.join(late)}"]
                            if late else [])])

    def _label(self, i: int) -> str:
        return self._names[i] if self._names else str(self._points[i])
