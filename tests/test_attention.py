"""Attention with softmax replacements and depth-wise self-attention as token mixers."""

from __future__ import annotations

import pytest
import timm
import torch
from mixers_utils import assert_gradient_reaches_every_parameter
from timm.utils import AttentionExtract

from fcvit.layers import (
    ATTENTION_ACTIVATIONS,
    Attention2d,
    DepthwiseAttention2d,
    attention_activation,
    create_token_mixer,
    list_token_mixers,
)

POS = ("rel", "abs", "none")


# --- activations: each one's defining property ------------------------------------------------------


@pytest.fixture
def logits() -> torch.Tensor:
    torch.manual_seed(0)
    return 3 * torch.randn(2, 3, 5, 7)  # [B, heads, N queries, M keys], mixed signs


def test_softmax_rows_sum_to_one(logits):
    a = attention_activation(logits, "softmax")
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3, 5))
    assert (a > 0).all()


def test_none_is_identity(logits):
    assert torch.equal(attention_activation(logits, "none"), logits)


def test_scaling_divides_by_number_of_keys(logits):
    torch.testing.assert_close(attention_activation(logits, "scaling"), logits / 7)


@pytest.mark.parametrize("activation", ["scaling_relu", "ln_relu"])
def test_relu_variants_are_non_negative(logits, activation):
    a = attention_activation(logits, activation)
    assert (a >= 0).all() and (a == 0).any()
    torch.testing.assert_close(a, attention_activation(logits, activation.removesuffix("_relu")).relu())


def test_ln_rows_have_zero_mean_unit_variance(logits):
    a = attention_activation(logits, "ln")
    torch.testing.assert_close(a.mean(-1), torch.zeros(2, 3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.var(-1, unbiased=False), torch.ones(2, 3, 5), atol=1e-3, rtol=0)
    torch.testing.assert_close(a, torch.nn.functional.layer_norm(logits, (7,)))


@pytest.mark.parametrize("activation", ATTENTION_ACTIVATIONS)
def test_masked_keys_get_zero_and_do_not_count(logits, activation):
    """With a key mask, the activation equals the unmasked one on the selected keys alone."""
    valid = torch.zeros(5, 7, dtype=torch.bool)
    valid[:, 2:5] = True
    masked = attention_activation(logits, activation, valid)
    assert (masked[..., ~valid] == 0).all()
    torch.testing.assert_close(masked[..., 2:5], attention_activation(logits[..., 2:5], activation))


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="'gelu'"):
        attention_activation(torch.zeros(1, 2), "gelu")
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        Attention2d(16, activation="gelu")


# --- window selection ---------------------------------------------------------------------------------


def _pair(cls, pos_embed: str, window: int, **kw):
    """A global and a window mixer with the same weights on 5x5 maps."""
    glob = cls(32, num_heads=2, pos_embed=pos_embed, pos_size=5, **kw)
    win = cls(32, num_heads=2, pos_embed=pos_embed, pos_size=5, window=window, **kw)
    win.load_state_dict(glob.state_dict())
    return glob, win


@pytest.mark.parametrize("pos_embed", POS)
@pytest.mark.parametrize("activation", [*ATTENTION_ACTIVATIONS, "dwattn"])
def test_window_covering_the_map_equals_global(activation, pos_embed):
    if activation == "dwattn":
        glob, win = _pair(DepthwiseAttention2d, pos_embed, 9)
    else:
        glob, win = _pair(Attention2d, pos_embed, 9, activation=activation)
    x = torch.randn(2, 32, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(win(x), glob(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["softmax", "ln"])
def test_small_window_equals_masked_global_attention(activation):
    """A 3x3 window is global attention restricted to the keys within one row/column of the query."""
    m = Attention2d(16, activation=activation, num_heads=2, window=3, pos_embed="none")
    x = torch.randn(1, 16, 4, 5)
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None]).abs() <= 1) & ((xs[:, None] - xs[None]).abs() <= 1)  # [N, N]
    with torch.no_grad():
        q, k, v = m.heads(m.qkv(m.tokens(x)), 3)
        attn = attention_activation((q * m.scale) @ k.transpose(-2, -1), activation, near)
        torch.testing.assert_close(m(x), m.output(attn @ v, 4, 5), atol=1e-5, rtol=1e-5)


