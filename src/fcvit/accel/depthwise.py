"""FCViT's depth-wise convolution made faster, with the same results: the kernel cropped to the taps that can
reach the map, a CPU backward made of forward convolutions and, when asked, Triton kernels on CUDA.

* Kernel cropping (every device). When the feature map is smaller than the kernel, most taps only ever multiply
  zero padding. A map of H rows can reach at most ``2H - 1`` taps, so the kernel is cropped to the taps that can
  touch the map before convolving: 7x7 of an 11x11 kernel on a 4x4 map, 3x3 on a 2x2 map. This makes 11x11
  kernels cheap on the 7x7 .. 1x1 maps of late stages and small inputs. It lives here, not in the plain layer,
  because the plain layer is the paper's convolution as written (and what tracers and exporters see); the
  commands apply :func:`fcvit.optimize` by default, so every device gets it.
* Backward as forward convolutions (CPU). oneDNN, PyTorch's CPU convolution, computes the weight gradient
  of a depth-wise convolution with a generic kernel: im2col + GEMM for NCHW tensors (for 11x11 kernels on
  56x56 maps, hundreds of times the forward pass), a dense jit kernel for channels_last ones.
  :class:`DepthwiseConvFunction` computes both gradients with forward depth-wise convolutions (2-D for the
  input gradient, 3-D over the batch for the weight gradient), which run on oneDNN's depth-wise kernels:
  faster at every shape of FCViT's 11x11 mixers measured, in both memory formats, and for every kernel larger
  than 3x3; oneDNN's own 3x3 depth-wise backward is faster except on the tiniest maps (:func:`fast_backward_helps`).
* Triton (:class:`TritonDepthwiseConv2d`, ``fcvit.optimize(model, backend="triton")``): channels_last CUDA maps
  take the kernels of :mod:`fcvit.accel.triton_depthwise` for the forward and both gradients.
"""

import torch
import torch.nn.functional as F

from ..layers.depthwise import DepthwiseConv2d
from .dispatch import eager_on

Padding = tuple[int, int, int, int]  # (left, right, top, bottom), the order of F.pad

# Where DepthwiseConvFunction's backward beats PyTorch's on CPU (forward + backward, 128 images, channels_last;
# docs/benchmarks.md): oneDNN has a fast 3x3 depth-wise backward, 1.9-3.3x faster than DepthwiseConvFunction
# on 4x4 to 16x16 maps but 4x slower on 2x2; for 5x5 and larger kernels it falls back to a generic one, and
# DepthwiseConvFunction is 1.1-3.2x faster on every map measured (16x16 down to 4x4).
SMALL_KERNEL_TAPS = 9  # 3x3: oneDNN's own backward, except on tiny maps
DEPTHWISE_MAX_PIXELS = 4


def fast_backward_helps(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """:class:`DepthwiseConvFunction`'s backward is the faster one for a depth-wise conv of ``x`` with ``weight``
    [C, 1, kh, kw]: on CPU with gradients needed, for kernels larger than 3x3 on any map and for any kernel on
    maps of at most :data:`DEPTHWISE_MAX_PIXELS` pixels.

    It asks for a CPU tensor, not for eager mode: under torch.compile the maps stay NCHW, where oneDNN's
    depth-wise weight gradient is the im2col one (docs/benchmarks.md), so the compiled graph keeps this backward too.
    """
    kh, kw = weight.shape[-2:]
    return (
        torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and x.device.type == "cpu"
        and (kh * kw > SMALL_KERNEL_TAPS or x.shape[-2] * x.shape[-1] <= DEPTHWISE_MAX_PIXELS)
    )


def _taps(kernel: int, size: int) -> tuple[int, int, int, int]:
    """First and last useful tap of a 'same' kernel on a map of ``size``, with the left/right padding.

    With left padding ``p = (k - 1) // 2`` output i reads input ``i + t - p``: only taps with
    ``|t - p| <= size - 1`` can land on the map.
    """
    left = (kernel - 1) // 2
    first = max(0, left - (size - 1))
    last = min(kernel - 1, left + (size - 1))
    return first, last, left - first, last - left


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: Padding) -> torch.Tensor:
    """Depth-wise cross-correlation of ``x`` [B, C, H, W] with ``weight`` [C, 1, kh, kw] after zero padding ``pad``."""
    left, right, top, bottom = pad
    if left == right and top == bottom:
        return F.conv2d(x, weight, bias, padding=(top, left), groups=x.shape[1])
    return F.conv2d(F.pad(x, pad), weight, bias, groups=x.shape[1])


def in_layout_of(grad: torch.Tensor, param_stride: tuple[int, ...]) -> torch.Tensor:
    """``grad`` with the strides ``param_stride`` of the tensor it is the gradient of.

    A [C, 1, kh, kw] weight made channels_last has strides (kh*kw, 1, kw, 1), and ``F.conv2d``'s backward returns
    its gradient so; one built in NCHW has (kh*kw, kh*kw, kw, 1): the same memory, which autograd accepts, but
    DDP compares strides exactly with its gradient buckets and warns ("Grad strides do not match bucket view
    strides") on every rank.
    """
    if grad.stride() == tuple(param_stride):
        return grad
    return torch.empty_strided(grad.shape, param_stride, dtype=grad.dtype, device=grad.device).copy_(grad)


