"""Issue 22's contention check: the main job's recipe, shortened, on a quiet and a busy machine, code A against B.

Each run is ``fcvit train --train-limit 6000 --epochs 1`` (fcvit_tiny, 93 steps of 64 images, then validation of
the model and its EMA on the 10k test images) from a given source tree, bounded by ``--limit`` seconds. The
load added for the run's duration is one of

* ``quiet``: none;
* ``existing``: none added by this script: the load the machine already has (e.g. a ``fcvit study`` training
  two single-thread runs), which the CSV's load averages record;
* ``hog``: one CPU-bound process (a Python busy loop) holding a core;
* ``train``: a second ``fcvit train`` of the same code, started a few seconds before;
* ``one-thread`` and ``hog-one-thread``: as ``quiet`` and ``hog`` with ``OMP_NUM_THREADS=1`` (the one-thread
  figures the issue compares to).

Runs alternate between the trees, round by round; one CSV row per run (wall seconds, training img/s from the
last progress line, top-1, the thread changes the run printed, load averages at its start)::

    python scripts/contention_ab.py before=/path/old/src after=src --scenarios quiet hog train --rounds 2 \
        --csv contention.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = ["train", "--train-limit", "6000", "--epochs", "1", "--log-interval", "10"]
HOG = "while True: pass"


def fcvit(src: str, args: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    """``python -m fcvit.cli ARGS`` with the package taken from ``src``."""
    env = {**os.environ, **env, "PYTHONPATH": os.path.abspath(src)}
    return subprocess.Popen([sys.executable, "-m", "fcvit.cli", *args], env=env, **popen)


def measure(name: str, src: str, scenario: str, limit: float, root: Path) -> dict:
    work = Path(tempfile.mkdtemp(dir=root))
    env = {"OMP_NUM_THREADS": "1"} if scenario.endswith("one-thread") else {}
    load = None
    if scenario.startswith("hog"):
        load = subprocess.Popen([sys.executable, "-c", HOG])
    elif scenario == "train":
        load = fcvit(
            src,
            ["train", "--epochs", "5", "--output", str(work), "--experiment", "load"],  # outlasts the run
            {},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    if load is not None:
        time.sleep(8.0 if scenario == "train" else 1.0)  # the competitor is past its start-up
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    log = work / f"{name}-{scenario}.log"
    start = time.perf_counter()
    with open(log, "w") as err:
        run = fcvit(
            src,
            [*TRAIN, "--output", str(work), "--experiment", f"{name}-{scenario}"],
            env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            code = run.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGKILL)
            run.wait()
            code = "killed"
    wall = time.perf_counter() - start
    if load is not None:
        load.kill()
        load.wait()
    text = log.read_text()
    rates = re.findall(r"epoch 1/1 \[(\d+)/\d+\].*?img/s (\d+)", text)
    summary = work / f"{name}-{scenario}" / "summary.json"
    top1 = json.loads(summary.read_text())["top1"] if summary.is_file() else ""
    return {
        "code": name,
        "scenario": scenario,
        "exit": code,
        "wall_s": round(wall, 1),
        "last_step": rates[-1][0] if rates else 0,
        "train_img_per_s": rates[-1][1] if rates else "",
        "top1": top1,
        "thread_changes": " | ".join(re.findall(r"(\d+ torch threads?) from now on", text)),
        "loadavg_start": " ".join(loadavg),
        "utc_end": time.strftime("%H:%M:%S", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", metavar="NAME=SRC", help="source trees to compare")
    parser.add_argument("--scenarios", nargs="+", default=["quiet", "hog", "train"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--limit", type=float, default=240.0, help="seconds before a run is killed")
    parser.add_argument("--csv", default="contention.csv")
    args = parser.parse_args()
    trees = [t.split("=", 1) for t in args.trees]
    new = not Path(args.csv).exists()
    with open(args.csv, "a", newline="") as f, tempfile.TemporaryDirectory() as tmp:
        writer = None
        for r in range(args.rounds):
            for scenario in args.scenarios:
                for name, src in trees if r % 2 == 0 else trees[::-1]:
                    row = measure(name, src, scenario, args.limit, Path(tmp))
                    print(row, flush=True)
                    if writer is None:
                        writer = csv.DictWriter(f, fieldnames=list(row))
                        if new:
                            writer.writeheader()
                    writer.writerow(row)
                    f.flush()


if __name__ == "__main__":
    main()
