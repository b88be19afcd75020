"""FCViT layers against the paper's equations, and the exact kernel cropping against plain convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcvit.layers import DepthwiseConv2d, GlobalContext, create_token_mixer, list_token_mixers
from fcvit.layers.global_context import DynamicContextFunction


def reference_dynamic_context(gc: GlobalContext, x: torch.Tensor) -> torch.Tensor:
    """Token-global similarity written out index by index, as the issue states it."""
    B, C, H, W = x.shape
    G = gc.groups
    d = C // G
    g = x.mean((2, 3))
    v = gc.bottleneck(g)
    xf = x.reshape(B, C, H * W)
    s = torch.zeros(B, G, H * W, dtype=x.dtype)
    for h in range(G):
        for j in range(d):
            s[:, h] += xf[:, h * d + j] * g[:, h * d + j, None]
    s = s * d**-0.5
    for b in range(B):
        s[b] = (s[b] - s[b].mean()) / (torch.std(s[b]) + 1e-5)
    s = s * gc.rescale_weight[None, :, None] + gc.rescale_bias[None, :, None]
    out = torch.zeros_like(xf)
    for h in range(G):
        for j in range(d):
            out[:, h * d + j] = s[:, h] * v[:, h * d + j, None]
    return out.reshape(B, C, H, W)


def test_dynamic_global_context_matches_the_equation():
    torch.manual_seed(0)
    gc = GlobalContext(32, "dynamic", groups=4).double()
    with torch.no_grad():
        gc.rescale_weight.uniform_(0.5, 1.5)
        gc.rescale_bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 32, 5, 7, dtype=torch.float64)
    assert torch.allclose(gc.context(x), reference_dynamic_context(gc, x), atol=1e-12)


@pytest.mark.parametrize("tokens,channels,groups", [(12, 8, 4), (1, 16, 8), (4, 6, 2)])
def test_dynamic_context_function_gradcheck(tokens, channels, groups):
    """The hand-written backward of the channels_last training path passes gradcheck in float64, down to one
    token (a 1x1 map, where the standardisation runs over the groups alone)."""
    torch.manual_seed(0)
    shapes = [(3, tokens, channels), (3, channels), (3, channels), (groups,), (groups,)]
    inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in shapes]
    fn = lambda t, g, v, w, b: DynamicContextFunction.apply(t, g, v, w, b, groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_dynamic_context_under_cpu_autocast_keeps_autograd_path():
    """Under bf16 autocast the channels_last tokens take autograd's path (the written-out backward is fp32 only):
    the sum keeps the tokens' dtype, values stay within bf16 rounding of fp32, and gradients flow."""
    torch.manual_seed(0)
    gc = GlobalContext(32, "dynamic", groups=8)
    x = torch.randn(2, 32, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gc(x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, gc(x), rtol=0, atol=0.05)
    with torch.profiler.profile() as prof:
        y.sum().backward()
    assert "DynamicContextFunctionBackward" not in {e.name for e in prof.events()}
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.profiler.profile() as prof:
        gc(x).sum().backward()  # fp32: the written-out backward
    assert "DynamicContextFunctionBackward" in {e.name for e in prof.events()}


def test_static_global_context_is_constant_over_positions():
    gc = GlobalContext(16, "static", groups=8, competitive=False)
    out = gc.context(torch.randn(2, 16, 6, 6))
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))


def test_global_context_rejects_bad_groups_and_modes():
    with pytest.raises(ValueError, match="groups"):
        GlobalContext(30, groups=8)
    with pytest.raises(ValueError, match="mode"):
        GlobalContext(32, mode="softmax")


@pytest.mark.parametrize("k", [3, 8, 11, 13])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4, 4), (7, 5), (16, 9)])
def test_kernel_cropping_equals_plain_convolution(k, size):
    """Exact: cropping drops only taps that multiply padding. Tolerance 1e-5 (fp32 summation order)."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, k)
    x = torch.randn(2, 6, *size, requires_grad=True)
    fast = conv(x)
    conv.fast = False
    plain = conv(x)
    assert fast.shape == plain.shape == x.shape
    assert torch.allclose(fast, plain, atol=1e-5)
    # padding='same' is PyTorch's own reference for the even-kernel convention
    same = F.conv2d(x, conv.weight, conv.bias, padding="same", groups=6)
    assert torch.allclose(plain, same, atol=1e-5)
    (g_fast,) = torch.autograd.grad(fast.sum(), x)
    (g_plain,) = torch.autograd.grad(plain.sum(), x)
    assert torch.allclose(g_fast, g_plain, atol=1e-5)


def test_token_mixer_registry():
    assert "fcvit" in list_token_mixers()
    mixer = create_token_mixer("fcvit", 16, rounds=1, kernel_size=5)
    assert mixer(torch.randn(1, 16, 8, 8)).shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="unknown token mixer 'nope'"):
        create_token_mixer("nope", 16)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_context_fast_add_equals_plain(mode, channels_last):
    """``gc(x)`` (x + GC(x) by batched matrix products) equals ``x + gc.context(x)``, values and gradients,
    and keeps the input's memory format."""
    torch.manual_seed(0)
    gc = GlobalContext(32, mode, groups=8)
    if mode == "dynamic":
        with torch.no_grad():
            gc.rescale_weight.uniform_(0.5, 1.5)
            gc.rescale_bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 32, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(3, 32, 7, 9)
    results = []
    for fast in (True, False):
        gc.fast = fast
        gc.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = gc(xi)
        (y * weights).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad for n, p in gc.named_parameters()}))
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    (y_fast, gx_fast, grads_fast), (y_plain, gx_plain, grads_plain) = results
    torch.testing.assert_close(y_fast, y_plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx_fast, gx_plain, rtol=0, atol=1e-5)
    for name in grads_plain:
        torch.testing.assert_close(grads_fast[name], grads_plain[name], rtol=1e-4, atol=1e-4, msg=name)
