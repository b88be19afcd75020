"""Peak CPU memory of one model's steps, measured in a fresh Python process.

``ru_maxrss`` only ever grows, so within one process the second model measured inherits the first one's
peak. A child process per (model, mode) starts clean: it records its peak RSS after importing torch and
timm, builds the model, runs warm-up plus two steps, and reports how much the peak grew (weights, optimizer
state, activations, allocator caches).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import asdict


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_rss_mb_in_subprocess(spec: str, mode: str, cfg) -> float:
    """Run :func:`_child` for ``spec``/``mode`` under ``cfg`` (a BenchConfig) in a new interpreter; MB of peak growth."""
    request = json.dumps(dict(spec=spec, mode=mode, cfg=asdict(cfg)))
    proc = subprocess.run(
        [sys.executable, "-m", "fcvit.bench.memory", request], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {spec} ({mode}) failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def _child(request: str) -> None:
    import torch

    from .speed import BenchConfig, build_workload

    args = json.loads(request)
    cfg_dict = args["cfg"]
    cfg_dict["modes"] = tuple(cfg_dict["modes"])
    cfg = BenchConfig(**cfg_dict)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    baseline = _peak_rss_mb()
    step = build_workload(args["spec"], cfg, (args["mode"],)).steps[args["mode"]]
    for _ in range(cfg.warmup + 2):
        step()
    print(json.dumps(dict(peak_mb=_peak_rss_mb() - baseline, baseline_mb=baseline)))


if __name__ == "__main__":
    _child(sys.argv[1])
