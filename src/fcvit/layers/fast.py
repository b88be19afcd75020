"""Exact fast paths for CPU, chosen automatically, and the switch that turns them all off.

Every path here computes what the plain modules compute, up to float rounding (tests hold them to 1e-4 in
fp32), and applies only where it was measured to help (docs/benchmarks.md):

* **channels_last** (CPU, training and inference): oneDNN's convolutions, depth-wise ones most, are faster
  on NHWC tensors. FCViT converts its input once at the stem and hands maps back in the caller's format.
* **Conv + GELU as one oneDNN call** (CPU inference): ``GELU(conv(x))`` with the GELU as a post-op of the
  convolution (``torch.ops.mkldnn._convolution_pointwise``, the op inductor emits for the same pattern), so
  the pre-activation map is never written to memory and read back.
* **Small maps in training** (CPU, channels_last; e.g. the 4x4 and 2x2 maps of stages 3-4 at 64 px):
  oneDNN's convolution backward is slowest there, so a dense conv runs as a linear layer over its input
  patches (for a 1x1 conv the pixels themselves, views of the same memory) and, on the smallest maps, a
  depth-wise conv with :class:`~fcvit.layers.depthwise.DepthwiseConvFunction`'s backward (:func:`run_conv`).
* **Batch chunking** (CPU): in inference a stage runs its blocks on a few images at a time, so that the widest
  map a block makes (the channel mixer's hidden map, 8x the width in stages 1-2) stays small: closer to the
  caches, and below glibc's 32 MiB mmap ceiling, above which every map is mapped fresh and page-faulted in
  at each operator (:mod:`fcvit.runtime`). Eval mode makes every image independent (BatchNorm uses its
  running statistics), so chunking cannot change the result. In training only the channel mixer is chunked,
  and only where its hidden map would reach the ceiling (it holds no BatchNorm: exact in either mode).

Elsewhere: :class:`~fcvit.layers.DepthwiseConv2d` crops kernels on small maps, has a CPU backward made
of forward convolutions and, when asked (:func:`set_triton`), Triton kernels for channels_last CUDA maps;
:class:`~fcvit.layers.GlobalContext` adds its dynamic context with two batched matrix products over the
tokens in place (any device, training too), with a written-out backward for channels_last tokens
(:class:`~fcvit.layers.global_context.DynamicContextFunction`).

None of the CPU paths here applies while tracing (torch.compile, torch.export, ONNX export, FX,
TorchScript): the traced graph is the plain one, so exported models run anywhere and the compiler does its
own fusing.

:func:`set_fast_path` turns every fast path of a model on or off (:func:`plain_path` for a ``with`` block);
with them off a model is the plain reference the tests and ``fcvit bench NAME:plain`` compare to.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .checks import eager_on
from .depthwise import DepthwiseConv2d, DepthwiseConvFunction, fast_backward_helps

# Bytes of the widest map one chunk of images may make. Chosen by a sweep (docs/benchmarks.md) on a 2-core
# Xeon: fcvit_b12 at 224 px, batch 16, runs stage 1 two images at a time (6.1 MiB hidden map per image),
# stage 2 four, stages 3-4 whole.
CHUNK_BYTES = 16 * 2**20


def _onednn_conv_pointwise() -> torch._ops.OpOverloadPacket | None:
    try:
        return torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


# Largest maps (input pixels) on which run_conv runs a dense conv as a linear layer in training. Measured per
# layer, forward + backward, at fcvit_tiny's 64 px shapes: a 1x1 conv is 1.1-1.5x faster on 4x4 maps and
# 1.6-1.8x on 2x2, mixed on 8x8 and up to 2x slower on 16x16; the stride-2 3x3 downsampling conv over its
# patches 1.45x faster on a 4x4 map, 0.6-0.8x on 8x8 (docs/benchmarks.md).
LINEAR_MAX_PIXELS = 16

# oneDNN convolution with an element-wise post-op (None where PyTorch was built without oneDNN).
FUSED_CONV = _onednn_conv_pointwise() if torch.backends.mkldnn.is_available() else None

# Bytes a map made in CPU training may take: just below glibc's mmap ceiling (32 MiB), so that it comes from the
# heap instead of a fresh mapping. fcvit_tiny's stage-1 hidden maps at 64 px, batch 128, are exactly 32 MiB: in
# two halves, 1.03-1.04x train step with glibc's default settings, 1.00x with fcvit.runtime's (docs/benchmarks.md).
TRAIN_CHUNK_BYTES = 32 * 2**20 - 1


def cpu_inference(x: torch.Tensor) -> bool:
    """Eager CPU fp32 without autograd or autocast: where the inference-only fast paths apply."""
    return (
        eager_on(x, "cpu")
        and not torch.is_grad_enabled()
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def cpu_training(x: torch.Tensor) -> bool:
    """Eager CPU with autograd recording: where the training-only fast paths apply."""
    return eager_on(x, "cpu") and torch.is_grad_enabled()


def _zero_padded(conv: nn.Conv2d) -> bool:
    """``conv`` pads with zeros by explicit amounts (not ``'same'``/``'valid'``), as the fast paths take it."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def run_conv(conv: nn.Conv2d, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """``conv(x)``; with ``fast``, in CPU training, a dense conv on a small channels_last map (at most
    :data:`LINEAR_MAX_PIXELS` pixels) runs as a linear layer over its patches, and a 'same'-size depth-wise conv
    takes :class:`~fcvit.layers.depthwise.DepthwiseConvFunction` where its backward is the faster one
    (:func:`~fcvit.layers.depthwise.fast_backward_helps`); both exact."""
    if not (fast and cpu_training(x) and _zero_padded(conv) and conv.dilation == (1, 1)):
        return conv(x)
    if conv.groups == 1:
        small = x.shape[-2] * x.shape[-1] <= LINEAR_MAX_PIXELS and x.is_contiguous(memory_format=torch.channels_last)
        return _linear_over_patches(conv, x) if small else conv(x)
    (kh, kw), (top, left) = conv.kernel_size, conv.padding
    same_size = 2 * top == kh - 1 and 2 * left == kw - 1  # the maps DepthwiseConvFunction is written for
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1, 1)
    if same_size and depthwise and fast_backward_helps(x, conv.weight):
        return DepthwiseConvFunction.apply(x, conv.weight, conv.bias, (left, left, top, top))
    return conv(x)


def _linear_over_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a channels_last ``x`` (stored as [B, H, W, C]) and a dense ``conv``: every output pixel
    is ``W b + bias`` with ``b`` its (kh, kw, C) input patch, one ``F.linear`` for the whole map. A 1x1 conv's
    patches are the pixels themselves, a view of ``x``; larger kernels gather theirs (one copy)."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    rows = x.permute(0, 2, 3, 1)
    weight = conv.weight.permute(0, 2, 3, 1).flatten(1)  # [O, kh * kw * C], the patches' order
    if (kh, kw, sh, sw, ph, pw) != (1, 1, 1, 1, 0, 0):
        rows = F.pad(rows, (0, 0, pw, pw, ph, ph))
        B, Hp, Wp, C = rows.shape
        b, h, w, c = rows.stride()
        windows = ((Hp - kh) // sh + 1, (Wp - kw) // sw + 1, kh, kw, C)
        rows = rows.as_strided((B, *windows), (b, sh * h, sw * w, h, w, c)).flatten(3)
    return F.linear(rows, weight, conv.bias).permute(0, 3, 1, 2)


def conv_gelu(conv: nn.Conv2d, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """``GELU(conv(x))`` (exact, erf GELU); one oneDNN call with a GELU post-op when ``fast`` and in CPU inference,
    else :func:`run_conv` then GELU."""
    if not (fast and FUSED_CONV is not None and _zero_padded(conv) and cpu_inference(x)):
        return F.gelu(run_conv(conv, x, fast))
    return FUSED_CONV(
        x,
        conv.weight,
        conv.bias,
        list(conv.padding),
        list(conv.stride),
        list(conv.dilation),
        conv.groups,
        "gelu",
        [],
        "none",
    )


def batch_chunk(x: torch.Tensor, widest_channels: int, budget: int | None = None) -> int:
    """Images per chunk so that a ``widest_channels``-channel map of ``x``'s size fits in ``budget`` bytes
    (default :data:`CHUNK_BYTES`), evened out over the batch (16 images at 5 per chunk: 4 chunks of 4)."""
    per_image = widest_channels * x.shape[-2] * x.shape[-1] * x.element_size()
    most = max(1, (budget or CHUNK_BYTES) // max(per_image, 1))
    chunks = -(-x.shape[0] // most)
    return -(-x.shape[0] // chunks)


def run_chunked(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, widest_channels: int, budget: int | None = None
) -> torch.Tensor:
    """``fn(x)`` computed a few images at a time, so that a ``widest_channels``-channel map of ``x``'s size fits in
    ``budget`` bytes (:func:`batch_chunk`; ``fn`` must treat images independently)."""
    chunk = batch_chunk(x, widest_channels, budget)
    if chunk >= x.shape[0]:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


def run_chunked_in_training(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, widest_channels: int
) -> torch.Tensor:
    """``fn(x)``; in CPU training a few images at a time where a ``widest_channels``-channel map of ``x``'s size would
    reach :data:`TRAIN_CHUNK_BYTES` (``fn`` must treat images independently)."""
    if not cpu_training(x):
        return fn(x)
    return run_chunked(fn, x, widest_channels, TRAIN_CHUNK_BYTES)


def set_fast_path(model: nn.Module, enabled: bool = True) -> int:
    """Turn every exact fast path in ``model`` on or off; return the number of modules switched.

    A module with fast paths has a boolean ``fast`` attribute. ``enabled=False`` gives the plain computation:
    full kernels, PyTorch's own backward, NCHW, separate conv and GELU, whole batches, the global context as
    its equations read.
    """
    switched = 0
    for m in model.modules():
        if hasattr(m, "fast"):
            m.fast = enabled
            switched += 1
    return switched


def set_triton(model: nn.Module, enabled: bool = True) -> int:
    """Run every :class:`~fcvit.layers.DepthwiseConv2d` of ``model`` through the Triton kernels of
    :mod:`fcvit.layers.triton_depthwise` on channels_last CUDA maps (``enabled=False``: cuDNN again); return the
    number of layers switched. Off by default: not yet measured against cuDNN (docs/benchmarks.md)."""
    if enabled and importlib.util.find_spec("triton") is None:
        raise RuntimeError("set_triton: Triton is not installed (PyTorch's CUDA wheels bring it)")
    layers = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    for m in layers:
        m.triton = enabled
    return len(layers)


@contextlib.contextmanager
def plain_path(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` on its plain path inside the ``with`` block, then give every module its own setting back."""
    saved = [(m, m.fast) for m in model.modules() if hasattr(m, "fast")]
    set_fast_path(model, False)
    try:
        yield model
    finally:
        for m, fast in saved:
            m.fast = fast
