"""FCViT's plain layers against the paper's equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcvit.layers import DepthwiseConv2d, GlobalContext, create_token_mixer, list_token_mixers


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
def test_depthwise_conv_is_same_padded(k):
    """'same' output for odd and even kernels; PyTorch's padding='same' is the reference for even ones."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, k)
    x = torch.randn(2, 6, 7, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding="same", groups=6))


def test_token_mixer_registry():
    assert "fcvit" in list_token_mixers()
    mixer = create_token_mixer("fcvit", 16, mixer_rounds=1, kernel_size=5)
    assert mixer(torch.randn(1, 16, 8, 8)).shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="unknown token mixer 'nope'"):
        create_token_mixer("nope", 16)
