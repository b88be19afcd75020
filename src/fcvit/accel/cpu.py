"""Exact CPU fast paths of FCViT's convolutions: the operators behind :func:`fcvit.optimize`'s CPU modules.

Each computes what the plain layer computes, up to float rounding (tests hold them to 1e-4 in fp32), and is
used only where it was measured to help (docs/benchmarks.md):

* **Conv + GELU as one oneDNN call** (inference): ``GELU(conv(x))`` with the GELU as a post-op of the
  convolution (``torch.ops.mkldnn._convolution_pointwise``, the op inductor emits for the same pattern), so
  the pre-activation map is never written to memory and read back.
* **Small maps in training** (channels_last; e.g. the 4x4 and 2x2 maps of stages 3-4 at 64 px): oneDNN's
  convolution backward is slowest there, so a dense conv runs as a linear layer over its input patches (for a
  1x1 conv the pixels themselves, views of the same memory) and a depth-wise conv takes
  :class:`~fcvit.accel.depthwise.DepthwiseConvFunction`'s backward where it is the faster one (:func:`run_conv`).
* **Batch chunking**: a function of images run a few images at a time, so that the widest map it makes stays
  small: closer to the caches, and below glibc's 32 MiB mmap ceiling, above which every map is mapped fresh and
  page-faulted in at each operator (:mod:`fcvit.runtime`).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .depthwise import DepthwiseConvFunction, fast_backward_helps
from .dispatch import cpu_inference, cpu_training

# Bytes of the widest map one chunk of images may make in inference, chosen by a sweep (docs/benchmarks.md):
# fcvit_b12 at 224 px, batch 16, then runs stage 1 two images at a time (6.1 MiB hidden map per image),
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


def _zero_padded(conv: nn.Conv2d) -> bool:
    """``conv`` pads with zeros by explicit amounts (not ``'same'``/``'valid'``), as the fast paths take it."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def run_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; in CPU training, a dense conv on a small channels_last map (at most
    :data:`LINEAR_MAX_PIXELS` pixels) runs as a linear layer over its patches, and a 'same'-size depth-wise conv
    takes :class:`~fcvit.accel.depthwise.DepthwiseConvFunction` where its backward is the faster one
    (:func:`~fcvit.accel.depthwise.fast_backward_helps`); both exact."""
    if not (cpu_training(x) and _zero_padded(conv) and conv.dilation == (1, 1)):
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


def conv_gelu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``GELU(conv(x))`` (exact, erf GELU); one oneDNN call with a GELU post-op in CPU inference, else
    :func:`run_conv` then GELU."""
    if not (FUSED_CONV is not None and _zero_padded(conv) and cpu_inference(x)):
        return F.gelu(run_conv(conv, x))
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
    chunks = max(1, -(-x.shape[0] // most))  # an empty batch is one (empty) chunk
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
