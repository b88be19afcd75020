"""Registered ACmix / attention / depth-wise attention models in FCViT's frame."""

from __future__ import annotations

import pytest
import timm
import torch
from mixers_utils import check_gradients

import fcvit
from fcvit.layers import ACmix, Attention2d, DepthwiseAttention2d, FCViTMixer
from fcvit.layers.attention import AbsolutePositionEmbedding
from fcvit.models.complexity import count_gmacs, count_params
from fcvit.models.mixers import MIXERS, VARIANTS

# One intra-op thread: on a shared, loaded 2-core machine OpenMP's spin-waiting made the train steps here
# ~15x slower with two threads (6 min against 27 s for the mixer tests).
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _input_size(name: str) -> int:
    """Smallest convenient input: 2x2 maps in the last stage."""
    return 64 if VARIANTS[name][0] is fcvit.FCViT else 32


def test_every_mixer_has_three_sizes_and_is_registered():
    assert set(MIXERS) == {"acmix", "dwattn", *(f"attn_{a}" for a in fcvit.layers.ATTENTION_ACTIVATIONS)}
    expected = {f"{m}_s12" for m in MIXERS} | {f"iso_{m}_384_12" for m in MIXERS} | {f"test_{m}" for m in MIXERS}
    assert set(VARIANTS) == expected
    assert expected <= set(fcvit.list_models()) and expected <= set(timm.list_models())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_trains_one_step(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4)
    size = _input_size(name)
    x, target = torch.randn(2, 3, size, size), torch.tensor([0, 3])
    head = model.get_classifier().weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    check_gradients(model)  # (with layer scale 1e-5 most block updates are below float32 resolution at lr 0.1)
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(head, model.get_classifier().weight)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_features_only(name):
    model = timm.create_model(name, features_only=True)
    size = _input_size(name)
    with torch.no_grad():
        maps = model(torch.randn(1, 3, size, size))
    if VARIANTS[name][0] is fcvit.FCViT:
        dims = VARIANTS[name][1]["dims"]
        sides = [size // (4 * 2**i) for i in range(4)]
        assert [tuple(m.shape) for m in maps] == [(1, d, s, s) for d, s in zip(dims, sides)]
    else:
        assert [tuple(m.shape) for m in maps] == [(1, 384, size // 16, size // 16)] * 3  # the last three blocks


@pytest.mark.parametrize("name", [f"test_{m}" for m in ("acmix", "attn_softmax", "dwattn")])
def test_fx_feature_extraction_matches_eager(name):
    """timm's FX feature extraction traces every mixer family (the mixers are leaves of the graph)."""
    from timm.layers import create_feature_extractor

    model = timm.create_model(name).eval()
    size = _input_size(name)
    x = torch.randn(1, 3, size, size)
    extractor = create_feature_extractor(model, {"stages.2": "stage2", "head": "logits"})
    with torch.no_grad():
        got, stage2 = extractor(x), model.stages[:3](model.stem(x))
        torch.testing.assert_close(got["logits"], model(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(got["stage2"], stage2, rtol=0, atol=1e-5)


def test_deit_s_size_depthwise_attention_is_cheaper_than_softmax():
    """Paper Table 3: depth-wise self-attention has fewer parameters and FLOPs than softmax attention."""
    dw, softmax = timm.create_model("iso_dwattn_384_12"), timm.create_model("iso_attn_softmax_384_12")
    assert count_params(dw) < count_params(softmax) - 12 * 384 * 384  # one C x C projection less per block
    assert count_gmacs(dw, (3, 112, 112)) < count_gmacs(softmax, (3, 112, 112))


def test_mixers_per_stage_in_one_frame():
    """FCViT mixers early, ACmix and attention later, in the same hierarchical frame."""
    model = fcvit.FCViT(
        num_classes=3,
        depths=(1, 1, 1, 1),
        dims=(16, 32, 48, 64),
        token_mixers=("fcvit", "acmix", "attn_softmax", "dwattn"),
        mixer_kwargs=(None, dict(head=2, kernel_att=3), dict(num_heads=3), dict(num_heads=4)),
    )
    kinds = [type(stage.blocks[0].token_mixer) for stage in model.stages]
    assert kinds == [FCViTMixer, ACmix, Attention2d, DepthwiseAttention2d]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_mixer_kwargs_update_the_variant_settings():
    model = timm.create_model("test_attn_softmax", mixer_kwargs=dict(pos_embed="abs"))
    mixers = [stage.blocks[0].token_mixer for stage in model.stages]
    assert all(isinstance(m.abs_pos, AbsolutePositionEmbedding) and m.rel_pos is None for m in mixers)
    assert [m.num_heads for m in mixers] == [1, 2, 3, 4] and [m.window for m in mixers] == [7, 7, None, None]
    with pytest.raises(ValueError, match="expected one per stage"):
        timm.create_model("test_dwattn", mixer_kwargs=[{}, {}])
