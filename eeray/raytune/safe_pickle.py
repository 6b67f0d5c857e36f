"""A searcher's saved state, read back without running anything its file names.

Tune saves eeray's searcher (``searcher-state-*.pkl``) with the experiment, and ``--resume`` reads it back: in
:func:`eeray.raytune.search_state.reconcile` and in the searcher's own ``restore``. A results directory on shared
storage is writable by others, and a plain ``pickle.load`` calls whatever callable the file names before anything
could check it. So these files are read by an unpickler that resolves only the classes a searcher's state holds:
:class:`~eeray.raytune.searchers.PointsSearch` saves plain data only (lists, dicts, strings, numbers, bools;
its branching as the segment's name), :class:`~eeray.raytune.searchers.GridOptunaSearch` its Optuna studies, whose
classes are listed below (found by recording every global that real states of float, log, quantized, integer and
categorical spaces, minimized and maximized, with completed, failed and open trials resolve). Anything else is
refused, naming the file and the global.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

SEARCHER_STATE_GLOBALS = frozenset({
    ("datetime", "datetime"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("optuna.distributions", "CategoricalDistribution"),
    ("optuna.distributions", "FloatDistribution"),
    ("optuna.distributions", "IntDistribution"),
    ("optuna.pruners._nop", "NopPruner"),
    ("optuna.samplers._lazy_random_state", "LazyRandomState"),
    ("optuna.samplers._random", "RandomSampler"),
    ("optuna.samplers._tpe.parzen_estimator", "_ParzenEstimator"),
    ("optuna.samplers._tpe.parzen_estimator", "_ParzenEstimatorParameters"),
    ("optuna.samplers._tpe.sampler", "TPESampler"),
    ("optuna.samplers._tpe.sampler", "default_gamma"),
    ("optuna.samplers._tpe.sampler", "default_weights"),
    ("optuna.search_space.intersection", "IntersectionSearchSpace"),
    ("optuna.storages._in_memory", "InMemoryStorage"),
    ("optuna.storages._in_memory", "_StudyInfo"),
    ("optuna.study._study_direction", "StudyDirection"),
    ("optuna.study.study", "Study"),
    ("optuna.trial._frozen", "FrozenTrial"),
    ("optuna.trial._state", "TrialState"),
    ("optuna.trial._trial", "Trial"),
    ("ray.tune.search.optuna.optuna_search", "OptunaSearch"),
})


class UnsafeState(pickle.UnpicklingError):
    """A saved searcher state names something a searcher's state never holds: it was not written by eeray's
    searcher (edited, crafted, or written by an older eeray), and loading it could run code."""


class _Restricted(pickle.Unpickler):
    def __init__(self, data: bytes, what: str):
        super().__init__(io.BytesIO(data))
        self.what = what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SEARCHER_STATE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeState(f"{self.what}: refused to load {module}.{name}: a searcher's saved state holds only plain "
                          "data and Optuna's studies, so this file was not written by eeray's searcher (edited or "
                          "crafted?) and loading it could run code")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeState(f"{self.what}: refused a persistent id: a searcher's saved state has none")


def load_searcher_state(data: bytes, what: str) -> dict[str, Any]:
    """The searcher's fields saved in ``data`` (the file ``what``), resolving only the classes listed above."""
    try:
        state = _Restricted(data, what).load()
    except UnsafeState:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UnsafeState(f"{what}: not a searcher state ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise UnsafeState(f"{what}: not a searcher state (a {type(state).__name__}, not the searcher's fields)")
    return state
