"""FCViT model family: timm integration, shapes, official checkpoints, ablation switches, compile/export."""

from __future__ import annotations

import pytest
import timm
import torch
from official_fixtures import FIXTURES, SHARED, TINY_CKPT, micro_model, needs_shared
from safetensors.torch import save_file
from timm.models import load_checkpoint
from timm.optim import create_optimizer_v2

import fcvit
from fcvit.models.fcvit import MODEL_ARGS

HIERARCHICAL = ["fcvit_tiny", "fcvit_b12", "fcvit_b24", "fcvit_b48"]
ISOTROPIC = ["iso_fcvit_256_12", "iso_fcvit_384_16"]
SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes=10)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- registration and timm conventions ------------------------------------------------------------


def test_every_model_is_registered_with_timm():
    for name in HIERARCHICAL + ISOTROPIC:
        assert name in timm.list_models("*fcvit*")
        assert name in fcvit.list_models()


def test_create_model_with_timm_kwargs():
    model = timm.create_model("fcvit_b12", num_classes=10, in_chans=1, drop_path_rate=0.1)
    assert model.get_classifier().out_features == 10
    assert model.stem.conv.in_channels == 1
    rates = [b.drop_path1.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path1, "drop_prob")]
    # linear from 0 (first block: Identity) to 0.1 over all 12 blocks
    assert len(rates) == 11 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)


@pytest.mark.parametrize(("name", "crop_pct"), [("fcvit_tiny", 0.9), ("fcvit_b12", 0.9), ("fcvit_b24", 0.95)])
def test_pretrained_cfg(name, crop_pct):
    cfg = timm.create_model(name).pretrained_cfg
    assert cfg["crop_pct"] == crop_pct
    assert cfg["interpolation"] == "bicubic"
    assert cfg["first_conv"] == "stem.conv" and cfg["classifier"] == "head"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_params_equal_the_official_code():
    # official FCViT code: 4.78 / 14.70 / 26.96 / 51.48 M parameters
    expected = dict(fcvit_tiny=4.78, fcvit_b12=14.70, fcvit_b24=26.96, fcvit_b48=51.48)
    for name, millions in expected.items():
        assert round(n_params(timm.create_model(name)) / 1e6, 2) == millions


def test_isotropic_params_within_ten_percent_of_paper():
    for name, paper in [("iso_fcvit_256_12", 8.2), ("iso_fcvit_384_16", 23.2)]:
        assert abs(n_params(timm.create_model(name)) / 1e6 - paper) / paper < 0.10


def test_init_follows_the_official_release():
    model = fcvit.FCViT(**SMALL)
    block = model.stages[0].blocks[0]
    assert torch.all(block.ls1.gamma == 1e-5) and torch.all(block.ls2.gamma == 1e-5)
    dw = block.token_mixer.rounds[0].dw
    fan_out = 11 * 11 * 16 // 16
    assert dw.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.2)
    assert torch.all(model.head.bias == 0) and model.head.weight.std().item() == pytest.approx(0.02, rel=0.2)
    dense = fcvit.FCViT(**SMALL, layer_scale_init_value=1e-6)
    assert torch.all(dense.stages[0].blocks[0].ls1.gamma == 1e-6)


# --- forward / backward and shapes ----------------------------------------------------------------


@pytest.mark.parametrize("name", HIERARCHICAL + ISOTROPIC)
def test_forward_backward_every_variant(name):
    model = timm.create_model(name, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (33, 97), (224, 160)])
def test_output_shapes_any_input_size(size):
    model = fcvit.FCViT(**SMALL).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[:2] == (2, 64)
        assert model.forward_head(feats).shape == (2, 10)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 64)


def test_features_only_gives_four_normed_stage_maps():
    model = timm.create_model("fcvit_tiny", features_only=True)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [32, 64, 160, 320]
    feats = model(torch.randn(1, 3, 100, 72))
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 25, 18), (64, 13, 9), (160, 7, 5), (320, 4, 3)]
    # each map passes its own GroupNorm(1): zero mean, unit variance per sample at init
    for f in feats:
        assert f.mean().abs().item() < 1e-4 and f.var().item() == pytest.approx(1.0, rel=1e-2)


def test_features_only_out_indices():
    model = timm.create_model("fcvit_tiny", features_only=True, out_indices=(1, 3))
    assert model.feature_info.reduction() == [8, 32]
    assert [f.shape[1] for f in model(torch.randn(1, 3, 64, 64))] == [64, 320]


