"""Checkpoints that survive a crash and load safely.

:func:`save_checkpoint` writes to a temporary file in the target's directory, flushes and fsyncs it,
then ``os.replace``-s it over the target: a reader sees the old file or the new one, never half of
one, even if the process is killed mid-write. :func:`load_checkpoint` loads with
``weights_only=True``, so a checkpoint can hold tensors, numbers, strings, lists and dicts only
(store configs as plain dicts and RNG states as tensors).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write

__all__ = ["CheckpointError", "describe_load_error", "load_checkpoint", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or holds objects that are not allowed."""


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file in the same directory + fsync + ``os.replace``)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def describe_load_error(path: Path, e: BaseException) -> str:
    """One line saying why ``path`` could not be read: its size and the first line of the loader's reason.

    torch's own message for an object that safe loading refuses advises ``weights_only=False``, i.e. running the
    file's pickled code: that advice is replaced by what the refusal means.
    """
    size = f"{path.stat().st_size} bytes" if path.is_file() else "unreadable"
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
        why = "it holds Python objects other than tensors and plain containers, which are not loaded (safe loading)"
    else:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = f"truncated or corrupt ({why[:160]})"
    return f"cannot load {path} ({size}): {why}"


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or any ``torch.save`` of plain data).

    Raises :class:`CheckpointError` naming the file when it is missing, corrupt or unsafe to load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(describe_load_error(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj
