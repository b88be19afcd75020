"""Seeding and snapshots of every global random generator (Python, NumPy, torch CPU and CUDA), as tensors and
numbers that a ``weights_only`` checkpoint can hold: what makes a resumed run continue as the uninterrupted one,
and what keeps evaluation out of a training run's random streams (:func:`preserved_rng`)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "preserved_rng", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and numbers (loadable with ``weights_only=True``)."""
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Every global generator leaves the ``with`` block in the state it entered it, whatever the block drew.

    Around evaluation during training: iterating a DataLoader draws its base seed from torch's global generator,
    and transforms or models may draw from Python's or NumPy's, so an evaluation would otherwise shift the
    augmentation, dropout and sampling of every later training step (``--eval-before`` changed the result).
    ``torch.random.fork_rng`` covers the torch generators only; this covers Python's and NumPy's as well.
    """
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
