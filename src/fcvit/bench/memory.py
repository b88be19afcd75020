"""Peak CPU memory of one model's steps, measured in a fresh Python process.

A process's peak RSS only ever grows, so within one process the second model measured inherits the first
one's peak. A child process per (model, mode) starts clean: after importing torch and timm it notes its RSS
and resets the kernel's high-water mark, builds the model, runs warm-up plus two steps, and reports how far
the peak rose above that RSS (weights, optimizer state, activations, allocator caches). Linux's
``/proc/self/status`` (VmRSS, VmHWM) is used rather than ``ru_maxrss``, which Linux carries over from the
parent across ``exec`` and would hide the child's own peak under the parent's. The child's side is
:func:`fcvit.bench.speed._memory_child`.
"""

import contextlib
import json
import subprocess
import sys
from typing import Any


def rss_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process from ``/proc/self/status``, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field} line: peak RSS needs Linux")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); without it the peak since start is kept, an upper bound."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb_in_subprocess(spec: str, mode: str, cfg: dict[str, Any]) -> float:
    """MiB of peak-RSS growth of ``spec``/``mode`` under ``cfg`` (a BenchConfig as a dict), in a new interpreter."""
    from ..runtime import allocator

    request = json.dumps(dict(spec=spec, mode=mode, cfg=cfg, tune_malloc=allocator() != "default"))
    proc = subprocess.run(
        [sys.executable, "-m", "fcvit.bench.speed", request], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {spec} ({mode}) failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])
