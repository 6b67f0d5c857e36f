"""A branched study without Ray: each tree's trunk, then its branches from the stored states, in one process.

Tests and benchmarks use it to compare a branched study with the same study from scratch (the Ray runner is
:mod:`eeray.raytune.branches`). It runs :func:`eeray.trial.run_trial`, which reads the branching plan
(:mod:`eeray.branching`); living apart from the plan keeps the two from importing each other.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from eeray.branch_states import MemoryStateStore, OfferingSink
from eeray.branching import Tree, plan_trees, steps_per_epoch_of, tree_id
from eeray.config import TrialConfig, to_flat
from eeray.records import NullSink
from eeray.results import ResultsWriter
from eeray.trial import run_trial


@dataclass
class Ran:
    """One trial of :func:`run_branched`: ``trunk`` and ``branch_step`` are None for a trial run from scratch."""

    index: int
    result: Any
    seconds: float  # wall time of this trial's own run_trial call (setup included)
    cpu_seconds: float  # CPU time of this process during that call (on a shared machine, the trial's own cost)
    steps_run: int  # optimizer steps on the data clock that this call executed (total − branch step)
    trunk: int | None = None
    branch_step: int | None = None
    error: str | None = None  # the exception, when the trial failed (result is then None)


def run_branched(configs: Sequence[TrialConfig], sink_for=None, *, store=None, branched: bool = True) -> list[Ran]:
    """Run a study's trials without Ray, trunk first, then its branches from the stored states (each state is
    discarded once every branch at that step has started; ``store``: a :class:`BranchStateStore`, default in
    memory). ``branched=False`` runs every trial from scratch.
    ``sink_for(i)`` gives trial i's sink; a branch's sink receives only the rows after its branch step — its
    prefix is the trunk's rows before it (:func:`prefix_rows`). Returns one :class:`Ran` per config, in order.

    Failures: a trial that raises gets ``Ran.error`` and the study goes on. A trunk that fails after offering a
    state still has its branches at that state run (their prefix is complete); the branches still waiting for a
    later state fail with the trunk's reason. A failed branch leaves its siblings alone."""
    sink_for = sink_for or (lambda i: NullSink())
    store = MemoryStateStore() if store is None else store
    spe = [steps_per_epoch_of(c) for c in configs]
    trees = plan_trees(configs, spe) if branched else [Tree(i) for i in range(len(configs))]
    out: dict[int, Ran] = {}

    def attempt(i: int, steps_run: int, trunk: int | None, step: int | None, **kwargs) -> Ran:
        t0, c0 = time.perf_counter(), time.process_time()
        result, error = None, None
        try:
            result = run_trial(configs[i], **kwargs)
        except Exception as exc:  # noqa: BLE001 — recorded; one trial's failure is not the study's
            error = f"{type(exc).__name__}: {exc}"
        return Ran(i, result, time.perf_counter() - t0, time.process_time() - c0, steps_run, trunk, step, error)

    for tree in trees:
        trunk_cfg = configs[tree.trunk]
        name = tree_id(trunk_cfg)
        total = trunk_cfg.train.epochs * spe[tree.trunk]
        out[tree.trunk] = attempt(tree.trunk, total, None, None, branch_points=tree.branch_points,
                                  sink=OfferingSink(sink_for(tree.trunk), store, name))
        for step in tree.branch_points:
            members = [i for i, s in tree.branches.items() if s == step]
            if not store.has(name, step):  # the trunk failed before offering it
                for i in members:
                    out[i] = Ran(i, None, 0.0, 0.0, 0, tree.trunk, step,
                                 f"trunk (trial {tree.trunk}) failed before branch step {step}: {out[tree.trunk].error}")
                continue
            state = store.get(name, step)
            for i in members:
                out[i] = attempt(i, total - step, tree.trunk, step, sink=sink_for(i), branch_from=state)
            store.discard(name, step)
    return [out[i] for i in range(len(configs))]


def write_results(results_dir: str, study: str, names: Sequence[str], configs: Sequence[TrialConfig],
                  ran: Sequence[Ran], sinks: Sequence[Any]) -> list[str]:
    """Parquet for a study run with :func:`run_branched` and ``MemorySink``s (no Ray): each trial's own rows, so
    a shared prefix is stored once (under its trunk); ``trunk_trial_id`` / ``branch_step`` in ``trials``.
    Returns the trial ids (``t0000``, ... in config order)."""
    writer = ResultsWriter(results_dir, study)
    ids = [f"t{i:04d}" for i in range(len(configs))]
    for i, (cfg, r, sink) in enumerate(zip(configs, ran, sinks)):
        if r.error is not None:
            raise ValueError(f"trial {i} failed ({r.error}); write_results writes completed studies only")
        for table in ("steps", "diagnostics", "safety"):
            if sink.rows[table]:
                writer.write_chunk(table, ids[i], "all", sink.rows[table], cfg.data.name)
        summary = {k: v for k, v in r.result.summary.items() if k != "status"}
        writer.write_trial(ids[i], {**summary, "trial_name": names[i], "status": "completed", "attempts": 1,
                                    "trunk_trial_id": None if r.trunk is None else ids[r.trunk],
                                    "branch_step": r.branch_step,
                                    **{f"cfg.{k}": v for k, v in to_flat(cfg).items()}}, cfg.data.name)
    if configs:  # a table no trial wrote to: an empty file with its schema, as the driver leaves it
        writer.write_empty_tables(configs[0].data.name)
    return ids
