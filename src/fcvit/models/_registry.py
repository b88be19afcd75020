"""Registers this project's models with timm and remembers which they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from timm.models import register_model as _timm_register_model

F = TypeVar("F", bound=Callable)

_PROJECT_MODELS: list[str] = []
_PAPER_FIGURES: dict[str, dict[str, float | None]] = {}


def register_model(fn: F) -> F:
    """timm's ``register_model``, plus a record so :func:`list_models` lists only this project's models."""
    _PROJECT_MODELS.append(fn.__name__)
    return _timm_register_model(fn)


def list_models() -> list[str]:
    """Names of every model this package registers with timm, in registration order."""
    return list(_PROJECT_MODELS)


def register_paper_figures(figures: dict[str, dict[str, float | None]]) -> None:
    """Record published figures (``params_m``, ``gmacs``, ``top1``) of models, for ``fcvit models``."""
    _PAPER_FIGURES.update(figures)


def paper_figures(name: str) -> dict[str, float | None]:
    """The published figures recorded for ``name`` (empty if none)."""
    return dict(_PAPER_FIGURES.get(name, {}))
