"""Helpers shared by the ACmix / attention / mixer-model tests."""

from __future__ import annotations

import torch
from torch import nn

# ACmix's conv_p bias cancels in pe(query) - pe(key): its gradient is zero by construction (official module too).
DEAD_BY_CONSTRUCTION = ("conv_p.bias",)


def check_gradients(module: nn.Module) -> None:
    """After a backward pass: every parameter has a finite, non-zero gradient, except the dead-by-construction ones.

    Those are checked to be zero up to round-off (1e-5 of the largest gradient).
    """
    params = dict(module.named_parameters())
    missing = [name for name, p in params.items() if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    largest = max(p.grad.abs().max() for p in params.values())
    for name, p in params.items():
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        if name.endswith(DEAD_BY_CONSTRUCTION):
            assert p.grad.abs().max() <= 1e-5 * largest, f"{name} should get no gradient, got {p.grad.abs().max()}"
        elif not p.grad.abs().sum() > 0:
            missing.append(name)
    assert not missing, f"zero gradient for {missing}"


def assert_gradient_reaches_every_parameter(module: nn.Module, x: torch.Tensor) -> None:
    """Backpropagate a random projection of the output of ``module(x)``, then :func:`check_gradients`."""
    module.zero_grad()
    out = module(x)
    (out * torch.randn_like(out)).sum().backward()
    check_gradients(module)
