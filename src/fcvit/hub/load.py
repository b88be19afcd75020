"""Loading a model from any checkpoint a user has, with what the file records about it.

A file is read once (:func:`fcvit.engine.checkpoint.read_weights`: ``fcvit train`` checkpoints, timm's
``train.py`` checkpoints, official FCViT / Swin-ACmix / ResNet-ACmix releases, timm's own weights,
``fcvit export`` safetensors, bare state dicts; ``weights_only=True``). Its record (model name and keyword
arguments, class count and names, data config, training config) is checked before anything is built: a record
that names an unknown model or holds impossible values is a one-line error, and so are weights that are no
longer finite. What the record does not say is read off the weights (input channels from the first convolution,
classes from the classifier) or taken from the model's pretrained_cfg. A value the caller gives wins over the
record and is listed in :attr:`LoadedModel.overrides`, which the commands print.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import ImageNetInfo, resolve_model_data_config
from timm.models import get_pretrained_cfg
from torch import nn

from ..accel import optimize as optimize_model
from ..data.transforms import channel_stats
from ..engine.checkpoint import read_weights
from .create import check_model_name, create

__all__ = ["LoadedModel", "check_finite", "check_record", "load", "weights_layout"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")


@dataclass
class LoadedModel:
    """A model ready to use and what is known about it."""

    model: nn.Module  # in eval mode, weights loaded
    name: str  # timm model name
    model_kwargs: dict[str, Any]  # create_model arguments besides num_classes and in_chans
    data_config: dict[str, Any]  # eval data config: input_size [in_chans, H, W], mean/std, crop, interpolation
    class_names: list[str]
    record: dict[str, Any] = field(default_factory=dict)  # the file's entries besides weights (e.g. "config")
    source: str | None = None  # the file, or None for a model built by name
    overrides: list[str] = field(default_factory=list)  # "--img-size 64 (the checkpoint records 28)"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.data_config["input_size"][0])

    @property
    def train_config(self) -> dict[str, Any]:
        """The ``fcvit train`` config the weights were trained with (empty for other files)."""
        return dict(self.record.get("config") or {})


def names_of(value: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """A pretrained_cfg entry that names one module or several (``first_conv``, ``classifier``) as a tuple."""
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def weights_layout(model_name: str, weights: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """``(in_chans, num_classes)`` that ``weights`` were trained with, read off the first convolution's and the
    classifier's weights; None where the file does not tell.

    The names come from the model's pretrained_cfg (``first_conv``, the first ``classifier``). Releases may name
    them otherwise: the first convolution is then the first 4-D tensor (official FCViT's ``patch_embed.proj``),
    the classifier its parent module (official Swin's ``head`` for timm's ``head.fc``). An unknown name reads the
    file with timm's defaults (model creation names the mistake).
    """
    cfg = get_pretrained_cfg(model_name, allow_unregistered=True)
    first_conv = names_of(cfg.first_conv if cfg else None)
    classifier = (names_of(cfg.classifier if cfg else None) or ("head",))[0]
    conv = next((weights[f"{name}.weight"] for name in first_conv if f"{name}.weight" in weights), None)
    if conv is None:
        conv = next((w for w in weights.values() if w.ndim == 4), None)
    head = weights.get(f"{classifier}.weight", weights.get(f"{classifier.split('.')[0]}.weight"))
    return (int(conv.shape[1]) if conv is not None else None), (int(head.shape[0]) if head is not None else None)


def check_finite(weights: dict[str, torch.Tensor], source: str) -> None:
    """Raise a one-line ``ValueError`` naming the first floating-point tensor of ``weights`` that holds NaN or
    infinite values: such weights give plausible-looking but meaningless output."""
    for key, tensor in weights.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise ValueError(
                    f"{source}: tensor {key!r} holds {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}: "
                    f"the weights are broken (a diverged run?); use an earlier checkpoint"
                )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def check_record(meta: dict[str, Any], source: str) -> None:
    """Refuse, in one line naming the file and the entry, a record whose values cannot be meant: an unknown or
    non-string model name, a class count below 1, class names that are not that many strings, a data config
    with impossible sizes, statistics or crop, keyword arguments that are not a mapping."""

    def bad(entry: str, why: str) -> ValueError:
        return ValueError(f"{source}: its record's {entry} {why}; the file is damaged or not an fcvit checkpoint")

    if "model_name" in meta:
        try:
            check_model_name(meta["model_name"])
        except ValueError as e:
            raise bad("model_name", f"is unusable ({e})") from None
    if "model_kwargs" in meta and not isinstance(meta["model_kwargs"], dict):
        raise bad("model_kwargs", f"is a {type(meta['model_kwargs']).__name__}, not a mapping")
    classes = meta.get("num_classes")
    if classes is not None and not _positive_int(classes):
        raise bad("num_classes", f"is {classes!r}, not a positive integer")
    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad("class_names", "is not a list of strings")
        if classes is not None and len(names) != classes:
            raise bad("class_names", f"has {len(names)} names for {classes} classes")
    data = meta.get("data_config")
    if data is not None:
        if not isinstance(data, dict):
            raise bad("data_config", "is not a mapping")
        size = data.get("input_size")
        if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(_positive_int(v) for v in size)):
            raise bad("data_config input_size", f"is {size!r}, not [channels, height, width] of positive integers")
        for key in ("mean", "std"):
            values = data.get(key)
            if not _numbers(values) or len(values) not in (1, size[0]):
                raise bad(f"data_config {key}", f"is {values!r}, not {size[0]} finite number(s)")
        if not all(v > 0 for v in data["std"]):
            raise bad("data_config std", f"is {data['std']!r}: a standard deviation must be positive")
        crop = data.get("crop_pct", 1.0)
        if not isinstance(crop, (int, float)) or not 0 < crop <= 1:
            raise bad("data_config crop_pct", f"is {crop!r}, not in (0, 1]")
        if data.get("interpolation", "bicubic") not in INTERPOLATIONS:
            raise bad("data_config interpolation", f"is {data.get('interpolation')!r}")


def _class_names(record: dict[str, Any], num_classes: int) -> list[str]:
    names = record.get("class_names")
    if names and len(names) == num_classes:
        return list(names)
    if num_classes == 1000:
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(num_classes)]
    return [f"class_{i}" for i in range(num_classes)]


def _model_data_config(model: nn.Module, in_chans: int) -> dict[str, Any]:
    config = resolve_model_data_config(model)
    return {
        **config,
        "input_size": [in_chans, *config["input_size"][1:]],
        "mean": list(channel_stats(config["mean"], in_chans)),
        "std": list(channel_stats(config["std"], in_chans)),
    }


def _read(path: Path, ema: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.is_dir():
        best = path / "checkpoint-best.pth"
        hint = f" (a run directory: its weights are {best})" if best.is_file() else ""
        raise IsADirectoryError(f"{path} is a directory, not a checkpoint file{hint}")
    weights, meta = read_weights(path, ema=ema)
    if meta.get("task") in ("det", "seg"):
        what = {"det": "Mask R-CNN detection", "seg": "Semantic FPN segmentation"}[meta["task"]]
        raise ValueError(
            f"{path} is a {what} checkpoint (fcvit {meta['task']} train), not a classifier: "
            f"use `fcvit {meta['task']} predict|eval` with it"
        )
    return weights, meta


def load(
    source: str | os.PathLike,
    *,
    model: str | None = None,
    ema: bool = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    optimize: str | None = None,
) -> LoadedModel:
    """The model of ``source`` in eval mode, what it records, and its eval data config.

    ``source`` is a checkpoint file, or the name of a registered model (built with its random initialisation,
    or timm's ``pretrained=True`` in ``model_kwargs``). ``model`` names the model for files that do not record
    it (official releases, timm weights, bare state dicts) and must agree with a file that does. ``num_classes``,
    ``in_chans``, ``img_size`` and ``model_kwargs`` override the record (the file's weights must still fit).
    ``optimize``: an :func:`fcvit.optimize` backend (``"auto"``, ``"cpu"``, ...), None for the plain model.
    """
    text = os.fspath(source)
    path = Path(text)
    if not path.exists():
        if timm.is_model(text):
            return _build_by_name(text, num_classes, in_chans, img_size, model_kwargs, optimize)
        if not path.suffix and os.sep not in text:  # looks like a name: the error lists the closest
            check_model_name(text)
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    weights, meta = _read(path, ema)
    check_record(meta, str(path))
    check_finite(weights, str(path))
    recorded = meta.get("model_name")
    if model and recorded and recorded != model:
        raise ValueError(f"{path} holds a {recorded}, not a {model}")
    name = model or recorded
    if not name:
        raise ValueError(f"{path} does not say which model it holds: name it (--model)")
    check_model_name(name)
    kwargs = {**meta.get("model_kwargs", {}), **(model_kwargs or {})}
    saved = meta.get("data_config")
    file_chans, file_classes = weights_layout(name, weights)
    record_chans = kwargs.pop("in_chans", None) or (saved["input_size"][0] if saved else None) or file_chans or 3
    record_classes = kwargs.pop("num_classes", None) or meta.get("num_classes") or file_classes or 1000
    overrides = []
    for flag, given, recorded_value in (
        ("--in-chans", in_chans, record_chans),
        ("--num-classes", num_classes, record_classes),
    ):
        if given and given != recorded_value:
            overrides.append(f"{flag} {given} (the checkpoint has {recorded_value})")
    chans, classes = in_chans or record_chans, num_classes or record_classes
    if img_size and saved and img_size != saved["input_size"][-1]:
        overrides.append(f"--img-size {img_size} (the checkpoint records {saved['input_size'][-1]})")
    size = img_size or (saved["input_size"][-1] if saved else None)
    net = create(name, **{"img_size": size, **kwargs, "num_classes": classes, "in_chans": chans})
    net.load_state_dict(weights)
    net.eval()
    if saved and saved["input_size"][0] == chans:
        data_config = {**saved, **{k: list(channel_stats(saved[k], chans)) for k in ("mean", "std")}}
    else:
        data_config = _model_data_config(net, chans)
    if img_size:
        data_config["input_size"] = [chans, img_size, img_size]
    _record_preprocessing(net, data_config)
    return LoadedModel(
        model=optimize_model(net, optimize),
        name=name,
        model_kwargs=kwargs,
        data_config=data_config,
        class_names=_class_names(meta, classes),
        record={k: v for k, v in meta.items() if k not in ("model", "model_ema", "optimizer")},
        source=str(path),
        overrides=overrides,
    )


def _build_by_name(
    name: str,
    num_classes: int | None,
    in_chans: int | None,
    img_size: int | None,
    model_kwargs: dict[str, Any] | None,
    optimize: str | None,
) -> LoadedModel:
    kwargs = dict(model_kwargs or {})
    kwargs.update({k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v})
    net = create(name, **{"img_size": img_size, **kwargs}).eval()
    chans = int(getattr(net, "in_chans", None) or kwargs.get("in_chans") or 3)
    data_config = _model_data_config(net, chans)
    if img_size:
        data_config["input_size"] = [chans, img_size, img_size]
    extra = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_chans")}
    classes = int(getattr(net, "num_classes", 0) or num_classes or 1000)
    return LoadedModel(optimize_model(net, optimize), name, extra, data_config, _class_names({}, classes))


def _record_preprocessing(model: nn.Module, data_config: dict[str, Any]) -> None:
    """Put the weights' preprocessing where timm looks for it (``resolve_data_config(model=...)``, tools built on
    timm): the model's ``pretrained_cfg``."""
    model.pretrained_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        **{k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()},
    }
