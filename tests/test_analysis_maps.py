"""Reading maps out of models: attention (timm AttentionExtract) and FCViT's token-global similarity."""

from __future__ import annotations

import math

import pytest
import torch

from fcvit.analysis.maps import (
    MapProbe,
    attention_layer_names,
    attention_layout,
    disable_fused_attention,
    fcvit_blocks,
    similarity_rows,
    similarity_site,
    similarity_sites,
    token_grid,
)
from fcvit.analysis.stats import attention_stats, drop_prefix_tokens
from fcvit.analysis.survey import map_statistics
from fcvit.hub import create


def create_model(name: str, model_kwargs: dict | None = None, img_size: int | None = None):
    """The model as the analyses see it: eval mode, fused attention off (its weights visible to the hooks)."""
    model = create(name, img_size=img_size, **(model_kwargs or {})).eval()
    disable_fused_attention(model)
    return model


TINY_VIT = dict(depth=2, embed_dim=64, num_heads=2)
TINY_FCVIT = dict(depths=(1, 1, 1, 1), dims=(16, 32, 32, 64))


@pytest.mark.parametrize("size", [32, 48])
def test_vit_attention_extraction_at_two_resolutions(size):
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", model_kwargs=TINY_VIT, img_size=size)
    names = attention_layer_names(model)
    assert names == ["blocks.0.attn", "blocks.1.attn"]
    maps = MapProbe(model)(torch.randn(3, 3, size, size))
    n = 1 + (size // 16) ** 2  # class token + patches
    assert list(maps) == names
    for attn in maps.values():
        assert attn.shape == (3, 2, n, n)
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, n))


def test_fused_attention_off_gives_the_same_outputs():
    torch.manual_seed(0)
    fused = create_model("vit_tiny_patch16_224", model_kwargs=TINY_VIT, img_size=32)
    for m in fused.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = True
    plain = create_model("vit_tiny_patch16_224", model_kwargs=TINY_VIT, img_size=32)
    plain.load_state_dict(fused.state_dict())
    assert not any(getattr(m, "fused_attn", False) for m in plain.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), fused(x), rtol=1e-4, atol=1e-5)


def test_deit_distilled_prefix_tokens():
    model = create_model("deit_tiny_distilled_patch16_224", model_kwargs=TINY_VIT, img_size=32)
    assert model.num_prefix_tokens == 2
    probe = MapProbe(model, attention=["blocks.1.attn"])
    maps = probe(torch.randn(1, 3, 32, 32))
    attn = maps["blocks.1.attn"]
    assert attn.shape == (1, 2, 6, 6)  # class + distillation token + 2x2 patches
    (layer,) = map_statistics(probe, maps, num_prefix_tokens=2)
    assert layer["name"] == "blocks.1.attn" and layer["kind"] == "attention"
    assert layer["statistics"] == pytest.approx(attention_stats(drop_prefix_tokens(attn, 2)))


def test_fcvit_similarity_maps_have_the_blocks_groups_and_map_size():
    torch.manual_seed(0)
    model = create_model("fcvit_tiny", model_kwargs=dict(TINY_FCVIT, gc_groups=4))
    assert len(fcvit_blocks(model)) == 4
    sites = similarity_sites(model)
    maps = MapProbe(model, attention=[], sites=sites)(torch.randn(2, 3, 64, 64))
    sizes = [16, 8, 4, 2]  # reductions 4, 8, 16, 32 of 64 px
    assert [tuple(s.shape) for s in maps.values()] == [(2, 4, n, n) for n in sizes]
    last = maps[similarity_site(model, -1).name]
    # untrained rescale (w = 1, beta = 0): s is standardised per image over groups and positions (Eq. 8)
    flat = last.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1), torch.ones(2), atol=1e-3, rtol=0)
    rows = similarity_rows(last)
    assert rows.shape == (2, 4, 1, 4)
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, 4, 1))


def test_similarity_site_reads_the_chosen_block_and_round():
    model = create_model("fcvit_tiny", model_kwargs=TINY_FCVIT)
    site = similarity_site(model, 1, 0)
    assert site.block_index == 1
    assert site.name == "stages.1.blocks.0.token_mixer.rounds.0.gc"
    assert site.gc is model.stages[1].blocks[0].token_mixer.rounds[0].gc
    with pytest.raises(ValueError, match="out of range"):
        similarity_site(model, 4)
    with pytest.raises(ValueError, match="round 2 is out of range"):
        similarity_site(model, 0, 2)
    with pytest.raises(ValueError, match="round -3 is out of range"):
        similarity_sites(model, -3)


@pytest.mark.parametrize("mode", ["none", "static"])
def test_similarity_needs_dynamic_global_context(mode):
    model = create_model("fcvit_tiny", model_kwargs=dict(TINY_FCVIT, global_context=mode))
    with pytest.raises(ValueError, match=f"global context '{mode}'"):
        similarity_site(model)
    assert similarity_sites(model) == []
    with pytest.raises(ValueError, match="nothing to analyse"):
        MapProbe(model)


def test_token_grid():
    assert token_grid(196, (224, 224)) == (14, 14)
    assert token_grid(12, (30, 40)) == (3, 4)
    with pytest.raises(ValueError, match="patch grid"):
        token_grid(13, (32, 32))


def test_window_layout_places_keys_around_the_query():
    # window 3 on a 4x4 grid: window entry (a, b) is the key at offset (a - 1, b - 1) from the query
    attn = torch.arange(9.0).expand(1, 16, 9)  # [heads, N, window^2]
    layout = attention_layout(type("W", (torch.nn.Module,), {"window": 3})(), attn[None], 1, (64, 64))
    maps = layout.maps(attn, [(0, 0), (2, 1)])
    assert maps.shape == (2, 1, 4, 4)
    expected = torch.zeros(4, 4)
    expected[:2, :2] = torch.tensor([[4.0, 5.0], [7.0, 8.0]])  # the part of the window inside the map
    torch.testing.assert_close(maps[0, 0], expected)
    assert maps[1, 0, 1:4, 0:3].flatten().tolist() == list(range(9))


def test_window_attention_of_the_project_matches_global_selection():
    """A window of 2*max(H, W)-1 selects every token: placed on the grid it must equal global attention."""
    attention = pytest.importorskip("fcvit.layers.attention")
    torch.manual_seed(0)
    glob = attention.Attention2d(16, num_heads=2, pos_embed="none")
    win = attention.Attention2d(16, num_heads=2, pos_embed="none", window=7)
    win.load_state_dict(glob.state_dict())
    x = torch.randn(1, 16, 4, 4)
    maps = {}
    for name, m in (("global", glob), ("window", win)):
        m.attn_drop.register_forward_hook(lambda mod, inp, out, name=name: maps.__setitem__(name, out))
        m(x)
    queries = [(0, 0), (1, 2), (3, 3)]
    placed = attention_layout(win, maps["window"], 1, (16, 16)).maps(maps["window"][0], queries)
    expected = attention_layout(glob, maps["global"], 1, (16, 16)).maps(maps["global"][0], queries)
    torch.testing.assert_close(placed, expected)


def test_attention_without_softmax_has_undefined_statistics():
    """LayerNorm in place of softmax: rows are no distributions, so the statistics are NaN with the reason."""
    model = create_model("test_attn_ln")
    probe = MapProbe(model)
    layers = map_statistics(probe, probe(torch.randn(1, 3, 64, 64)))
    assert [layer["kind"] for layer in layers] == ["window attention"] * 2 + ["attention"] * 2
    for layer in layers:
        assert all(math.isnan(v) for v in layer["statistics"].values())
        assert "statistics undefined" in layer["note"]