@pytest.mark.parametrize("channels_last", [False, True])
def test_fx_feature_extraction_matches_eager(channels_last):
    """timm's FX feature extraction traces FCViT (the fast-path layers and the input checks are leaves of the
    graph) and its nodes give the eager model's stage maps and logits."""
    from timm.layers import create_feature_extractor

    model = fcvit.FCViT(**SMALL).eval()
    x = torch.randn(2, 3, 64, 48)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    extractor = create_feature_extractor(model, {"stages.1": "stage1", "stages.3": "stage3", "head": "logits"})
    stages = {}
    hooks = [model.stages[i].register_forward_hook(lambda m, a, y, i=i: stages.setdefault(i, y)) for i in (1, 3)]
    with torch.no_grad():
        got, logits = extractor(x), model(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(got["logits"], logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(got["stage1"], stages[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(got["stage3"], stages[3], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expects an input of shape"):
        extractor(torch.randn(2, 1, 64, 48))


def test_forward_intermediates_matches_forward_features():
    model = fcvit.FCViT(**SMALL).eval()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
    assert [t.shape[1] for t in inter] == [16, 32, 48, 64]


def test_reset_classifier_and_grad_checkpointing():
    model = fcvit.FCViT(**SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(True)
        assert torch.allclose(model(x), ref)
    model.reset_classifier(3)
    assert model(x).shape == (1, 3)
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (1, 64, 2, 2)


def test_group_matcher_drives_timm_layer_decay():
    model = fcvit.FCViT(**SMALL)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.7)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) > 2 and scales[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 1, 64, 64), (2, 4, 64, 64), (2, 3, 64)])
def test_bad_input_raises_value_error_naming_expected_shape(shape):
    model = fcvit.FCViT(**SMALL)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(*shape))


# --- official checkpoints -------------------------------------------------------------------------


def test_micro_fixture_matches_official_logits():
    model, io = micro_model()
    with torch.no_grad():
        for key in ("64", "48x80"):
            diff = (model(io[f"x{key}"]) - io[f"logits{key}"]).abs().max().item()
            assert diff <= 2e-5, f"micro fixture at {key}: max |diff| {diff}"


@needs_shared
def test_tiny_fixture_matches_official_logits_both_routes(tmp_path):
    io = torch.load(SHARED / "official_fcvit_tiny_random_io.pt", weights_only=True)
    by_path = timm.create_model("fcvit_tiny", checkpoint_path=str(TINY_CKPT)).eval()
    by_cfg = timm.create_model("fcvit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(TINY_CKPT))).eval()
    with torch.no_grad():
        for model in (by_path, by_cfg):
            for key in ("224", "160x192"):
                diff = (model(io[f"x{key}"]) - io[f"logits{key}"]).abs().max().item()
                assert diff <= 1e-4, f"tiny fixture at {key}: max |diff| {diff}"


def test_training_checkpoint_dict_prefers_ema_like_timm(tmp_path):
    model, io = micro_model()
    official = torch.load(FIXTURES / "official_fcvit_micro_random.pth", weights_only=True)
    zeroed = {k: torch.zeros_like(v) if k == "head.bias" else v for k, v in official.items()}
    path = tmp_path / "train_ckpt.pth"
    torch.save({"epoch": 3, "state_dict": zeroed, "state_dict_ema": official}, path)
    c = io["config"]
    kwargs = dict(depths=c["depths"], dims=c["dims"], num_classes=c["num_classes"])
    ema = timm.create_model("fcvit_tiny", checkpoint_path=str(path), **kwargs)
    assert torch.equal(ema.head.bias, official["head.bias"])
    plain = timm.create_model("fcvit_tiny", **kwargs)
    load_checkpoint(plain, str(path), use_ema=False)
    assert torch.all(plain.head.bias == 0)


def test_safetensors_checkpoint(tmp_path):
    model, io = micro_model()
    path = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    c = io["config"]
    loaded = timm.create_model(
        "fcvit_tiny", checkpoint_path=str(path), depths=c["depths"], dims=c["dims"], num_classes=c["num_classes"]
    ).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(io["x64"]), io["logits64"], atol=2e-5)


def test_official_keys_map_onto_ours():
    official = torch.load(FIXTURES / "official_fcvit_micro_random.pth", weights_only=True)
    ours = fcvit.models.convert_official_state_dict(official)
    assert "stages.2.blocks.1.token_mixer.rounds.1.mlp.fc2.weight" in ours
    assert "stages.3.downsample.conv.weight" in ours and "stem.norm.running_var" in ours
    assert "stages.0.blocks.0.ls1.gamma" in ours
    assert not fcvit.models.is_official_state_dict(ours)


@needs_shared
def test_checkpoint_of_another_variant_names_both():
    with pytest.raises(ValueError, match="checkpoint is fcvit_tiny .* the model is fcvit_b12"):
        timm.create_model("fcvit_b12", checkpoint_path=str(TINY_CKPT))


def test_wrong_shape_names_the_tensor():
    model, _ = micro_model()
    state = model.state_dict()
    state["stages.1.blocks.0.token_mixer.rounds.0.dw.weight"] = torch.zeros(32, 1, 7, 7)
    with pytest.raises(
        ValueError, match=r"'stages\.1\.blocks\.0\.token_mixer\.rounds\.0\.dw\.weight'.*\[32, 1, 11, 11\]"
    ):
        model.load_state_dict(state)


def test_pretrained_file_with_other_head_and_channels(tmp_path):
    model, io = micro_model()
    path = tmp_path / "micro.pth"
    torch.save(torch.load(FIXTURES / "official_fcvit_micro_random.pth", weights_only=True), path)
    c = io["config"]
    adapted = timm.create_model(
        "fcvit_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=c["num_classes"]),
        depths=c["depths"],
        dims=c["dims"],
        num_classes=3,
        in_chans=1,
    )
    assert adapted.head.out_features == 3 and adapted.stem.conv.in_channels == 1
    assert torch.equal(adapted.stages[2].blocks[1].ls1.gamma, model.stages[2].blocks[1].ls1.gamma)


# --- ablation switches ----------------------------------------------------------------------------


def tiny(**kwargs) -> fcvit.FCViT:
    return fcvit.FCViT(**{**SMALL, **kwargs})


def gc_params(model: fcvit.FCViT) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".gc." in n)


