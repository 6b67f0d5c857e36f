"""One CPU arithmetic on every x86-64 machine: trials compute with the AVX2 kernels, whatever wider ones the CPU has.

PyTorch, MKL and oneDNN each pick their kernels by the CPU's widest instruction set, and a wider kernel sums in
another order: the same trial on an AVX-512 machine and on an AVX2 one differs from the first step (in the 9th
digit of the training loss of a width-sweep smoke trial) and training amplifies it, enough to move a CPU study's
verdict numbers (docs/results-schema.md, "What is bitwise"). Capping all three at AVX2 — every x86-64 CPU since
2013-2015 has it — makes a CPU trial the same function of its config on any of them: measured bitwise equal
between this project's AVX-512 machine and an emulated AVX2-only CPU (``benchmarks/cpu_kernels.py``). The
price on an AVX-512 CPU is 1.2× the training time of a LeNet trial and 1.8× of a ResNet-18 one
(``benchmarks/cpu_kernels_cost.py``); an AVX2 CPU runs the same kernels either way.

The caps are environment variables each library reads once, at its first use in a process, so they are set
before a trial's first tensor operation: by the driver before it starts a local Ray (whose workers inherit its
environment), and again by each trial and diagnostics actor (workers of a Ray cluster started elsewhere). Only
a CPU that has AVX2 and FMA is capped (Linux's /proc/cpuinfo says; PyTorch trusts the variable and would stop on
an illegal instruction elsewhere). A variable the user set is kept, and ``EERAY_CPU_KERNELS=native`` leaves all
three to the libraries (faster on an AVX-512 CPU; results then depend on the CPU);
``trials.hardware`` records the instruction set the trial's kernels actually used. GPUs and non-x86 CPUs (ARM)
are not affected: their kernels differ by device anyway.

Importing this module changes nothing and imports no torch.
"""
from __future__ import annotations

import functools
import os
import platform

from eeray.errors import FieldError

# the three libraries' documented switches: ATen's dispatch, MKL's Conditional Numerical Reproducibility branch,
# oneDNN's ISA limit
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
X86_64 = ("x86_64", "amd64")
OPT_OUT = "EERAY_CPU_KERNELS"  # "native": the libraries pick the kernels by the CPU


@functools.cache  # read once per process: run_trial, each trial and each actor ask
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux), empty where they cannot be read."""
    try:
        with open(cpuinfo) as f:
            return next((frozenset(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")),
                        frozenset())
    except OSError:
        return frozenset()


def portable_env(machine: str | None = None, flags: frozenset[str] | set[str] | None = None) -> dict[str, str]:
    """The variables to set on this machine: none off x86-64, or on a CPU without AVX2 and FMA (the AVX2 kernels
    of PyTorch need both)."""
    if (machine or platform.machine()).lower() not in X86_64:
        return {}
    return dict(PORTABLE_ENV) if {"avx2", "fma"} <= (cpu_flags() if flags is None else flags) else {}


def choice(environ=os.environ) -> str:
    """``EERAY_CPU_KERNELS``: 'portable' (unset) or 'native'; anything else is refused (the command line asks
    before Ray starts)."""
    value = environ.get(OPT_OUT, "portable") or "portable"
    if value not in ("portable", "native"):
        raise FieldError(OPT_OUT, value, "'native' lets PyTorch, MKL and oneDNN pick kernels by the CPU (results "
                         "then depend on it); unset or 'portable' caps them at AVX2 (eeray.cpu_kernels)")
    return value


def apply(environ=os.environ) -> dict[str, str]:
    """Set the caps in ``environ`` where the user has not set them (none with ``EERAY_CPU_KERNELS=native``);
    returns what was set."""
    if choice(environ) == "native":
        return {}
    added = {k: v for k, v in portable_env().items() if k not in environ}
    environ.update(added)
    return added


def describe() -> str:
    """The instruction set this process's PyTorch kernels use, and whether MKL's is capped: e.g. ``'AVX2'`` or
    ``'AVX512, MKL uncapped'`` (a process that computed before :func:`apply`, or a user's opt-out)."""
    import torch  # noqa: PLC0415 -- only where a trial runs

    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in X86_64:
        return capability
    mkl = os.environ.get("MKL_CBWR")
    return capability if mkl == PORTABLE_ENV["MKL_CBWR"] else f"{capability}, MKL {'uncapped' if not mkl else mkl}"
