"""ACmix: equality with the official module, strides, channel changes, devices, initialisation, any map size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from mixers_utils import assert_gradient_reaches_every_parameter, check_gradients
from timm.utils import AttentionExtract

import fcvit
from fcvit.layers import ACmix, create_token_mixer
from fcvit.layers.acmix import reflect_pad

FIXTURE = Path(__file__).parent / "fixtures" / "official_acmix_random.pt"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def official() -> dict:
    if not FIXTURE.exists():
        pytest.skip(f"fixture {FIXTURE} is absent")
    return torch.load(FIXTURE, weights_only=True)


def test_matches_official_module(official):
    m = ACmix(**official["config"])
    m.load_state_dict(official["state_dict"])  # strict: same names and shapes as the official module
    with torch.no_grad():
        y = m(official["x"])
    assert y.shape == official["y"].shape
    assert (y - official["y"]).abs().max() <= 1e-5


def test_both_paths_are_checked_by_the_fixture(official):
    """Each path's share of the fixture output is far above the 1e-5 tolerance, so an error in either shows."""
    m = ACmix(**official["config"])
    m.load_state_dict(official["state_dict"])
    x = official["x"]
    with torch.no_grad():
        q, k, v = m.conv1(x), m.conv2(x), m.conv3(x)
        att, conv = m.rate1 * m.attention(q, k, v), m.rate2 * m.convolution(q, k, v)
    torch.testing.assert_close(att + conv, official["y"], atol=1e-5, rtol=0)
    assert att.abs().mean() > 1e-2 and conv.abs().mean() > 1e-2


