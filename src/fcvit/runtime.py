"""Process-wide CPU settings that the ``fcvit`` commands apply at start-up and while they run.

**OpenMP threads.** PyTorch's CPU operators run on an OpenMP team (GNU libgomp in the Linux wheels). A thread
that reaches a barrier first spins there for a while. When another process holds one of the cores, the team's
other thread is descheduled for whole time slices and every operator waits for it, so a 2-thread step ran
10-30 times slower on a busy 2-core machine (docs/training.md). Two remedies were measured there:

* passive waiting (``OMP_WAIT_POLICY=PASSIVE``) cures the busy case but costs 1.6x on an idle machine, so the
  commands leave the wait policy to the user;
* a team no larger than the cores other processes leave free cures it at no cost when idle. The commands do
  that, twice: before torch loads, :func:`prepare_command_process` sizes the team to the CPUs this process may
  use (its affinity mask and cgroup CPU quota: a container given 2 of 64 cores gets 2 threads, not 64); while
  they run, :func:`adapt_threads` (called at every step of every loop, via the progress display) re-fits it
  every few seconds to the cores the other processes left idle, as read from ``/proc/stat``
  (:class:`ThreadGovernor`). The user's ``OMP_NUM_THREADS`` or a command's ``--threads`` turns both off;
  ``FCVIT_ADAPT_THREADS=0`` turns off the second. A changing team changes the order of some sums, so a run
  repeats bit for bit only when its thread count does (pin it with ``OMP_NUM_THREADS`` for that).

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
import time
from collections.abc import Callable, Mapping, Sequence

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 2**30
TRIM_THRESHOLD = 2**31 - 1

ADAPT_INTERVAL_S = 2.0  # how often the thread team is re-fitted to the free cores

_state: dict = {"allocator": "default", "adapt": False, "governor": None, "pinned": False}


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


def may_adapt_threads(environ: Mapping[str, str]) -> bool:
    """Whether the command may re-fit its thread team as it runs: not when the user set ``OMP_NUM_THREADS`` or
    ``FCVIT_ADAPT_THREADS=0``."""
    return "OMP_NUM_THREADS" not in environ and environ.get("FCVIT_ADAPT_THREADS", "1") != "0"


def prepare_command_process() -> dict[str, str]:
    """In the ``fcvit`` command's process, before torch loads: set :func:`openmp_environment`; returns what it set.

    Also decides whether :func:`adapt_threads` may re-fit the team later (:func:`may_adapt_threads`). Does
    nothing in other processes (``import fcvit`` in a user's program leaves the environment alone) or once torch
    is loaded (its OpenMP runtime has read the environment by then).
    """
    if not is_fcvit_command() or "torch" in sys.modules:
        return {}
    _state["adapt"] = may_adapt_threads(os.environ)
    added = openmp_environment()
    os.environ.update(added)
    return added


def read_cpu_busy(cpus: Sequence[int], stat_path: str = "/proc/stat") -> float | None:
    """CPU-seconds that ``cpus`` have spent busy since boot, all processes together; None where unreadable.

    Busy is every column of their ``/proc/stat`` lines but idle and iowait (user, nice, system, irq, softirq, steal).
    """
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    try:
        with open(stat_path) as f:
            for line in f:
                name, *values = line.split()
                if name in wanted:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
                    ticks += user + nice + system + irq + softirq + steal
                    wanted.discard(name)
    except (OSError, ValueError):
        return None
    return None if wanted else ticks / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Keeps the thread team no larger than the cores that other processes leave idle (module docstring).

    Each :meth:`poll` at least ``interval`` seconds after the last one measures, over that time, the CPU-seconds
    the process's CPUs were busy minus its own: the cores the others used (their DataLoader workers included,
    which compete for the cores just the same). The team becomes the cores left, rounded, between 1 and
    ``max_threads``. One thread per free core never waits for a descheduled teammate; spinning stays the cheap
    way to wait when the machine is idle.
    """

    def __init__(
        self,
        cpus: Sequence[int],
        max_threads: int,
        set_threads: Callable[[int], None],
        interval: float = ADAPT_INTERVAL_S,
        busy: Callable[[Sequence[int]], float | None] = read_cpu_busy,
        own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cpus, self.max_threads, self.set_threads, self.interval = list(cpus), max_threads, set_threads, interval
        self.busy, self.own, self.clock = busy, own, clock
        self.threads = max_threads
        self.others = 0.0  # cores the other processes used over the last interval
        self._last: tuple[float, float, float] | None = None

    def poll(self) -> int | None:
        """Re-fit the team if ``interval`` has passed; returns the new thread count when it changed, else None."""
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.interval:
            return None
        busy, own = self.busy(self.cpus), self.own()
        if busy is None:
            return None
        last, self._last = self._last, (now, busy, own)
        if last is None:
            return None
        self.others = max(0.0, (busy - last[1]) - (own - last[2])) / (now - last[0])
        threads = min(self.max_threads, max(1, math.floor(len(self.cpus) - self.others + 0.5)))
        if threads == self.threads:
            return None
        self.threads = threads
        self.set_threads(threads)
        return threads


def adapt_threads() -> None:
    """In an ``fcvit`` command that sized its own team, re-fit it to the free cores (:class:`ThreadGovernor`).

    Cheap enough for every step: it reads ``/proc/stat`` once per ``ADAPT_INTERVAL_S``. Elsewhere it does nothing.
    """
    if not _state["adapt"]:
        return
    import torch

    governor = _state["governor"]
    if governor is None:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux: no /proc/stat either
            _state["adapt"] = False
            return
        governor = _state["governor"] = ThreadGovernor(cpus, torch.get_num_threads(), torch.set_num_threads)
    threads = governor.poll()
    if threads is not None:
        from tqdm import tqdm

        tqdm.write(
            f"fcvit: other processes used {governor.others:.1f} of {len(governor.cpus)} CPUs: "
            f"{threads} torch thread{'s' * (threads > 1)} from now on",
            file=sys.stderr,
        )


def set_threads(threads: int) -> None:
    """Fix torch's thread count at ``threads`` (a command's ``--threads``): :func:`adapt_threads` leaves it so."""
    import torch

    torch.set_num_threads(threads)
    _state["adapt"], _state["pinned"] = False, True


def adapt_threads_from_now_on() -> None:
    """Let :func:`adapt_threads` re-fit torch's team in this process too (a user's program that asked for
    :func:`fcvit.optimize`'s CPU path), unless the user set ``OMP_NUM_THREADS`` or ``FCVIT_ADAPT_THREADS=0`` or
    the team was fixed by :func:`set_threads`."""
    if not _state["pinned"]:
        _state["adapt"] = may_adapt_threads(os.environ)


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


def available_memory(device: str = "cpu", meminfo: str = "/proc/meminfo") -> int | None:
    """Bytes a new allocation can still take on ``device``: the kernel's ``MemAvailable`` for the CPU (None where
    ``/proc/meminfo`` cannot be read), the free memory CUDA reports for a GPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open(meminfo) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
