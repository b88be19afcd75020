"""Registers this project's models with timm and remembers which they are."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models import register_model as _timm_register_model
from torch import nn

F = TypeVar("F", bound=Callable)

# the order `fcvit models` and list_models() give: FCViT first, then the FCViT paper's comparison frame, then the
# other source papers' systems
FAMILY_ORDER = ("fcvit", "mixers", "acmix_resnet", "acmix_swin", "dynconv")
_PROJECT_MODELS: list[tuple[str, str]] = []  # (family module, model name), in registration order
_PAPER_FIGURES: dict[str, dict[str, float | None]] = {}
_PAPER_VARIANTS: dict[str, list[tuple[dict, dict[str, float | None]]]] = {}


def build_model(cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """timm's ``build_model_with_cfg``, taking timm's factory arguments ``device`` and ``dtype`` as timm's own
    models do (``timm.create_model(name, device="cuda", dtype=torch.bfloat16)``): the model is built inside
    torch's device context, so every parameter and buffer is created on ``device``, then cast to ``dtype``
    (floating-point tensors only). One place for every family, whatever timm version built their timm parts."""
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(cls, variant, pretrained, **kwargs)
    return model if dtype is None else model.to(dtype)


def new_classifier(model: nn.Module, in_features: int, num_classes: int) -> nn.Module:
    """A fresh linear classifier for ``reset_classifier`` (``nn.Identity`` for 0 classes), made as timm's factory
    contract asks: on ``model``'s device, in its dtype and training mode."""
    if num_classes <= 0:
        return nn.Identity()
    like = next(model.parameters())
    return nn.Linear(in_features, num_classes, device=like.device, dtype=like.dtype).train(model.training)


def register_model(fn: F) -> F:
    """timm's ``register_model``, plus a record so :func:`list_models` lists only this project's models."""
    _PROJECT_MODELS.append((fn.__module__.rsplit(".", 1)[-1], fn.__name__))
    return _timm_register_model(fn)


def list_models() -> list[str]:
    """Names of every model this package registers with timm: family by family (``FAMILY_ORDER``), each family's
    in its file's order."""
    rank = {family: i for i, family in enumerate(FAMILY_ORDER)}
    ordered = sorted(_PROJECT_MODELS, key=lambda entry: rank.get(entry[0], len(rank)))
    return [name for _, name in ordered]


def register_paper_figures(figures: dict[str, dict[str, float | None]], model_kwargs: dict | None = None) -> None:
    """Record published figures (``params_m``, ``gmacs``, ``macts``, ``top1``) of models, for ``fcvit models``.

    ``model_kwargs``: the figures are for the model built with these arguments (a row of the paper that is not the
    registered default, e.g. another position embedding); ``fcvit models`` lists such rows after the default.
    """
    if model_kwargs is None:
        _PAPER_FIGURES.update(figures)
    else:
        for name, figs in figures.items():
            _PAPER_VARIANTS.setdefault(name, []).append((dict(model_kwargs), figs))


def paper_figures(name: str) -> dict[str, float | None]:
    """The published figures recorded for ``name`` (empty if none)."""
    return dict(_PAPER_FIGURES.get(name, {}))


def paper_variants(name: str) -> list[tuple[dict, dict[str, float | None]]]:
    """The (creation arguments, published figures) rows recorded for ``name`` besides its default."""
    return [(dict(kwargs), dict(figs)) for kwargs, figs in _PAPER_VARIANTS.get(name, [])]


# The source papers, for the ``paper_ids`` / ``paper_name`` / ``origin_url`` fields of every model's pretrained_cfg.
PAPERS = {
    "fcvit": dict(
        paper_ids="arXiv:2212.12552",
        paper_name="A Close Look at Spatial Modeling: From Attention to Convolution",
        origin_url="https://github.com/ma-xu/FCViT",
    ),
    "acmix": dict(
        paper_ids="arXiv:2111.14556",
        paper_name="On the Integration of Self-Attention and Convolution",
        origin_url="https://github.com/LeapLabTHU/ACmix",
    ),
    "dynconv": dict(
        paper_ids="arXiv:2309.10713",
        paper_name="Interpret Vision Transformers as ConvNets with Dynamic Convolutions",
        origin_url="https://arxiv.org/abs/2309.10713",
    ),
}


def imagenet_cfg(paper: str, **kwargs: Any) -> dict[str, Any]:
    """A timm pretrained_cfg: ImageNet-1k at 224 px, bicubic, crop 0.9, ImageNet statistics, the paper's fields;
    ``kwargs`` (a family's first conv, classifier, pool size, ...) add to or override them."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        **PAPERS[paper],
        **kwargs,
    }
