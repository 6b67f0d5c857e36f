"""eeray.cpu_kernels: every x86-64 CPU trial computes with the AVX2 kernels, set before the trial's first kernel
even in a process that imported everything first, recorded in trials.hardware; a user's own choice is kept and
recorded. (Bitwise equality with an AVX2-only CPU is measured under emulation: benchmarks/cpu_kernels.py.)"""
import os
import platform
import subprocess
import sys

import pytest
from conftest import ROOT

from eeray import cpu_kernels

CAPPED = bool(cpu_kernels.portable_env())  # an x86-64 CPU with AVX2 and FMA (the CI machine's has them)

# a fresh interpreter: imports eeray and computes nothing before run_trial, then prints the trial's hardware and
# every steps and summary value (wall-clock columns aside)
CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1] + "/tests")
import torch
from test_trial import lenet_cfg
from eeray.records import MemorySink
from eeray.row_compare import excluded
from eeray.trial import run_trial
torch.set_num_threads(1)
sink = MemorySink()
result = run_trial(lenet_cfg(), sink)
steps = [{k: repr(v) for k, v in r.items() if k not in excluded("steps", r)} for r in sink.rows["steps"]]
print(json.dumps({"hardware": result.summary["hardware"], "steps": steps,
                  "final_train_loss": repr(result.summary["final_train_loss"])}))
"""


def _trial_in_a_fresh_process(**env: str) -> dict:
    import json

    clean = {k: v for k, v in os.environ.items() if k not in (*cpu_kernels.PORTABLE_ENV, cpu_kernels.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], env={**clean, **env}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_apply_sets_the_caps_on_an_avx2_cpu_and_keeps_what_the_user_set():
    env = {"ATEN_CPU_CAPABILITY": "default"}
    added = cpu_kernels.apply(env)
    if CAPPED:
        assert env == {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
        assert added == {"MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    avx2 = {"sse2", "avx", "avx2", "fma"}
    assert cpu_kernels.portable_env("aarch64", avx2) == {} and cpu_kernels.portable_env("arm64", avx2) == {}
    assert cpu_kernels.portable_env("x86_64", avx2) == cpu_kernels.PORTABLE_ENV
    assert cpu_kernels.portable_env("AMD64", avx2) == cpu_kernels.PORTABLE_ENV
    # PyTorch trusts ATEN_CPU_CAPABILITY: on a CPU without AVX2 it would stop on an illegal instruction
    assert cpu_kernels.portable_env("x86_64", {"sse2", "avx"}) == {}
    assert cpu_kernels.apply(env := {"EERAY_CPU_KERNELS": "native"}) == {} and env == {"EERAY_CPU_KERNELS": "native"}
    with pytest.raises(ValueError, match=r"EERAY_CPU_KERNELS = 'fast' is invalid: 'native' lets"):
        cpu_kernels.apply({"EERAY_CPU_KERNELS": "fast"})


def test_a_trial_sets_the_caps_itself_and_computes_as_with_them_set_at_start():
    """run_trial in a process started without the caps computes bit for bit as one started with them, and records
    AVX2 — on an AVX-512 machine too, where the libraries would otherwise pick AVX-512. Off x86-64 nothing is set
    and the record names the CPU's own kernels."""
    itself = _trial_in_a_fresh_process()
    if not CAPPED:  # nothing set: an x86-64 CPU without AVX2 says MKL is uncapped, an ARM one names its kernels
        x86 = platform.machine().lower() in cpu_kernels.X86_64
        assert ("MKL uncapped" in itself["hardware"]) == x86, itself["hardware"]
        return
    assert itself == _trial_in_a_fresh_process(**cpu_kernels.PORTABLE_ENV)
    assert itself["hardware"].endswith(", AVX2 (1 threads)"), itself["hardware"]
    # the user's own choice is kept, and the record says what the kernels were
    opted_out = _trial_in_a_fresh_process(EERAY_CPU_KERNELS="native")
    assert opted_out["hardware"].endswith(", MKL uncapped (1 threads)"), opted_out["hardware"]
    own = _trial_in_a_fresh_process(ATEN_CPU_CAPABILITY="default")
    assert own["hardware"].endswith(", DEFAULT (1 threads)"), own["hardware"]
