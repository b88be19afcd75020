"""Fine-tuning from released weights: a model for the caller's classes, channels and image size, loaded from a
weights file with the adaptations timm's ``train.py --pretrained`` makes.

timm's route (``create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=FILE))``) ends in
:func:`timm.models.load_pretrained`: the model family's ``checkpoint_filter_fn`` maps a foreign layout and resamples
position embeddings and relative position tables to the model's size; a classifier whose class count differs from
the weights' is dropped (the model's fresh one stays); the first convolution is adapted to other input channels
(:func:`timm.models.adapt_input_conv`). :func:`create_pretrained` runs that same function, and besides:

* reads the file once, safely (:func:`fcvit.engine.checkpoint.read_weights`: ``fcvit train``, timm and official
  checkpoints, safetensors, bare state dicts; ``weights_only=True``);
* tells timm what the file holds, the class count and input channels read off its weights
  (:func:`weights_layout`), so a classifier that fits is kept and one that does not is re-initialised;
* watches the load (a ``load_state_dict`` pre-hook) to say in one line what was loaded, re-initialised, adapted
  and resampled, and refuses, in one line, weights that leave model tensors unset or hold tensors the model has
  no place for (timm is lenient there whenever it drops the classifier).

The model is built first and loaded second, as timm's builder does: with ``pretrained=True`` the load happens
inside model creation, where no hook can be attached.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from timm.models import clean_state_dict, load_pretrained, model_entrypoint, split_model_name_tag
from torch import nn

from ..engine.checkpoint import read_weights
from ..models._checkpoints import check_tensor_shapes
from .create import create
from .load import names_of, weights_layout

__all__ = ["create_pretrained"]

# position tensors a family filter resamples to the model's size, by the end of their names
_ABSOLUTE = ("pos_embed", "abs_pos.pos")  # DeiT [1, tokens, C], Swin [1, H, W, C], the mixers frame [1, C, H, W]
_RELATIVE = ("relative_position_bias_table", "rel_pos.table")  # timm [offsets, heads], ours [heads, offsets]


def _checkpoint_filter(name: str) -> Callable | None:
    """The ``checkpoint_filter_fn`` of the module that registers ``name``, None if it has none.

    timm names each model module's filter so (it hands it to ``build_model_with_cfg``, which keeps no reference);
    every family of this package follows that convention.
    """
    module = importlib.import_module(model_entrypoint(split_model_name_tag(name)[0]).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _grid(key: str, shape: torch.Size) -> tuple[int, int]:
    """The patch grid (absolute) or window (relative) a position tensor of ``shape`` is made for."""
    if key.endswith(_RELATIVE):  # (2H - 1)(2W - 1) offsets, square as timm assumes for checkpoints
        side = (math.isqrt(shape[0] if key.endswith("relative_position_bias_table") else shape[1]) + 1) // 2
        return side, side
    if len(shape) == 3:  # [1, prefix + H * W tokens, C]: the prefix is shorter than a row of the grid
        side = math.isqrt(shape[1])
        return side, side
    return (shape[2], shape[3]) if key.endswith("abs_pos.pos") else (shape[1], shape[2])


def _resampled(weights: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], keys: list[str]) -> list[str]:
    """Report clauses for the position tensors of ``keys`` whose grid changed between the file and the load."""
    changes: dict[str, list[str]] = {"position embedding": [], "relative position table": []}
    for key in keys:
        if key in weights and key.endswith(_ABSOLUTE + _RELATIVE):
            old, new = _grid(key, weights[key].shape), _grid(key, loaded[key].shape)
            if old != new:
                kind = "relative position table" if key.endswith(_RELATIVE) else "position embedding"
                changes[kind].append(f"{old[0]}x{old[1]} -> {new[0]}x{new[1]}")
    clauses = []
    for kind, found in changes.items():
        if len(found) == 1:
            clauses.append(f"{kind} resampled {found[0]}")
        elif found:
            clauses.append(f"{len(found)} {kind}s resampled ({', '.join(dict.fromkeys(found))})")
    return clauses


def create_pretrained(
    name: str,
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
    **model_kwargs: Any,
) -> tuple[nn.Module, str]:
    """Model ``name`` with the weights of ``path`` as its starting point, and one line saying what was loaded.

    Args:
        name: a model timm knows (``fcvit_tiny``, ``acmix_swin_tiny``, ``deit_small_attn_ln_relu``, ...).
        path: the weights (see :func:`fcvit.engine.checkpoint.read_weights` for the formats).
        num_classes: the model's classes; a classifier of another class count is re-initialised (default: the
            file's).
        in_chans: the model's input channels; the first convolution is adapted to them (default: the file's).
        img_size: for models made for one input size (timm's ``fixed_input_size``: Swin-ACmix, the DeiT and Swin
            hosts), the size to build them for; their position embeddings and relative position tables are
            resampled to it. The convolutional frames take any size and ignore it.
        **model_kwargs: further arguments of the model (e.g. ``drop_path_rate``, ``depths``).

    Returns:
        The model (training mode, as timm creates it) and a report such as ``"loaded 230 tensors from FILE; head
        re-initialised for 3 classes (was 1000); stem adapted 3 -> 1 channels; position embedding resampled
        14x14 -> 4x4"``.

    Raises:
        CheckpointError: the file is missing, corrupt or unsafe to load.
        ValueError: a tensor does not fit and cannot be adapted (named), or the weights leave model tensors
            unset or hold tensors the model has no place for (the first of them named).
    """
    weights = clean_state_dict(read_weights(path)[0])  # clean_state_dict: DataParallel's "module." prefixes
    file_chans, file_classes = weights_layout(name, weights)
    kwargs = dict(model_kwargs)
    if num_classes is None:
        num_classes = file_classes
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    in_chans = in_chans or file_chans or 3
    model = create(name, **{"img_size": img_size, **kwargs, "in_chans": in_chans})
    num_classes = model.num_classes

    # what the weights hold, in the pretrained_cfg fields timm's loader compares with the model
    source_cfg = {
        **model.pretrained_cfg,
        "source": "",
        "state_dict": dict(weights),
        "num_classes": file_classes if file_classes is not None else 0,
        "input_size": (file_chans or in_chans, *model.pretrained_cfg["input_size"][1:]),
    }
    head_reset = num_classes != source_cfg["num_classes"]
    own = model.state_dict()
    head_keys = {f"{c}.{p}" for c in names_of(source_cfg.get("classifier")) for p in ("weight", "bias")} & set(own)
    seen: dict[str, torch.Tensor] = {}

    def check(module: nn.Module, state_dict: dict[str, torch.Tensor], *args: Any) -> None:
        # the state dict timm hands load_state_dict, after the filter, the stem adaptation and the classifier drop
        seen.update(state_dict)
        check_tensor_shapes(state_dict, module)
        missing = [k for k in own if k not in state_dict and not (head_reset and k in head_keys)]
        if missing:
            raise ValueError(
                f"{path} lacks {len(missing)} of the {name}'s tensors (first: {missing[0]}): weights of another model?"
            )
        unplaced = [k for k in state_dict if k not in own]
        if unplaced:
            raise ValueError(
                f"{path} holds {len(unplaced)} tensors a {name} has no place for (first: {unplaced[0]}): "
                f"weights of another model?"
            )

    handle = model.register_load_state_dict_pre_hook(check)
    try:
        load_pretrained(
            model,
            pretrained_cfg=source_cfg,
            num_classes=num_classes,
            in_chans=in_chans,
            filter_fn=_checkpoint_filter(name),
        )
    finally:
        handle.remove()

    # a filter gives the model's own tensor for what the file lacks (the DeiT host's relative tables)
    fresh = [k for k, v in seen.items() if v.numel() and v.data_ptr() == own[k].data_ptr()]
    loaded = [k for k in seen if k not in fresh]
    clauses = [f"loaded {len(loaded)} tensors from {path}"]
    if head_keys:
        if file_classes is None:
            clauses.append(f"head initialised for {num_classes} classes (the file has none)")
        elif head_reset:
            clauses.append(f"head re-initialised for {num_classes} classes (was {file_classes})")
        else:
            clauses.append(f"head kept ({num_classes} classes)")
    if file_chans == in_chans:
        clauses.append(f"stem kept ({in_chans} channels)")
    elif file_chans is not None:
        clauses.append(f"stem adapted {file_chans} -> {in_chans} channels")
    clauses += _resampled(weights, seen, loaded)
    if fresh:
        more = ", ..." if len(fresh) > 2 else ""
        what = "tensor not in the file starts" if len(fresh) == 1 else "tensors not in the file start"
        clauses.append(f"{len(fresh)} {what} fresh ({', '.join(fresh[:2])}{more})")
    return model, "; ".join(clauses)
