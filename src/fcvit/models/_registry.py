"""Registers this project's models with timm and remembers which they are."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from timm.models import register_model as _timm_register_model

F = TypeVar("F", bound=Callable)

_PROJECT_MODELS: list[str] = []
_PAPER_FIGURES: dict[str, dict[str, float | None]] = {}
_PAPER_VARIANTS: dict[str, list[tuple[dict, dict[str, float | None]]]] = {}


def register_model(fn: F) -> F:
    """timm's ``register_model``, plus a record so :func:`list_models` lists only this project's models."""
    _PROJECT_MODELS.append(fn.__name__)
    return _timm_register_model(fn)


def list_models() -> list[str]:
    """Names of every model this package registers with timm, in registration order."""
    return list(_PROJECT_MODELS)


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