def test_depthwise_attention_is_eq5():
    """o_i = q_i * mean_j k_j + sum_j p_ij k_j, then the output projection."""
    m = DepthwiseAttention2d(16, num_heads=2, pos_embed="rel", pos_size=3)
    x = torch.randn(1, 16, 3, 3)
    with torch.no_grad():
        q, k = m.heads(m.qk(m.tokens(x)), 2)
        p = m.position_bias(3, 3, x.device)  # [heads, 9, 9]
        expected = m.output(q * k.mean(2, keepdim=True) + p @ k, 3, 3)
        torch.testing.assert_close(m(x), expected)
        # channel c of a head mixes only channel c of q and k: no value bank, no channel mixing before proj
        assert m.qk.out_features == 2 * 16 and not hasattr(m, "qkv")


def test_relative_offsets_beyond_the_table_clip():
    m = Attention2d(16, num_heads=2, pos_size=3)  # table for offsets -2..2
    bias = m.position_bias(1, 6, torch.device("cpu"))  # offsets up to 5 along W
    assert bias.shape == (2, 6, 6)
    assert torch.equal(bias[:, 0, 2], bias[:, 0, 5])  # offsets -2 and -5 share the clipped entry
    assert m(torch.randn(1, 16, 1, 6)).shape == (1, 16, 1, 6)


def test_absolute_embedding_resizes():
    m = Attention2d(16, num_heads=2, pos_embed="abs", pos_size=4)
    assert m(torch.randn(1, 16, 6, 3)).shape == (1, 16, 6, 3)


# --- training signal, registry, attention capture, errors -----------------------------------------------


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("pos_embed", ["rel", "abs"])
@pytest.mark.parametrize("mixer", [f"attn_{a}" for a in ATTENTION_ACTIVATIONS] + ["dwattn"])
def test_gradient_reaches_every_parameter(mixer, pos_embed, window):
    torch.manual_seed(0)
    m = create_token_mixer(mixer, 16, num_heads=2, window=window, pos_embed=pos_embed, pos_size=4)
    assert_gradient_reaches_every_parameter(m, torch.randn(2, 16, 4, 4))


def test_registered_names():
    names = set(list_token_mixers())
    assert {f"attn_{a}" for a in ATTENTION_ACTIVATIONS} | {"dwattn", "acmix", "fcvit"} <= names


@pytest.mark.parametrize("model_name", ["test_attn_ln_relu", "test_dwattn"])
def test_attention_extract_captures_weights(model_name):
    """timm's AttentionExtract (hooks on '*attn_drop') gets [B, heads, N, M]: M = window^2 or N."""
    model = timm.create_model(model_name, num_classes=0)
    maps = AttentionExtract(model, method="hook")(torch.randn(1, 3, 64, 64))
    shapes = {name.split(".token_mixer")[0]: tuple(t.shape) for name, t in maps.items()}
    assert shapes == {
        "stages.0.blocks.0": (1, 1, 16 * 16, 49),  # window 7 on 16x16, 16 channels / 16 per head
        "stages.1.blocks.0": (1, 2, 8 * 8, 49),
        "stages.2.blocks.0": (1, 3, 4 * 4, 4 * 4),  # global selection
        "stages.3.blocks.0": (1, 4, 2 * 2, 2 * 2),
    }


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="window must be a positive odd"):
        Attention2d(16, window=4)
    with pytest.raises(ValueError, match="do not split into 3 heads"):
        DepthwiseAttention2d(16, num_heads=3)
    with pytest.raises(ValueError, match="pos_embed must be one of"):
        Attention2d(16, pos_embed="sincos")
    with pytest.raises(ValueError, match=r"expects an input of shape \[B, 16, H, W\]"):
        Attention2d(16)(torch.randn(1, 8, 4, 4))
