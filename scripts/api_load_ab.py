"""Issue 28's load check from the Python API: inference of a model in a user's own loop, on a quiet machine and
with one other process holding a core, for the plain FCViT, ``fcvit.optimize``'s CPU path and a peer.

Each measurement is a fresh interpreter that imports fcvit as a library (not the ``fcvit`` command), builds the
model (``timm.create_model``; ``fcvit.optimize`` for the optimised variant), runs ``--warmup`` forwards of a batch
and times ``--steps`` more; the load is a Python busy loop started before the interpreter and stopped after it.
Variants and scenarios alternate round by round; one CSV row per measurement; the summary gives per variant the
median img/s quiet and loaded and the slowdown (quiet / loaded)::

    python scripts/api_load_ab.py --rounds 3 --csv docs/contention/api_load.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {  # name: (timm model, optimised)
    "fcvit_b12 plain": ("fcvit_b12", False),
    "fcvit_b12 optimize": ("fcvit_b12", True),
    "poolformer_s12": ("poolformer_s12", False),
}
CHILD = """
import sys, time, torch, timm, fcvit
name, optimised, batch, size, warmup, steps = sys.argv[1], sys.argv[2] == "1", *map(int, sys.argv[3:7])
torch.manual_seed(0)
model = timm.create_model(name).eval()
if optimised:
    fcvit.optimize(model)
x = torch.randn(batch, 3, size, size)
with torch.no_grad():
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
print(batch / sorted(times)[len(times) // 2], torch.get_num_threads())
"""


def measure(variant: str, loaded: bool, args: argparse.Namespace) -> dict:
    name, optimised = VARIANTS[variant]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        time.sleep(0.5 if loaded else 0)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.pin else dict(os.environ)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", CHILD, name, str(int(optimised)), *map(str, (args.batch, args.size))]
        out = subprocess.run([*cmd, str(args.warmup), str(args.steps)], capture_output=True, text=True, env=env)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        rate, threads = out.stdout.split()[-2:]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    load1 = os.getloadavg()[0]
    return dict(
        variant=variant,
        scenario="hog" if loaded else "quiet",
        img_per_s=round(float(rate), 2),
        threads_at_end=int(threads),
        wall_s=round(time.perf_counter() - t0, 1),
        load1=round(load1, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="with --pin: OMP_NUM_THREADS of every child")
    parser.add_argument("--pin", action="store_true", help="set OMP_NUM_THREADS (turns fcvit's thread fitting off)")
    parser.add_argument("--csv", help="write every measurement here")
    args = parser.parse_args()
    rows = []
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for loaded in (False, True) if r % 2 == 0 else (True, False):
            for variant in order:
                row = {"round": r, **measure(variant, loaded, args)}
                rows.append(row)
                print(row, flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print("\n| variant | quiet img/s | one core held img/s | slowdown |\n|---|---:|---:|---:|")
    for variant in VARIANTS:
        quiet = statistics.median(r["img_per_s"] for r in rows if r["variant"] == variant and r["scenario"] == "quiet")
        hog = statistics.median(r["img_per_s"] for r in rows if r["variant"] == variant and r["scenario"] == "hog")
        print(f"| {variant} | {quiet:.1f} | {hog:.1f} | {quiet / hog:.2f}x |")


if __name__ == "__main__":
    main()
