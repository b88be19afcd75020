"""Peak CPU memory of one model's steps, measured in a fresh Python process.

A process's peak RSS only ever grows, so within one process the second model measured inherits the first
one's peak. A child process per (model, mode) starts clean: after importing torch and timm it notes its RSS
and resets the kernel's high-water mark, builds the model, runs warm-up plus two steps, and reports how far
the peak rose above that RSS (weights, optimizer state, activations, allocator caches). Linux's
``/proc/self/status`` (VmRSS, VmHWM) is used rather than ``ru_maxrss``, which Linux carries over from the
parent across ``exec`` and would hide the child's own peak under the parent's.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from dataclasses import asdict


def _status_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process from ``/proc/self/status``, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field} line: peak RSS needs Linux")


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); without it the peak since start is kept, an upper bound."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb_in_subprocess(spec: str, mode: str, cfg) -> float:
    """MiB of peak-RSS growth of ``spec``/``mode`` under ``cfg`` (a BenchConfig), measured in a new interpreter."""
    from ..runtime import allocator

    request = json.dumps(dict(spec=spec, mode=mode, cfg=asdict(cfg), tune_malloc=allocator() != "default"))
    proc = subprocess.run(
        [sys.executable, "-m", "fcvit.bench.memory", request], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {spec} ({mode}) failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def _child(request: str) -> None:
    import torch

    from ..runtime import tune_cpu_allocator
    from .speed import BenchConfig, build_workload

    args = json.loads(request)
    if args["tune_malloc"]:
        tune_cpu_allocator()
    cfg_dict = args["cfg"]
    cfg_dict["modes"] = tuple(cfg_dict["modes"])
    cfg = BenchConfig(**cfg_dict)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    baseline = _status_mb("VmRSS")
    _reset_peak()
    step = build_workload(args["spec"], cfg, (args["mode"],)).steps[args["mode"]]
    for _ in range(cfg.warmup + 2):
        step()
    print(json.dumps(dict(peak_mb=_status_mb("VmHWM") - baseline, baseline_mb=baseline)))


if __name__ == "__main__":
    _child(sys.argv[1])