class CropKernel(torch.autograd.Function):
    """``weight[:, :, h0:h1, w0:w1]`` whose gradient has the weight's strides (autograd's slice backward builds
    an NCHW one; see :func:`in_layout_of`)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, h0: int, h1: int, w0: int, w1: int) -> torch.Tensor:
        ctx.crop = (h0, h1, w0, w1)
        ctx.save_for_backward(weight)
        return weight[:, :, h0:h1, w0:w1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        h0, h1, w0, w1 = ctx.crop
        full = torch.zeros_like(weight, dtype=grad.dtype)  # zeros_like keeps the weight's strides
        full[:, :, h0:h1, w0:w1] = grad
        return full, None, None, None, None


class DepthwiseConvFunction(torch.autograd.Function):
    """:func:`depthwise_conv` whose backward pass is made of forward depth-wise convolutions.

    With ``y[b, c] = xpad[b, c] * w[c]`` (cross-correlation ``*``):

    * ``grad_x[b, c] = grad_y[b, c] * flip(w[c])`` with the padding mirrored (a transposed convolution);
    * ``grad_w[c] = sum_b xpad[b, c] * grad_y[b, c]``: a depth-wise 3-D convolution of the padded input,
      seen as C volumes of depth B, with the grad_y volumes as (B x H x W) kernels.

    Under autocast the saved input and weight are cast to the gradient's dtype, as the forward conv did.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pad: Padding) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.pad = pad
        ctx.has_bias = bias is not None
        return depthwise_conv(x, weight, bias, pad)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        left, right, top, bottom = ctx.pad
        C = x.shape[1]
        kh, kw = weight.shape[-2:]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.to(grad.dtype).flip(-2, -1)
            grad_x = depthwise_conv(grad, flipped, None, (right, left, bottom, top)).to(x.dtype)
        if ctx.needs_input_grad[1] and x.shape[0] == 0:  # conv3d takes no empty depth axis; nothing to sum
            grad_w = torch.zeros_like(weight)
        elif ctx.needs_input_grad[1]:
            # The batch becomes the depth axis of one depth-wise 3-D convolution, which sums over it:
            # input [1, C, B, Hp, Wp], kernels [C, 1, B, H, W] (grad_y), output [1, C, 1, kh, kw]. For
            # channels_last maps the input is a view of x's memory. The kernels must be channel-major: grad
            # goes there through NCHW (a transpose within each image, then whole H x W planes moved), 1.5-3x
            # faster than transposing channels_last straight to channel-major on 16x16 and 8x8 maps.
            x = x.to(grad.dtype)
            if left == right and top == bottom:
                padding = (0, top, left)
            else:
                x, padding = F.pad(x, ctx.pad), (0, 0, 0)
            volume = x.transpose(0, 1).unsqueeze(0)
            kernels = grad.contiguous().transpose(0, 1).unsqueeze(1).contiguous(memory_format=torch.channels_last_3d)
            grad_w = F.conv3d(volume, kernels, padding=padding, groups=C).view(C, 1, kh, kw).to(weight.dtype)
            grad_w = in_layout_of(grad_w, weight.stride())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None


class FastDepthwiseConv2d(DepthwiseConv2d):
    """:class:`~fcvit.layers.DepthwiseConv2d` with the kernel cropped to the map and, where it is the faster one
    (:func:`fast_backward_helps`), :class:`DepthwiseConvFunction`'s backward. Same parameters, same results."""

    def cropped(self, x: torch.Tensor) -> tuple[torch.Tensor, Padding]:
        """The taps of the weight that can reach ``x``'s map, and the padding that goes with them."""
        (kh, kw), (H, W) = self.kernel_size, x.shape[-2:]
        h0, h1, top, bottom = _taps(kh, H)
        w0, w1, left, right = _taps(kw, W)
        pad = (left, right, top, bottom)
        if (h1 + 1 - h0, w1 + 1 - w0) == (kh, kw):
            return self.weight, pad
        return CropKernel.apply(self.weight, h0, h1 + 1, w0, w1 + 1), pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, pad = self.cropped(x)
        if fast_backward_helps(x, weight):
            return DepthwiseConvFunction.apply(x, weight, self.bias, pad)
        return depthwise_conv(x, weight, self.bias, pad)


class TritonDepthwiseConv2d(FastDepthwiseConv2d):
    """:class:`FastDepthwiseConv2d` whose channels_last CUDA maps run through the Triton kernels
    (:class:`~fcvit.accel.triton_depthwise.TritonDepthwiseConvFunction`), in the dtype ``F.conv2d`` would use
    (the autocast dtype under autocast), launched on the input's GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (eager_on(x, "cuda") and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        from .triton_depthwise import TritonDepthwiseConvFunction

        weight, pad = self.cropped(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.cuda.device_of(x):  # Triton launches on the current GPU; a no-op for a CPU tensor
            return TritonDepthwiseConvFunction.apply(x.to(dtype), weight.to(dtype), bias, pad)
