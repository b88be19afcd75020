"""Token mixers by name, so that a backbone can put a different spatial mixer in every stage.

A token mixer is any ``nn.Module`` built as ``factory(dim, **kwargs)`` that maps a map
[B, C, H, W] to a map of the same shape. Register one with :func:`register_token_mixer`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_TOKEN_MIXERS: dict[str, Callable[..., nn.Module]] = {}


def register_token_mixer(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a token-mixer class or factory under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _TOKEN_MIXERS:
            raise ValueError(f"token mixer {name!r} is registered twice")
        _TOKEN_MIXERS[name] = factory
        return factory

    return wrap


def list_token_mixers() -> list[str]:
    """Names of all registered token mixers."""
    return sorted(_TOKEN_MIXERS)


def create_token_mixer(name: str, dim: int, **kwargs) -> nn.Module:
    """Build the token mixer ``name`` for ``dim`` channels."""
    if name not in _TOKEN_MIXERS:
        raise ValueError(f"unknown token mixer {name!r}; registered: {', '.join(list_token_mixers())}")
    return _TOKEN_MIXERS[name](dim, **kwargs)
