"""Process-wide CPU settings that the ``fcvit`` commands apply at start-up.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising with use to at most 32 MiB)
with a fresh ``mmap`` and gives it back to the kernel on ``free``. A network allocates and frees maps of
tens of MiB at every operator, so each one is page-faulted in again, page by page (docs/benchmarks.md measures
a GELU over a 34 MB map at 11 ms, 9.5 of them page faults, and 1.5 ms once the memory is reused).
PyTorch's CPU tuning guide answers with jemalloc or tcmalloc preloaded through ``LD_PRELOAD``; the same effect
is had in-process, with no extra library, by telling glibc (``mallopt``) to keep freed memory in its heap:
mmap threshold 1 GiB, trim threshold 2 GiB. The price is that freed memory stays with the process (its RSS
holds its peak), which suits a training, benchmark or inference process.

Set ``FCVIT_TUNE_MALLOC=0`` to keep glibc's defaults (e.g. to compare, or under another allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2**30
TRIM_THRESHOLD = 2**31 - 1

_state = {"allocator": "default"}


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap (see the module docstring); True if applied.

    Does nothing (False) off Linux/glibc or when ``FCVIT_TUNE_MALLOC=0``. Safe to call more than once.
    """
    if os.environ.get("FCVIT_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if ok:
        _state["allocator"] = f"glibc, mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold 2 GiB"
    return ok


def allocator() -> str:
    """How this process's CPU allocator is set: ``"default"`` or the tuning applied."""
    return _state["allocator"]
