"""Depth-wise 'same' convolution in Triton for channels_last CUDA tensors: forward and both gradients.

Why by hand: FCViT's 11x11 depth-wise convolutions are its main spatial cost, and large depth-wise kernels
are where cuDNN is weakest (the reason RepLKNet and SLaK shipped their own kernels). The kernels here read
channels_last ([B, H, W, C] in memory) maps, so each load is a run of contiguous channels:

* forward: one program per tile of ``BLOCK_H x BLOCK_W`` output pixels of one image and ``BLOCK_C`` channels,
  accumulating ``kh * kw`` shifted input tiles times their per-channel taps in float32;
* input gradient: the same kernel on the output gradient with the taps flipped and the padding mirrored
  (a transposed convolution is a convolution with the flipped kernel);
* weight gradient: ``grad_w[i, j, c] = sum_{b,h,w} x[b, h + i - top, w + j - left, c] * grad_y[b, h, w, c]``,
  one program per (kernel row, channel block, slice of the B*H*W pixels), a row of taps at a time; the
  slices' partial sums are added by ``torch.sum``.

Every result equals ``F.conv2d``'s up to float rounding (tests run the kernels in Triton's interpreter on CPU,
and on a GPU where there is one). The layers use them only when asked (``fcvit.optimize(model, backend="triton")``,
``fcvit bench NAME:triton``) until they are measured against cuDNN on a GPU (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .depthwise import in_layout_of

# Tiles, chosen so that the kernels compiled for sm_90 keep everything in registers (63 and 105 per thread, no
# spills; tests/test_triton_depthwise.py compiles them ahead of time); speed is not yet measured on a GPU.
BLOCK_H = 8
BLOCK_W = 8
BLOCK_P = 16  # pixels per step of the weight-gradient kernel
NUM_WARPS = 8
COMPILE_OPTIONS = dict(num_warps=NUM_WARPS, enable_fp_fusion=True)  # fused multiply-adds, on every Triton version
PROGRAMS_PER_SM = 4  # weight gradient: enough pixel slices to give every SM a few programs


@triton.jit
def _forward_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    H,
    W,
    C,
    pad_top,
    pad_left,
    KH: tl.constexpr,
    KW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # y[b, h, w, c] = bias[c] + sum_{i,j} x[b, h + i - top, w + j - left, c] * taps[i, j, c]  (zero outside)
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles = tl.cdiv(H, BLOCK_H) * tiles_w
    b = tl.program_id(0) // tiles
    tile = tl.program_id(0) % tiles
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    h = (tile // tiles_w) * BLOCK_H + p // BLOCK_W
    w = (tile % tiles_w) * BLOCK_W + p % BLOCK_W
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    image = b.to(tl.int64) * H * W * C
    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=tl.float32)
    for i in range(KH):
        hi = h + i - pad_top
        row_ok = (hi >= 0) & (hi < H)
        for j in range(KW):
            wi = w + j - pad_left
            ok = row_ok & (wi >= 0) & (wi < W)
            xv = tl.load(
                x_ptr + image + ((hi * W + wi) * C)[:, None] + c[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0
            )
            tap = tl.load(w_ptr + (i * KW + j) * C + c, mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * tap.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out_ok = (h < H) & (w < W)
    tl.store(
        y_ptr + image + ((h * W + w) * C)[:, None] + c[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=out_ok[:, None] & c_ok[None, :],
    )


@triton.jit
def _weight_grad_kernel(
    x_ptr,
    g_ptr,
    out_ptr,
    N,
    H,
    W,
    C,
    KH,
    pad_top,
    pad_left,
    per_slice,
    KW: tl.constexpr,
    KW_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # out[s, i, j, c] = sum over the pixels n = (b, h, w) of slice s of x[b, h + i - top, w + j - left, c] * g[n, c]
    i = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.program_id(2)
    c_ok = c < C
    j = tl.arange(0, KW_PAD)
    j_ok = j < KW
    acc = tl.zeros((KW_PAD, BLOCK_C), dtype=tl.float32)
    for start in range(s * per_slice, (s + 1) * per_slice, BLOCK_P):
        n = start + tl.arange(0, BLOCK_P)
        n_ok = n < N
        grad = tl.load(g_ptr + n.to(tl.int64)[:, None] * C + c[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0)
        w = n % W
        hi = (n // W) % H + i - pad_top
        wi = w[:, None] + j[None, :] - pad_left  # [BLOCK_P, KW_PAD]
        ok = (n_ok & (hi >= 0) & (hi < H))[:, None] & (wi >= 0) & (wi < W) & j_ok[None, :]
        # (b, hi, wi) is n moved by (i - top) rows and (j - left) columns
        offset = (n.to(tl.int64) + (i - pad_top) * W)[:, None] + (j[None, :] - pad_left)
        xv = tl.load(
            x_ptr + offset[:, :, None] * C + c[None, None, :], mask=ok[:, :, None] & c_ok[None, None, :], other=0.0
        )
        acc += tl.sum(xv.to(tl.float32) * grad.to(tl.float32)[:, None, :], axis=0)
    tl.store(
        out_ptr + ((s * KH + i) * KW + j)[:, None] * C + c[None, :],
        acc,
        mask=j_ok[:, None] & c_ok[None, :],
    )


def _channel_block(channels: int) -> int:
    return min(64, triton.next_power_of_2(channels))


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, C, H, W] stored channels_last, as a contiguous [B, H, W, C] view of the same memory."""
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def depthwise_forward(
    x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, top: int, left: int
) -> torch.Tensor:
    """'Same'-size depth-wise cross-correlation of channels_last ``x`` [B, C, H, W] with ``taps`` [kh, kw, C]
    (zero padding ``top`` rows above and ``left`` columns to the left); returns channels_last, ``x``'s dtype."""
    B, C, H, W = x.shape
    kh, kw = taps.shape[:2]
    y = torch.empty_like(x, memory_format=torch.channels_last)
    block_c = _channel_block(C)
    grid = (B * triton.cdiv(H, BLOCK_H) * triton.cdiv(W, BLOCK_W), triton.cdiv(C, block_c))
    _forward_kernel[grid](
        _nhwc(x),
        taps.contiguous(),
        bias if bias is not None else taps,
        y.permute(0, 2, 3, 1),
        H,
        W,
        C,
        top,
        left,
        KH=kh,
        KW=kw,
        HAS_BIAS=bias is not None,
        BLOCK_H=BLOCK_H,
        BLOCK_W=BLOCK_W,
        BLOCK_C=block_c,
        **COMPILE_OPTIONS,
    )
    return y


