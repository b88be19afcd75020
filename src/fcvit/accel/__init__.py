"""``fcvit.optimize(model)``: the plain model's modules swapped in place for faster ones with the same results.

As ``ipex.optimize`` does, and as PyTorch's convention wants it: ``timm.create_model`` returns the plain model,
whose ``forward`` reads like the papers and which ``torch.compile``, FX, TorchScript and ``torch.export`` take
as it is; an explicit call makes it faster. Each swapped module becomes a subclass of its own class holding the
same parameters and buffers (its ``__class__`` changes, nothing else), so ``state_dict`` keys, checkpoints, EMA
copies and hooks work on either, and ``optimize(model, backend=None)`` swaps them back. Every optimised module
equals its plain one within 1e-4 in fp32 (tests/test_optimize.py).

Backends:

* ``"cpu"``: the exact fast paths (:mod:`fcvit.accel.fcvit`, :mod:`fcvit.accel.cpu`,
  :mod:`fcvit.accel.global_context`) and kernel cropping of the depth-wise convs
  (:mod:`fcvit.accel.depthwise`). The CPU paths apply to eager CPU tensors only, so a model optimised for the CPU
  also runs anywhere else as the plain model would, with its kernels cropped.
* ``"triton"``: as ``"cpu"``, and depth-wise convs of channels_last CUDA maps run the Triton kernels of
  :mod:`fcvit.accel.triton_depthwise`.
* ``"auto"`` (default): ``"cpu"``, plus the Triton kernels where they were measured to beat cuDNN: not yet
  anywhere, since they have not met a GPU (docs/benchmarks.md).
"""

import importlib.util

from torch import nn

from ..layers import ChannelMixer, DepthwiseConv2d, GlobalContext, PointwiseMlp
from ..models.fcvit import FCViT, FCViTBlock, IsoFCViT, OverlapPatchEmbed
from ..runtime import adapt_threads_from_now_on
from .depthwise import FastDepthwiseConv2d, TritonDepthwiseConv2d
from .fcvit import (
    FastBlocks,
    FastChannelMixer,
    FastFCViT,
    FastFCViTBlock,
    FastIsoFCViT,
    FastOverlapPatchEmbed,
    FastPointwiseMlp,
)
from .global_context import FastGlobalContext

BACKENDS = ("auto", "cpu", "triton")

# plain class -> its optimised subclass (the "cpu" backend)
_FAST: dict[type[nn.Module], type[nn.Module]] = {
    DepthwiseConv2d: FastDepthwiseConv2d,
    GlobalContext: FastGlobalContext,
    ChannelMixer: FastChannelMixer,
    PointwiseMlp: FastPointwiseMlp,
    OverlapPatchEmbed: FastOverlapPatchEmbed,
    FCViTBlock: FastFCViTBlock,
    nn.Sequential: FastBlocks,  # only a sequence of FCViT blocks (_fast_class)
    FCViT: FastFCViT,
    IsoFCViT: FastIsoFCViT,
}
_PLAIN = {fast: plain for plain, fast in _FAST.items()} | {TritonDepthwiseConv2d: DepthwiseConv2d}


def _plain_class(m: nn.Module) -> type[nn.Module]:
    return _PLAIN.get(type(m), type(m))


def _fast_class(m: nn.Module, backend: str) -> type[nn.Module] | None:
    """The optimised class for plain module ``m``, or None if it has none."""
    cls = type(m)
    if cls is nn.Sequential and not (len(m) and all(isinstance(b, FCViTBlock) for b in m)):
        return None
    if cls is DepthwiseConv2d and backend == "triton":
        return TritonDepthwiseConv2d
    return _FAST.get(cls)


def optimize(model: nn.Module, backend: str | None = "auto") -> nn.Module:
    """Swap ``model``'s modules in place for optimised subclasses (``backend``: ``"auto"``, ``"cpu"`` or
    ``"triton"``; see the module docstring), or back to the plain classes with ``backend=None``; returns
    ``model``. Calling it again with another backend first swaps back, so the result depends only on the last call.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"fcvit.optimize: unknown backend {backend!r}; choose from {BACKENDS} or None (plain)")
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        raise RuntimeError("fcvit.optimize: backend 'triton' needs Triton (PyTorch's CUDA wheels bring it)")
    if backend in ("auto", "cpu"):
        adapt_threads_from_now_on()  # the CPU path keeps torch's team to the free cores (ChannelsLastInside)
    for m in model.modules():
        m.__class__ = _plain_class(m)
        fast = _fast_class(m, backend) if backend is not None else None
        if fast is not None:
            m.__class__ = fast
    return model


def is_optimized(model: nn.Module) -> bool:
    """True if any module of ``model`` has been swapped by :func:`optimize`."""
    return any(type(m) in _PLAIN for m in model.modules())


__all__ = ["BACKENDS", "is_optimized", "optimize"]
