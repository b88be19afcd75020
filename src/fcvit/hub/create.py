"""Building a model by name: ``timm.create_model`` with one-line errors and the input size where it is fixed."""

from __future__ import annotations

import inspect
from typing import Any

import timm
from torch import nn

from .. import models  # noqa: F401  (registers this project's models with timm)
from ..engine.config import check_model_name

__all__ = ["accepted_arguments", "check_model_name", "create", "has_fixed_input_size"]


def has_fixed_input_size(name: str) -> bool:
    """Whether ``name`` fixes its input size at construction (ViT position embeddings, Swin's attention masks):
    such models take ``img_size``; the convolutional ones take any input and are built without it."""
    cfg = timm.get_pretrained_cfg(name)
    return bool(getattr(cfg, "fixed_input_size", False))


def accepted_arguments(name: str) -> list[str]:
    """The keyword arguments the class of model ``name`` takes: its ``__init__``'s, and those of the bases it
    hands ``**kwargs`` on to. The class is found by building the default model (on the error path only), so
    nothing depends on how the model's entry point is written."""
    cls = type(timm.create_model(name))
    accepted: list[str] = []
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters.values()
        accepted += [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if klass is nn.Module or not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(accepted))


def create(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with one-line errors for the user's part: an unknown name (with the
    closest registered names) and keyword arguments the model does not take (with the ones it does).

    ``img_size`` (the input size) goes to the models that fix their input size at construction
    (:func:`has_fixed_input_size`) and not to the others, which take any size.
    """
    check_model_name(name)
    img_size = kwargs.pop("img_size", None)
    if img_size and has_fixed_input_size(name):
        kwargs["img_size"] = img_size
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        try:
            hint = f"; it accepts: {', '.join(accepted_arguments(name))}"
        except Exception:  # the default model cannot be built either: say what the first error said
            hint = ""
        raise ValueError(f"model {name} does not take these arguments ({e}){hint}") from None
