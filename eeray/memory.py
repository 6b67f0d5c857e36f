"""Give the driver's freed memory back to the operating system, so its RSS tracks what it holds.

Measured on a 400-trial trivial study (2 cores, glibc 2.36, Ray 2.60): the driver's glibc heaps hold freed but
unreturned blocks that grow with the trials run (10 MB free at trial 100, 99 MB at trial 400, ``mallinfo2``), on
top of the bytes still in use: RSS grew 413 MB per 1,000 trials. Tune's controller, Ray's core-worker threads and
pyarrow allocate and free many small blocks from several threads; glibc returns a heap's free pages only from its
top, so fragmentation strands them. ``malloc_trim(0)`` releases every arena's free pages (``madvise``), and a
collection first frees the cycles the trial ends left. Every ``RELEASE_EVERY`` trial ends, for a few milliseconds
each time, this brought the steady growth of the same study down to ~160 MB per 1,000 trials, and the peak RSS
growth that ``benchmarks/scale.py`` measures from 483 to 284 MB per 1,000 trials (100 → 1,000 trials;
``benchmarks/results/scale_cpu_memory_release.md``). What remains is mostly what Tune itself keeps for every trial
it has run (its ``Trial`` objects: ~150 Python objects per trial) and the end of the study's transient peak.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

RELEASE_EVERY = 50  # trial ends between releases


def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:  # glibc only: musl and others have no malloc_trim, and need none of this
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release() -> bool:
    """Collect garbage cycles, then return freed heap pages to the OS; True when the trim ran (glibc)."""
    gc.collect()
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
