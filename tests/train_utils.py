"""Helpers of the training tests: tiny models, generated datasets, running the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# fcvit_tiny's frame at a fraction of the cost: one block per stage, 8..32 channels (GC groups of 8 fit).
TINY_KWARGS = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
TINY = ["--model", "fcvit_tiny", "--model-kwargs", json.dumps(TINY_KWARGS)]

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(n: int, seed: int, size: int = 28, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Learnable grey images: noise plus a bright square whose position encodes the class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 90, (n, size, size)).astype(np.uint8)
    for img, c in zip(images, labels):
        r, col = divmod(int(c), 4)
        y, x = 2 + 8 * r + rng.integers(0, 2), 2 + 6 * col + rng.integers(0, 2)
        img[y : y + 6, x : x + 5] = 230
    return images, labels


def make_fashion_root(root: Path, n_train: int = 256, n_test: int = 256, seed: int = 0, size: int = 28) -> Path:
    """A torchvision-style Fashion-MNIST root (``root/FashionMNIST/raw/*.gz``) of synthetic ``size`` px images."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = synthetic_images(n, s, size)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def make_image_folder(root: Path, per_class: int = 12, classes: int = 3, seed: int = 0) -> Path:
    """``root/{train,val}/class_k/*.png|jpg`` of mixed sizes and modes (RGB, grey, RGBA, palette)."""
    rng = np.random.default_rng(seed)
    modes = ["RGB", "L", "RGBA", "P"]
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
                arr = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
                arr[:, :, c] = 220  # the class is the dominant colour channel
                img = Image.fromarray(arr).convert(modes[i % len(modes)])
                img.save(d / f"img{i}.{'jpg' if img.mode in ('RGB', 'L') and i % 2 else 'png'}")
    return root


@contextlib.contextmanager
def one_thread():
    """Torch on one thread inside the ``with`` block (the ``torch_one_thread`` fixture of conftest.py).

    Tiny models gain nothing from a second thread, and on a busy machine an OpenMP team waiting for a
    descheduled thread runs many times slower. Subprocesses of :func:`run_cli` get one thread too.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300, prefix: list[str] | None = None):
    """Run ``python -m fcvit.cli ARGS`` (or ``prefix + ARGS``) on one thread and return the CompletedProcess.

    The command gets a session of its own, so that a timeout kills every process it started (torchrun's workers
    too, which outlive a killed launcher), then raises ``subprocess.TimeoutExpired``.
    """
    cmd = (prefix or [sys.executable, "-m", "fcvit.cli"]) + args
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with subprocess.Popen(cmd, cwd=cwd, env=full_env, start_new_session=True, **pipes) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
