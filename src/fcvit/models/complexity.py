"""Static cost of a model: parameters, multiply-accumulates and activations of one forward pass."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

_aten = torch.ops.aten
# The convolutions, linear layers and matrix products as they reach the dispatcher (``linear`` and ``matmul``
# decompose into these before it).
_COUNTED_OPS = (_aten.convolution, _aten.mm, _aten.addmm, _aten.bmm, _aten.baddbmm)


class ActivationCounter(TorchDispatchMode):
    """Sums the output elements of every convolution, linear layer and matrix product run under it."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in _COUNTED_OPS:
            self.total += out.numel()
        return out


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def _count(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[float, float]:
    """GMACs and millions of activations of one eval-mode forward pass of a single image (one pass for both)."""
    was_training = model.training
    model.eval()
    flops, acts = FlopCounterMode(display=False), ActivationCounter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(flops)
        stack.enter_context(acts)
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    return flops.get_total_flops() / 2e9, acts.total / 1e6


def count_gmacs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> float:
    """GMACs of one eval-mode forward pass of a single image, counted by ``torch.utils.flop_counter``.

    The counter reports FLOPs as 2 x MACs for convolutions, linear layers and matrix products (the
    operations fvcore counts too); element-wise work is not counted, as in the papers' tables. Count a plain
    model (as ``timm.create_model`` returns it): one made faster by :func:`fcvit.optimize` crops kernels on
    small maps and counts fewer.
    """
    return _count(model, input_size)[0]


def count_activations(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> float:
    """Activations (millions) of one eval-mode forward pass of a single image, as Radosavovic et al. count them
    ("Designing Network Design Spaces", 2020) and the dynamic-convolution paper's Table 3 reports them.

    Counted: the number of output elements of every convolution (``aten.convolution``), linear layer and matrix
    product (``aten.mm``, ``addmm``, ``bmm``, ``baddbmm``, into which ``linear``, ``matmul`` and ``@`` decompose),
    seen by a ``TorchDispatchMode`` during the pass. Not counted: element-wise and normalisation outputs,
    pooling, reshapes; fused attention kernels (``scaled_dot_product_attention``: this package's models
    compute attention with explicit products, whose [N, M] weights count).
    """
    return _count(model, input_size)[1]


def count_complexity(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> tuple[float, float]:
    """``(count_gmacs, count_activations)`` of ``model`` from a single forward pass."""
    return _count(model, input_size)
