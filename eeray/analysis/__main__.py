"""``python -m eeray.analysis report <results_dir> --study <name> [--out DIR]``: write the study's HTML report."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eeray.analysis", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="write a static HTML report of one study's Parquet results")
    r.add_argument("results_dir", help="the directory a study wrote to (the study's --results-dir, default results)")
    r.add_argument("--study", required=True, help="study name, e.g. width_sweep, sine_wave, optimizer_sweep")
    r.add_argument("--out", help="output directory (default <results_dir>/<study>/report)")
    r.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the intervals (default 1000)")
    r.add_argument("--seed", type=int, default=0, help="seed of the bootstrap generator (default 0)")
    args = p.parse_args(argv)

    from eeray.analysis.report import write_report  # matplotlib and pandas only once the arguments are fine

    try:
        index = write_report(args.results_dir, args.study, args.out, n_boot=args.n_boot, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}\nopen:   {index.resolve().as_uri()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
