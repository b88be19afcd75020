"""Helpers around the training loop: seeding and RNG snapshots, evaluation, reading weights from checkpoints."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, describe_load_error, load_checkpoint
from .distributed import all_reduce_sum, is_main_process
from .logger import Progress

__all__ = [
    "NonFiniteLossError",
    "evaluate",
    "get_rng_state",
    "read_weights",
    "seed_everything",
    "set_rng_state",
]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the bad step touches the weights."""


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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] | None = None,
    channels_last: bool = False,
    desc: str = "validate",
) -> dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 (%) of ``model`` over ``loader``, summed over all ranks.

    ``loader`` is a :mod:`fcvit.data.loaders` loader; unreadable images it skipped are counted in ``skipped``.
    """
    model.eval()
    sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0, "skipped": 0.0}
    progress = Progress(len(loader), desc, enabled=is_main_process(), log_interval=max(len(loader) // 4, 1))
    for images, targets, skipped in loader.batches(0):
        sums["skipped"] += skipped
        if len(targets) == 0:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if autocast is None:
            logits = model(images)
        else:
            with autocast():
                logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        correct = logits.topk(k, dim=1).indices.eq(targets[:, None])
        sums["loss"] += F.cross_entropy(logits, targets, reduction="sum").item()
        sums["top1"] += correct[:, 0].sum().item()
        sums["top5"] += correct.sum().item()
        sums["n"] += len(targets)
        progress.update(len(targets))
    progress.close()
    sums = all_reduce_sum(sums, device)
    n = max(sums["n"], 1.0)
    return {
        "loss": sums["loss"] / n,
        "top1": 100.0 * sums["top1"] / n,
        "top5": 100.0 * sums["top5"] / n,
        "n": int(sums["n"]),
        "skipped": int(sums["skipped"]),
    }


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
