"""The analysis's cluster bootstrap: one resample at a time (scipy per resample, as before) against all resamples
of one length at once (``batch_estimates``), in one run, replicates checked bit-for-bit equal.

Cases: planted width-sweep measures (error, alignment, size; clusters = seeds) at the sizes a study's summary
meets: the laptop profile's group (6 seeds × 8 widths = 48 trials), a larger one (20 × 16 = 320 trials: Kendall
through scipy, above ``PAIRWISE_KENDALL_MAX``), and the whole summary of a 4-group study as width_sweep prints it
(``association_table`` + ``verdict_stability``, 6 seeds × 8 widths per group), timed against the same summary
with the per-resample bootstrap.

Run:  python benchmarks/association.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from unittest import mock

import numpy as np
import pandas as pd

from eeray.analysis import stats

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def planted(seeds: int, widths: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(trials, 3) error, alignment, size with ties in alignment (an aligned fraction of 40 evaluations) and in
    size (one per width); (trials,) seeds."""
    m_c = np.tile(np.arange(1, widths + 1), seeds)
    aligned = np.round(40 / (1 + np.exp(-(m_c - widths / 2) / 2 - rng.normal(size=m_c.size)))) / 40
    error = 0.5 * (1 - aligned) + 0.05 * rng.normal(size=m_c.size)
    return np.column_stack([error, aligned, 50_000.0 * m_c]), np.repeat(np.arange(seeds), widths)


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def per_resample(data, clusters, n_boot, seed):
    return stats.cluster_bootstrap(data, clusters, stats.estimates, n_boot=n_boot, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for seeds, widths in ((6, 8), (20, 16)):
        data, clusters = planted(seeds, widths, rng)
        t_one, (one, _) = best_of(lambda: per_resample(data, clusters, 1000, 0), args.repeats)
        t_all, (batch, _) = best_of(lambda: stats._bootstrap_estimates(data, clusters, 1000, 0), args.repeats)
        assert np.array_equal(one, batch, equal_nan=True), "the batched replicates differ"
        rows.append({"case": f"cluster_bootstrap, {seeds} seeds × {widths} widths = {len(data)} trials, 1000 resamples",
                     "per_resample_s": t_one, "batched_s": t_all, "ratio": t_all / t_one, "equal": True})
        print(json.dumps(rows[-1]), flush=True)
    groups = []
    for dataset in ("random16", "digits16"):
        for family in ("standard", "ee"):
            data, clusters = planted(6, 8, rng)
            groups.append(pd.DataFrame({"dataset": dataset, "family": family, "status": "completed", "seed": clusters,
                                        stats.OUTCOME: data[:, 0], stats.ALIGNMENT: data[:, 1], stats.SIZE: data[:, 2]}))
    measures = pd.concat(groups, ignore_index=True)

    def summary():
        return stats.survival_table(stats.association_table(measures), stats.verdict_stability(measures))

    t_new, new = best_of(summary, args.repeats)
    with mock.patch.object(stats, "_bootstrap_estimates", per_resample):
        t_old, old = best_of(summary, args.repeats)
    pd.testing.assert_frame_equal(new, old)
    rows.append({"case": "width_sweep's summary: association_table + verdict_stability, 4 groups of 48 trials",
                 "per_resample_s": t_old, "batched_s": t_new, "ratio": t_new / t_old, "equal": True})
    print(json.dumps(rows[-1]), flush=True)
    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "repeats": args.repeats}
    with open(os.path.join(OUT, "association_cpu.json"), "w") as f:
        json.dump({**meta, "results": rows}, f, indent=1)
    lines = [f"# Cluster bootstrap: per resample vs batched ({meta['machine']}, {meta['date']}, best of "
             f"{args.repeats})", "", "| case | per resample s | batched s | batched / per resample | equal |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['per_resample_s']:.3f} | {r['batched_s']:.3f} | {r['ratio']:.3f} | "
              f"{'bit for bit' if r['equal'] else 'no'} |" for r in rows]
    with open(os.path.join(OUT, "association_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
