"""Process-wide CPU settings that the ``fcvit`` commands apply at start-up.

**OpenMP threads** (:func:`prepare_command_process`, run by ``import fcvit`` before torch loads, in the
``fcvit`` command's process only). PyTorch's CPU operators run on an OpenMP team (GNU libgomp in the Linux
wheels). By default a thread that reaches a barrier first spins there for a while; when another process holds
one of the cores, the team's other thread is descheduled for a whole time slice and the spinning one burns
its core waiting, so a 2-thread step ran 10-30 times slower on a busy 2-core machine (docs/training.md).
Passive waiting (``OMP_WAIT_POLICY=PASSIVE``) cures that, but costs 1.6x on an idle machine (docs/training.md), so
the commands leave the wait policy to the user and only size the team to the CPUs this process may use: its
affinity mask and its cgroup's CPU quota (a container given 2 of 64 cores gets 2 threads, not 64), unless
``OMP_NUM_THREADS`` is set. The OpenMP runtime reads it when torch loads, hence an environment variable set
before that.

**Allocator.** glibc's malloc serves every block above its mmap threshold (128 KiB, rising with use to at most 32 MiB)
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
import math
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2**30
TRIM_THRESHOLD = 2**31 - 1

_state = {"allocator": "default"}


def is_fcvit_command() -> bool:
    """True in the process of the ``fcvit`` console script or of ``python -m fcvit.cli`` (torchrun's workers)."""
    if os.path.basename(sys.argv[0]).removesuffix(".exe") == "fcvit":
        return True
    argv = list(getattr(sys, "orig_argv", []))
    return any(a == "-m" and argv[i + 1 : i + 2] == ["fcvit.cli"] for i, a in enumerate(argv))


def cgroup_cpu_limit(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``2.5`` = 250 ms per 100 ms), or None when unlimited.

    Reads cgroup v2's ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") in the process's own group, then at the root
    (inside a container the root is the container's group), and cgroup v1's ``cpu.cfs_quota_us``/``_period_us``.
    """
    group = ""
    try:
        with open(proc_cgroup) as f:
            group = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), "")
    except OSError:
        pass
    candidates = [os.path.join(cgroup_root, group.lstrip("/"), "cpu.max"), os.path.join(cgroup_root, "cpu.max")]
    for path in candidates:
        try:
            with open(path) as f:
                quota, period = f.read().split()[:2]
        except (OSError, ValueError):
            continue
        return None if quota == "max" else int(quota) / int(period)
    try:
        with open(os.path.join(cgroup_root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(cgroup_root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 else quota_us / period_us


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by its cgroup's CPU quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(cpus, 1)


def openmp_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The OpenMP variables the commands add to ``environ`` (default ``os.environ``): none that the user set."""
    environ = os.environ if environ is None else environ
    added = {}
    cpus = usable_cpus()
    if "OMP_NUM_THREADS" not in environ and cpus < (os.cpu_count() or cpus):
        added["OMP_NUM_THREADS"] = str(cpus)
    return added


def prepare_command_process() -> dict[str, str]:
    """In the ``fcvit`` command's process, before torch loads: set :func:`openmp_environment`; returns what it set.

    Does nothing in other processes (``import fcvit`` in a user's program leaves the environment alone) or once
    torch is loaded (its OpenMP runtime has read the environment by then).
    """
    if not is_fcvit_command() or "torch" in sys.modules:
        return {}
    added = openmp_environment()
    os.environ.update(added)
    return added


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
