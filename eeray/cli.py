"""The command line every study file shares: ``python studies/<name>.py [--smoke | --profile P] [--resume] ...``.

A study file defines ``build(profile) -> Study`` and ends with ``raise SystemExit(main(build))``. Parsing and
validation import no Ray; :mod:`eeray.raytune` is imported only once the whole study has been validated.

Exit status: 0 every trial completed (or was stopped early by the study's own scheduler); 2 bad input or a
refusal (nothing ran); 3 the study ran to its end but some trials failed; 130 interrupted (Ctrl-C, SIGTERM or
SIGHUP), with the command that continues it printed; 1 the driver itself failed (a traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

from eeray import cpu_kernels
from eeray.config import ConfigError
from eeray.errors import FieldError
from eeray.identity import EXECUTION_FILE
from eeray.study import PROFILES, Study
from eeray.study_validation import validate_study


def default_profile() -> tuple[str, str]:
    import torch

    if torch.cuda.is_available():
        return "paper", "a GPU is visible"
    return "laptop", "no GPU visible"


HELP_FIELDS = ("Run:", "Smoke:", "Runtime:", "Expect:")


def help_epilog(doc: str | None) -> str | None:
    """The docstring's ``Run:``, ``Smoke:``, ``Runtime:`` and ``Expect:`` entries (each with its continuation
    lines), and where the reference lives; None when the docstring has none of them."""
    keep, on = [], False
    for line in (doc or "").splitlines():
        if line[:1].strip():  # a new field starts at column 0
            on = line.startswith(HELP_FIELDS)
        if on and line.strip():
            keep.append(line)
    return "\n".join([*keep, "", "Every flag, refusal and exit status: docs/reference.md"]) if keep else None


def parse_args(argv: Sequence[str] | None, doc: str | None, profiles: Sequence[str] = PROFILES) -> argparse.Namespace:
    return parser(doc, profiles).parse_args(argv)


def parser(doc: str | None = None, profiles: Sequence[str] = PROFILES) -> argparse.ArgumentParser:
    """The command line every study file shares (tests/test_docs.py checks that docs/reference.md lists each flag)."""
    # allow_abbrev=False: argparse would take --fr for --fresh, which deletes results
    # --help fits a screen: the study's question as the description and its Run/Smoke/Runtime/Expect block as
    # the epilog; the rest of the docstring (the design, the history) stays in the file and in docs/
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=help_epilog(doc),
                                allow_abbrev=False)
    # one line per flag (the reference, with every rule, is docs/reference.md)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run; = --profile smoke")
    p.add_argument("--profile", choices=list(profiles), help="default: paper with a GPU visible, else laptop")
    p.add_argument("--resume", action="store_true", help="continue the recorded execution (refused if changed)")
    p.add_argument("--extend", action="store_true", help="continue it and run the trials added since")
    p.add_argument("--fresh", action="store_true", help="delete this study's earlier results, start over")
    p.add_argument("--results-dir", metavar="DIR", default=os.environ.get("EERAY_RESULTS_DIR", "results"),
                   help="Parquet, MLflow store, Tune scratch (default ./results)")
    p.add_argument("--storage", metavar="URI", help="checkpoints on a cluster: an NFS path or s3://bucket/prefix")
    p.add_argument("--address", help="host:port, auto or local (default $RAY_ADDRESS, else local)")
    p.add_argument("--data-root", metavar="DIR", help="where real datasets live (sets EERAY_DATA_ROOT)")
    p.add_argument("--present-datasets-only", action="store_true", help="skip datasets whose files are absent")
    p.add_argument("--max-concurrent", metavar="N", type=int, help="at most N trials at once")
    p.add_argument("--no-branching", action="store_true", help="run every trial from scratch (no shared τ prefix)")
    p.add_argument("--validate-only", action="store_true", help="check trials, data files and memory; run nothing")
    return p


def _run_options(args: argparse.Namespace) -> None:
    """Options that the command line alone decides, refused before Ray starts (a bad value would otherwise reach
    Tune, be pickled into its state and fail every later --resume the same way)."""
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError("--max-concurrent", args.max_concurrent, "at most this many trials at once: an integer "
                          ">= 1 (leave it out for no limit beyond the cluster's resources)")
    results = Path(args.results_dir).expanduser()
    if results.exists() and not results.is_dir():
        raise ConfigError("--results-dir", args.results_dir, "must be a directory (or not exist yet): it is a file")
    existing = next((p for p in [results, *results.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("--results-dir", args.results_dir, f"must be writable: {existing} is not writable by this "
                          "user; choose another --results-dir")


def _data_options(args: argparse.Namespace) -> None:
    """--data-root (or $EERAY_DATA_ROOT) must be a directory; it reaches the trials through the environment (a
    local Ray's workers inherit it)."""
    root, source = (args.data_root, "--data-root") if args.data_root else (os.environ.get("EERAY_DATA_ROOT"),
                                                                          "EERAY_DATA_ROOT")
    if root and not os.path.isdir(os.path.expanduser(root)):
        raise ConfigError(source, root, "the data root must be an existing directory (the one holding MNIST/raw, "
                          "cifar-10-batches-py, ...; see docs/reference.md, 'Real datasets')")
    if args.data_root:
        os.environ["EERAY_DATA_ROOT"] = os.path.abspath(os.path.expanduser(args.data_root))


def _refuse_absent_datasets(study: Study, args: argparse.Namespace) -> None:
    """A study built without some of its datasets (absent here: ``Study.skipped_datasets``) runs only when the user
    passed --present-datasets-only; otherwise it is refused, naming what is absent and what is present."""
    from eeray.data import absent_datasets_error  # noqa: PLC0415 -- torch, but no Ray

    if study.skipped_datasets and not args.present_datasets_only:
        present = sorted({study.config(p).data.name for p in study.points()})
        raise absent_datasets_error(study.skipped_datasets, present)


@dataclass(frozen=True)
class RayChoice:
    """Which Ray runs the study, and why: said at the start of the run and in its summary."""

    address: str  # "local", "auto" or host:port
    source: str  # "--address", "RAY_ADDRESS" or "default"

    @property
    def local(self) -> bool:
        return self.address == "local"

    @property
    def why(self) -> str:
        return {"--address": f"--address {self.address}",
                "RAY_ADDRESS": f"RAY_ADDRESS={self.address} in the environment (as `ray job submit` sets it)",
                "default": "no --address and no RAY_ADDRESS"}[self.source]


def choose_ray(flag: str | None, environ: Mapping[str, str] = os.environ) -> RayChoice:
    """An address given explicitly is joined: ``--address``, else ``RAY_ADDRESS`` (how ``ray job submit``, ``ray
    exec`` and Ray's docs pass it to a driver). With neither, the study starts a Ray of its own, never one that a
    ``ray start`` merely left on the machine; ``--address local`` forces that even where RAY_ADDRESS is set.
    Checked before Ray starts: a dashboard (``http://``) or Ray Client (``ray://``) address is refused."""
    if flag:
        choice = RayChoice(flag.strip(), "--address")
    elif environ.get("RAY_ADDRESS", "").strip():
        choice = RayChoice(environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS")
    else:
        return RayChoice("local", "default")
    field, a = choice.source, choice.address
    if a in ("local", "auto"):
        return choice
    if a.startswith(("http://", "https://")):
        raise ConfigError(field, a, "a dashboard address is for `ray job submit --address`; a study joins a "
                          "cluster by its GCS address: host:port (the head's `ray start --head --port`, 6379 by "
                          "default), 'auto' on a node of the cluster, or 'local' for a Ray of its own")
    if a.startswith("ray://"):
        raise ConfigError(field, a, "Ray Client addresses are not supported: run the study on the head node or as "
                          "a `ray job submit` job (which sets RAY_ADDRESS), or use --address local")
    host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(field, a, "host:port of the head's GCS (e.g. 10.0.0.5:6379), 'auto' or 'local'")
    return choice


def main(build: Callable[[str], Study], argv: Sequence[str] | None = None,
         extra_profiles: Sequence[str] = ()) -> int:
    """Entry point of every study file; ``extra_profiles`` adds study-specific sizes to smoke/laptop/paper."""
    doc = sys.modules[build.__module__].__doc__ if build.__module__ in sys.modules else None
    args = parse_args(argv, doc, (*PROFILES, *extra_profiles))
    if args.fresh and (args.resume or args.extend):
        print("error: --fresh starts over; it does not go with --resume or --extend", file=sys.stderr)
        return 2
    try:
        _run_options(args)
        _data_options(args)
        cpu_kernels.choice()  # EERAY_CPU_KERNELS, read by every trial: refused here, not by each trial
        ray_choice = choose_ray(args.address)
    except FieldError as exc:  # ConfigError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.smoke:
        profile, why = "smoke", "--smoke"
    elif args.profile:
        profile, why = args.profile, "--profile"
    else:
        profile, why = default_profile()
        why = f"automatic: {why}; --profile to choose"
        recorded = _recorded_profile(build(profile).name, args) if (args.resume or args.extend) else None
        if recorded and recorded != profile:
            profile, why = recorded, "recorded by the execution being continued"
    print(f"eeray {Path(sys.argv[0]).name}: profile {profile} ({why})", flush=True)
    from eeray.data.real import CorruptDatasetError  # noqa: PLC0415 -- torch, but no Ray

    try:
        study = build(profile)  # may refuse: none of its datasets present (eeray.data.select_datasets)
        _refuse_absent_datasets(study, args)
        study = replace(study, description=study.description or (doc or "").strip().split("\n")[0])
        if args.no_branching:
            study = replace(study, branching=False)
        specs = validate_study(study, cluster=not ray_choice.local)
    except (ConfigError, FileNotFoundError, CorruptDatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"study '{study.name}': {len(specs)} grid points × {study.samples_per_point} sample(s); resources per "
          f"trial {study.resources.bundles()}", flush=True)
    for name, why in study.skipped_datasets.items():
        print(f"  skipped dataset {name} (--present-datasets-only): {why}", flush=True)
    if args.validate_only:
        print(validated_line(study, specs, ray_choice), flush=True)
        return 0
    from eeray.raytune.tuner import run_study

    return run_study(study, profile, args, ray_choice)


def validated_line(study: Study, specs, ray_choice: RayChoice) -> str:
    """The last line of --validate-only: what was checked (eeray.study_validation.validate_study), with the numbers a user
    compares against what they meant to run."""
    datasets = sorted({s.config.data.name for s in specs})
    budgets = sorted({s.config.diag.memory_budget_gb for s in specs})
    trials = len(specs) * study.samples_per_point
    checks = [f"{trials} trial(s) ({len(specs)} grid point(s) × {study.samples_per_point} sample(s)), every config",
              f"dataset(s) {', '.join(datasets)} (files present and well-formed, n_train and τ within them)",
              f"diagnostics memory within diag.memory_budget_gb = {'/'.join(f'{b:g}' for b in budgets)} GiB",
              f"resources for {'a cluster' if not ray_choice.local else 'this machine'}"]
    if study.require_safe_exploration:
        checks.append("m_H·m_(H−1) ≥ n for the safe-exploration guarantee")
    return f"valid: study '{study.name}': " + "; ".join(checks) + ". Nothing written; Ray not started."


def _recorded_profile(name: str, args) -> str | None:
    import json

    path = Path(args.results_dir) / name / EXECUTION_FILE
    try:
        return json.loads(path.read_text()).get("profile")
    except (OSError, ValueError):
        return None
