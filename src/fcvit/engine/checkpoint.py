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

from ..errors import CheckpointError
from .atomic import atomic_write

__all__ = [
    "CheckpointError",
    "describe_load_error",
    "load_checkpoint",
    "read_weights",
    "run_checkpoint",
    "save_checkpoint",
]


def run_checkpoint(
    *,
    task: str,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    config: dict[str, Any],
    model_name: str,
    model_kwargs: dict[str, Any],
    class_names: list[str],
    step: int,
    best: Any,
    metrics: dict[str, Any],
    **progress: Any,
) -> dict[str, Any]:
    """The one layout of every training run's checkpoint (``fcvit train``, ``fcvit det|seg train``): what the task
    is (``"classify"``, ``"det"``, ``"seg"``), the weights and optimizer state, the run's config and the record a
    command reads to rebuild the model (model name and arguments, class names), where the run stands (step,
    best score, last metrics), and the loop's own position (``progress``: epoch and batch, or round; RNG states).
    """
    return dict(
        task=task,
        model=model,
        optimizer=optimizer,
        config=config,
        model_name=model_name,
        model_kwargs=model_kwargs,
        num_classes=len(class_names),
        class_names=list(class_names),
        step=step,
        best=best,
        metrics=metrics,
        **progress,
    )


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


def read_weights(path: str | os.PathLike, ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model weights in a checkpoint file, and the checkpoint's other entries (empty for bare weights).

    Reads ``fcvit train`` checkpoints (``model``/``model_ema``), timm's (``state_dict``/``state_dict_ema``),
    official FCViT releases and bare state dicts, from ``.pth``/``.pt`` (``weights_only=True``) or
    ``.safetensors`` (whose ``fcvit export`` metadata gives the model name, classes and data config).
    ``ema=True`` takes the EMA weights and fails if there are none. A missing, truncated or corrupt file is a
    :class:`CheckpointError` naming it.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if ema:
            raise CheckpointError(f"{path} is a bare safetensors file, it holds no EMA weights")
        return _read_safetensors(path)
    ckpt = load_checkpoint(path)
    keys = ("model_ema", "state_dict_ema") if ema else ("model", "state_dict")
    for key in keys:
        if isinstance(ckpt.get(key), dict):
            return ckpt[key], {k: v for k, v in ckpt.items() if k not in ("model", "model_ema", "optimizer")}
    if ema:
        raise CheckpointError(f"checkpoint {path} holds no EMA weights (looked for {' or '.join(keys)})")
    if not ckpt:
        raise CheckpointError(f"checkpoint {path} holds no tensors (an empty dict)")
    if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt, {}
    raise CheckpointError(f"checkpoint {path} holds no model weights (keys: {', '.join(sorted(ckpt))[:200]})")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and the ``fcvit export`` metadata (model name, class count and names, data config) of a file."""
    import json

    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError (an Exception) for a bad header
        raise CheckpointError(describe_load_error(path, e)) from None
    meta: dict[str, Any] = {}
    if metadata.get("model"):
        meta["model_name"] = metadata["model"]
    if metadata.get("num_classes"):
        meta["num_classes"] = int(metadata["num_classes"])
    for key in ("data_config", "class_names", "model_kwargs"):
        if metadata.get(key):
            meta[key] = json.loads(metadata[key])
    return weights, meta
