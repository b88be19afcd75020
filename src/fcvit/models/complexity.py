"""Static cost of a model: parameters and multiply-accumulates of one forward pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> float:
    """GMACs of one eval-mode forward pass of a single image, counted by ``torch.utils.flop_counter``.

    The counter reports FLOPs as 2 x MACs for convolutions, linear layers and matrix products (the
    operations fvcore counts too); element-wise work is not counted, as in the papers' tables. Count a plain
    model (as ``timm.create_model`` returns it): one made faster by :func:`fcvit.optimize` crops kernels on
    small maps and counts fewer.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    return counter.get_total_flops() / 2e9