@pytest.mark.parametrize("size", [(12, 10), (13, 11)])
def test_stride_two_subsamples_stride_one(official, size):
    """Stride s evaluates the same attention windows and convolution at every s-th position (even and odd maps)."""
    cfg = {**official["config"], "stride": 1}
    m1, m2 = ACmix(**cfg), ACmix(**{**cfg, "stride": 2})
    m1.load_state_dict(official["state_dict"])
    m2.load_state_dict(official["state_dict"])
    x = torch.randn(2, cfg["in_planes"], *size)
    with torch.no_grad():
        y1, y2 = m1(x), m2(x)
    assert y2.shape[-2:] == ((size[0] + 1) // 2, (size[1] + 1) // 2)
    torch.testing.assert_close(y2, y1[..., ::2, ::2], atol=1e-5, rtol=0)


def test_channel_change_and_stride_shapes():
    m = ACmix(16, 32, kernel_att=5, head=4, stride=2)
    x = torch.randn(2, 16, 10, 9)
    assert m(x).shape == (2, 32, 5, 5)
    assert_gradient_reaches_every_parameter(m, x)


def test_gradient_reaches_every_parameter():
    assert_gradient_reaches_every_parameter(ACmix(32, 32, head=4), torch.randn(2, 32, 8, 8))


def test_shift_initialisation_survives_model_init():
    """FCViT's global init would redraw dep_conv; ACmix.init_weights restores the shift kernels and 0.5 rates."""
    model = timm.create_model("test_acmix")
    mixers = [m for m in model.modules() if isinstance(m, ACmix)]
    assert len(mixers) == 4
    for m in mixers:
        assert m.rate1.item() == 0.5 and m.rate2.item() == 0.5
        w = m.dep_conv.weight  # [out, k*k, k, k]: input map i of each group is a one-hot at tap (i // k, i % k)
        k = m.kernel_conv
        expected = torch.zeros_like(w)
        for i in range(k * k):
            expected[:, i, i // k, i % k] = 1.0
        assert torch.equal(w, expected)


def test_shift_kernels_shift():
    """At init, with fc passing only the q projection into tap i, the conv path is q shifted by tap i."""
    m = ACmix(8, 8, head=2)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        m.fc.weight.zero_()
        m.fc.weight[0, 0] = 1.0  # tap 0 = (top-left) receives q of head 0
        q = m.conv1(x)
        conv = m.convolution(q, m.conv2(x), m.conv3(x))
    # every output channel reads, per head-channel group, the map of tap 0 shifted by (-1, -1) (zero padded)
    groups = m.out_planes // m.head_dim
    expected = torch.zeros_like(q[:, : m.head_dim])
    expected[..., 1:, 1:] = q[:, : m.head_dim, :-1, :-1]
    torch.testing.assert_close(conv, expected.repeat_interleave(groups, dim=1))


def test_follows_input_dtype_and_device():
    m = ACmix(8, 8, head=2).double()
    assert m(torch.randn(1, 8, 6, 6, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu(official):
    m = ACmix(**official["config"])
    m.load_state_dict(official["state_dict"])
    with torch.no_grad():
        y = m.cuda()(official["x"].cuda())
    torch.testing.assert_close(y.cpu(), official["y"], atol=1e-4, rtol=0)


def test_bad_inputs_are_named():
    m = ACmix(8, 8, head=2)
    with pytest.raises(ValueError, match=r"ACmix expects an input of shape \[B, 8, H, W\]"):
        m(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="does not split"):
        ACmix(8, 10, head=4)
    with pytest.raises(ValueError, match="must be odd"):
        ACmix(8, 8, kernel_att=6, head=2)


def test_token_mixer_and_attention_capture():
    assert isinstance(fcvit.layers.ACmix, type)
    mixer = create_token_mixer("acmix", 16, head=2, kernel_att=3)
    assert mixer(torch.randn(2, 16, 5, 5)).shape == (2, 16, 5, 5)
    model = timm.create_model("test_acmix", num_classes=0)
    maps = AttentionExtract(model, method="hook")(torch.randn(1, 3, 128, 128))
    assert len(maps) == 4
    first = maps["stages.0.blocks.0.token_mixer.attn_drop"]
    assert first.shape == (1, 1, 32 * 32, 49)  # [B, heads, H * W, kernel_att ** 2]
    torch.testing.assert_close(first.sum(-1), torch.ones(1, 1, 32 * 32))


def test_reflect_pad_matches_numpy_at_every_size():
    """Repeated reflection as numpy's mode="reflect", for maps of 1..8 rows/columns and paddings 0..5."""
    for height in range(1, 9):
        width = 9 - height  # every width too, against every height
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        for pad in range(6):
            expected = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
            got = reflect_pad(x, pad)
            assert got.shape == expected.shape
            assert np.array_equal(got.numpy(), expected), f"{height}x{width} map, pad {pad}"


def test_reflect_pad_equals_torch_where_torch_defines_it():
    """Where F.pad(mode="reflect") is defined (pad < H, W), as the official module pads, the results are equal."""
    for height, width, pad in [(4, 4, 3), (5, 7, 3), (2, 9, 1), (8, 6, 5)]:
        x = torch.randn(1, 2, height, width)
        assert torch.equal(reflect_pad(x, pad), F.pad(x, [pad] * 4, mode="reflect"))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (4, 4), (2, 3), (4, 1)])
def test_maps_not_larger_than_the_padding(size, stride):
    """Maps of 1x1..4x4 (7x7 window, padding 3) run, with ceil(H / stride) outputs and gradients everywhere."""
    m = ACmix(8, 8, kernel_att=7, head=2, stride=stride)
    x = torch.randn(2, 8, *size)
    y = m(x)
    assert y.shape == (2, 8, -(-size[0] // stride), -(-size[1] // stride))
    assert torch.isfinite(y).all()
    if min(size) > 1:
        assert_gradient_reaches_every_parameter(m, x)


def test_one_pixel_map_attends_to_itself():
    """On a 1x1 map every window position is the pixel itself (position term 0): attention returns v."""
    m = ACmix(8, 8, kernel_att=7, head=2)
    x = torch.randn(3, 8, 1, 1)
    with torch.no_grad():
        q, k, v = m.conv1(x), m.conv2(x), m.conv3(x)
        torch.testing.assert_close(m.attention(q, k, v), v)


def test_fcvit_frame_acmix_model_at_28_px():
    """test_acmix (maps 7, 4, 2, 1 in its four stages) trains at 28 px."""
    model = timm.create_model("test_acmix", num_classes=3)
    loss = F.cross_entropy(model(torch.randn(2, 3, 28, 28)), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    check_gradients(model)