def depthwise_weight_grad(
    x: torch.Tensor, grad: torch.Tensor, kernel_size: tuple[int, int], top: int, left: int
) -> torch.Tensor:
    """Gradient [kh, kw, C] (float32) of :func:`depthwise_forward`'s taps, for input ``x`` and output gradient
    ``grad`` (both [B, C, H, W])."""
    B, C, H, W = x.shape
    kh, kw = kernel_size
    pixels = B * H * W
    block_c = _channel_block(C)
    programs = kh * triton.cdiv(C, block_c)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1
    slices = max(1, min(triton.cdiv(pixels, BLOCK_P), PROGRAMS_PER_SM * sms // programs))
    per_slice = triton.cdiv(triton.cdiv(pixels, slices), BLOCK_P) * BLOCK_P
    slices = triton.cdiv(pixels, per_slice)
    partial = torch.empty(slices, kh, kw, C, device=x.device, dtype=torch.float32)
    _weight_grad_kernel[(kh, triton.cdiv(C, block_c), slices)](
        _nhwc(x),
        _nhwc(grad),
        partial,
        pixels,
        H,
        W,
        C,
        kh,
        top,
        left,
        per_slice,
        KW=kw,
        KW_PAD=triton.next_power_of_2(kw),
        BLOCK_P=BLOCK_P,
        BLOCK_C=block_c,
        **COMPILE_OPTIONS,
    )
    return partial.sum(0)


class TritonDepthwiseConvFunction(torch.autograd.Function):
    """Depth-wise 'same' convolution of a channels_last ``x`` with ``weight`` [C, 1, kh, kw] and padding
    ``(left, right, top, bottom)``, forward and backward in Triton. ``x``, ``weight`` and ``bias`` share a dtype
    (the caller casts them under autocast, as ``F.conv2d`` would)."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad):
        left, _, top, _ = pad
        taps = weight[:, 0].permute(1, 2, 0)  # [kh, kw, C]
        ctx.save_for_backward(x, taps)
        ctx.weight_stride = weight.stride()
        ctx.pad = pad
        ctx.has_bias = bias is not None
        return depthwise_forward(x, taps, bias, top, left)

    @staticmethod
    def backward(ctx, grad):
        x, taps = ctx.saved_tensors
        left, right, top, bottom = ctx.pad
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = depthwise_forward(grad, taps.flip(0, 1), None, bottom, right)
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad, taps.shape[:2], top, left).permute(2, 0, 1).unsqueeze(1)
            grad_w = in_layout_of(grad_w.to(taps.dtype), ctx.weight_stride)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3), dtype=torch.float32).to(taps.dtype)
        return grad_x, grad_w, grad_b, None