def test_global_context_none_static_dynamic():
    none, static, dynamic = (tiny(global_context=m) for m in ("none", "static", "dynamic"))
    assert gc_params(none) == 0
    # dynamic adds the rescale weight and bias (one per group) to every global context module
    n_gc = sum(1 for m in dynamic.modules() if isinstance(m, fcvit.layers.GlobalContext))
    assert n_params(dynamic) - n_params(static) == n_gc * 2 * 8
    assert n_params(none) < n_params(static)


def test_competitive_bottleneck_changes_fc1_only():
    comp, plain = tiny(competitive=True), tiny(competitive=False)
    # fc1: C -> 2 * C/8 with competition, C -> C/8 without; the difference is C*C/8 + C/8 per module
    dims = [16, 32, 48, 48, 64]  # one entry per block
    expected = sum(2 * (c * (c // 8) + c // 8) for c in dims)  # two rounds per block
    assert n_params(comp) - n_params(plain) == expected


@pytest.mark.parametrize("groups", [1, 4, 8, 16])
def test_groups(groups):
    model = tiny(gc_groups=groups)
    gcs = [m for m in model.modules() if isinstance(m, fcvit.layers.GlobalContext)]
    assert all(m.groups == groups and m.rescale_weight.numel() == groups for m in gcs)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_thirty_two_groups():
    model = fcvit.FCViT(depths=(1, 1, 1, 1), dims=(32, 64, 96, 128), gc_groups=32, num_classes=2)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("k", [3, 5, 7, 8, 9, 11, 13])
def test_kernel_sizes_keep_same_output_size(k):
    model = tiny(kernel_size=k)
    dw = model.stages[0].blocks[0].token_mixer.rounds[0].dw
    assert dw.weight.shape[-2:] == (k, k)
    _, inter = model.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert [t.shape[-1] for t in inter] == [16, 8, 4, 2]


def test_mixer_rounds_and_mlp_dwconv():
    two, one = tiny(mixer_rounds=2), tiny(mixer_rounds=1)
    assert len(one.stages[0].blocks[0].token_mixer.rounds) == 1
    assert n_params(two) > n_params(one)
    with_dw, without = tiny(mlp_dwconv=True), tiny(mlp_dwconv=False)
    hidden = [16 * 8, 32 * 8, 48 * 4, 48 * 4, 64 * 4]
    assert n_params(with_dw) - n_params(without) == sum(h * 9 + h for h in hidden)


def test_custom_config_is_one_call():
    model = timm.create_model("fcvit_tiny", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=4, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_model_args_cover_every_variant():
    assert set(MODEL_ARGS) == set(HIERARCHICAL + ISOTROPIC)


# --- compile / export -----------------------------------------------------------------------------


def test_torch_compile_matches_eager():
    model = timm.create_model("fcvit_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_export_matches_eager(channels_last):
    """Also with a channels_last input, which takes the global context's autograd Function."""
    model = timm.create_model("fcvit_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), atol=1e-5)
