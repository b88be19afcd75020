"""Fine-tuning from released weights (fcvit.hub.pretrained): every family loaded into a model with another class
count, input channel count and image size; what was loaded, re-initialised, adapted and resampled, tensor by tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from official_fixtures import FIXTURES, SHARED, micro_kwargs
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc, resize_rel_pos_bias_table
from timm.models import adapt_input_conv
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fcvit.engine.checkpoint import save_checkpoint
from fcvit.errors import CheckpointError
from fcvit.hub import create_pretrained, weights_layout
from fcvit.models.dynconv import HOSTS

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FCVIT_MICRO = FIXTURES / "official_fcvit_micro_random.pth"
SWIN_MICRO = SHARED / "official_swin_acmix_micro_random.pth"
RESNET_MICRO = SHARED / "official_resnet_acmix_micro_random.pth"


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"official fixture not found at {path} (../shared is absent)")


def check_finetuned(
    model: nn.Module,
    report: str,
    reference: dict[str, torch.Tensor],
    *,
    stem: str,
    heads: tuple[str, ...],
    expected: dict[str, torch.Tensor] | None = None,
    fresh: tuple[str, ...] = (),
) -> None:
    """Every tensor of ``model`` against the weights it started from (``reference``: the file in the model's
    layout): the classifier re-initialised for 3 classes, the stem adapted to 1 channel, ``expected`` (resampled or
    converted, computed here with timm's functions) as given, ``fresh`` ones untouched by the file, every other one
    loaded bitwise; and the report's count of loaded tensors."""
    expected = expected or {}
    head_keys = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    own = model.state_dict()
    for key, value in own.items():
        if key in head_keys:
            assert value.shape[0] == 3 and reference[key].shape[0] != 3, key
        elif key == f"{stem}.weight":
            assert value.shape[1] == 1 and torch.equal(value, adapt_input_conv(1, reference[key]))
        elif key in expected:
            assert value.shape == expected[key].shape and torch.equal(value, expected[key]), key
        elif key not in fresh:
            assert torch.equal(value, reference[key]), key
    assert set(fresh) <= set(own) and set(expected) <= set(own) and head_keys <= set(own)
    assert report.startswith(f"loaded {len(own) - len(head_keys) - len(fresh)} tensors from ")


# --- the FCViT frame: FCViT, iso FCViT, the mixers (any image size: their position tables load unchanged) -------


def test_fcvit_official_release():
    kwargs = micro_kwargs(torch.load(FIXTURES / "official_fcvit_micro_random_io.pt", weights_only=True)["config"])
    reference = timm.create_model("fcvit_tiny", num_classes=10, **kwargs)
    reference.load_state_dict(torch.load(FCVIT_MICRO, weights_only=True))  # official layout, mapped on load
    model, report = create_pretrained("fcvit_tiny", FCVIT_MICRO, num_classes=3, in_chans=1, img_size=48, **kwargs)
    check_finetuned(model, report, reference.state_dict(), stem="stem.conv", heads=("head",))
    assert report == (
        f"loaded 210 tensors from {FCVIT_MICRO}; head re-initialised for 3 classes (was 10); "
        "stem adapted 3 -> 1 channels"
    )
    assert model.eval()(torch.randn(2, 1, 48, 48)).shape == (2, 3)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("iso_fcvit_256_12", dict(dim=32, depth=2)),
        ("fcvit_tiny", dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), token_mixers="pool")),
        ("test_acmix", {}),
        ("test_attn_softmax", {}),
        ("test_dwattn", dict(mixer_kwargs=dict(pos_embed="abs"))),
    ],
)
def test_fcvit_frame_run_checkpoint(tmp_path, name, kwargs):
    """An ``fcvit train`` checkpoint of 10 classes: relative tables and absolute maps load unchanged (the frame
    makes them for 224 px maps and fits them to any input), the model runs at 48 px."""
    source = timm.create_model(name, num_classes=10, **kwargs)
    path = tmp_path / "checkpoint-best.pth"
    save_checkpoint({"model": source.state_dict(), "model_name": name, "epoch": 3}, path)
    model, report = create_pretrained(name, path, num_classes=3, in_chans=1, img_size=48, **kwargs)
    check_finetuned(model, report, source.state_dict(), stem="stem.conv", heads=("head",))
    assert "resampled" not in report and "start fresh" not in report
    assert model.eval()(torch.randn(2, 1, 48, 48)).shape == (2, 3)


def test_head_and_stem_that_fit_are_kept(tmp_path):
    source = timm.create_model("test_attn_softmax", num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model, report = create_pretrained("test_attn_softmax", path)  # the file's classes and channels
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    n = len(source.state_dict())
    assert report == f"loaded {n} tensors from {path}; head kept (10 classes); stem kept (3 channels)"


def test_headless_weights_get_a_fresh_head(tmp_path):
    source = timm.create_model("test_acmix_resnet", num_classes=0)
    path = tmp_path / "backbone.safetensors"
    save_file(source.state_dict(), str(path))
    model, report = create_pretrained("test_acmix_resnet", path, num_classes=3)
    assert model.fc.out_features == 3
    n = len(source.state_dict())
    assert (
        report
        == f"loaded {n} tensors from {path}; head initialised for 3 classes (the file has none); stem kept (3 channels)"
    )


# --- Swin-ACmix and ResNet-ACmix: official releases ---------------------------------------------------------------


@needs(SWIN_MICRO)
def test_swin_acmix_official_release(tmp_path, monkeypatch):
    """The official training script's file (weights under ``model``, its yacs config pickled beside them), fine-tuned
    at 32 px: every window shrinks with its map (7 -> 4, 2, 1), so the relative tables are resampled."""
    from test_acmix_swin import save_release_checkpoint

    official = torch.load(SWIN_MICRO, weights_only=True)
    path = tmp_path / "ckpt_epoch_299.pth"
    save_release_checkpoint(path, official, monkeypatch)
    reference = timm.create_model("test_acmix_swin", num_classes=10, img_size=224)  # windows 7 everywhere, as trained
    reference.load_state_dict(official)
    model, report = create_pretrained("test_acmix_swin", path, num_classes=3, in_chans=1, img_size=32)
    expected = {}
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_bias_table") and module.window_size != (7, 7):
            key = f"{name}.relative_position_bias_table"
            table = module.relative_position_bias_table
            expected[key] = resize_rel_pos_bias_table(reference.state_dict()[key], module.window_size, table.shape)
    assert len(expected) == 6
    check_finetuned(
        model, report, reference.state_dict(), stem="patch_embed.proj", heads=("head.fc",), expected=expected
    )
    assert report.endswith(
        "head re-initialised for 3 classes (was 10); stem adapted 3 -> 1 channels; "
        "6 relative position tables resampled (7x7 -> 4x4, 7x7 -> 2x2, 7x7 -> 1x1)"
    )
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@needs(RESNET_MICRO)
def test_resnet_acmix_official_release(tmp_path):
    """The official training script's dict, its weights under ``state_dict`` with DataParallel's prefixes."""
    official = torch.load(RESNET_MICRO, weights_only=True)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in official.items()}}, path)
    reference = timm.create_model("acmix_resnet26", layers=(1, 1, 2, 1), num_classes=10)
    reference.load_state_dict(official)
    model, report = create_pretrained("acmix_resnet26", path, num_classes=3, in_chans=1, layers=(1, 1, 2, 1))
    check_finetuned(model, report, reference.state_dict(), stem="conv1", heads=("fc",))
    assert report.endswith("head re-initialised for 3 classes (was 10); stem adapted 3 -> 1 channels")
    assert model.eval()(torch.randn(2, 1, 48, 48)).shape == (2, 3)


# --- the DeiT and Swin hosts: timm's weights, built at another image size -----------------------------------------


@pytest.fixture(scope="module")
def deit_host(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """timm's DeiT at the test host's size (4x4 patch grid, 10 classes), as a safetensors file."""
    torch.manual_seed(0)
    weights = VisionTransformer(**HOSTS["deit_test"][1]).state_dict()
    path = tmp_path_factory.mktemp("deit") / "deit.safetensors"
    save_file(weights, str(path))
    return path, weights


def test_deit_host_softmax_at_another_size(deit_host):
    path, weights = deit_host
    model, report = create_pretrained("deit_test_attn_softmax", path, num_classes=3, in_chans=1, img_size=64)
    pos = resample_abs_pos_embed(weights["pos_embed"], new_size=[8, 8], num_prefix_tokens=1)
    check_finetuned(model, report, weights, stem="patch_embed.proj", heads=("head",), expected={"pos_embed": pos})
    assert report.endswith("stem adapted 3 -> 1 channels; position embedding resampled 4x4 -> 8x8")
    assert model.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("name", ["deit_test_attn_ln_relu", "deit_test_dwattn"])
def test_deit_host_other_mixers(deit_host, name):
    """The paper's relative-position models: the host's absolute embedding has no place and the relative tables
    start fresh (named in the report); dwattn's q/k is the host's q/k/v without v; no class token: the final norm
    becomes the pooled tokens' norm."""
    path, weights = deit_host
    model, report = create_pretrained(name, path, num_classes=3, in_chans=1, img_size=64)
    expected = {}
    for key in model.state_dict():
        if ".attn.qk." in key:
            qkv = weights[key.replace(".qk.", ".qkv.")]
            expected[key] = qkv[: 2 * qkv.shape[0] // 3]
        elif key.startswith("fc_norm."):
            expected[key] = weights[key.removeprefix("fc_")]
    fresh = tuple(f"blocks.{i}.attn.rel_pos.table" for i in range(3))
    check_finetuned(model, report, weights, stem="patch_embed.proj", heads=("head",), expected=expected, fresh=fresh)
    assert report.endswith(f"3 tensors not in the file start fresh ({fresh[0]}, {fresh[1]}, ...)")  # 2 named
    assert model.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_deit_run_checkpoint_relative_tables_resampled(tmp_path):
    """A fine-tuned relative-position DeiT (4x4 grid) taken on at 64 px: each table covers the 8x8 grid's offsets."""
    source = timm.create_model("deit_test_attn_ln_relu")
    path = tmp_path / "checkpoint-best.pth"
    save_checkpoint({"model": source.state_dict()}, path)
    model, report = create_pretrained("deit_test_attn_ln_relu", path, num_classes=3, in_chans=1, img_size=64)
    expected = {}
    for key, table in source.state_dict().items():
        if key.endswith("rel_pos.table"):
            heads = table.shape[0]
            expected[key] = resize_rel_pos_bias_table(table.view(heads, 7, 7), (8, 8), (heads, 15, 15)).view(heads, -1)
    check_finetuned(model, report, source.state_dict(), stem="patch_embed.proj", heads=("head",), expected=expected)
    assert report.endswith("3 relative position tables resampled (4x4 -> 8x8)")


def test_distilled_deit_reinitialises_both_heads(tmp_path):
    source = timm.create_model("deit_test_attn_softmax", distilled=True)
    path = tmp_path / "student.pth"
    torch.save(source.state_dict(), path)
    model, report = create_pretrained("deit_test_attn_softmax", path, distilled=True, num_classes=3, in_chans=1)
    check_finetuned(model, report, source.state_dict(), stem="patch_embed.proj", heads=("head", "head_dist"))


@pytest.fixture(scope="module")
def swin_host(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """timm's Swin at the test host's size (32 px, 4x4 windows; the last stage's 2x2 map makes its window 2x2), as
    timm's train.py saves it."""
    torch.manual_seed(0)
    weights = SwinTransformer(**HOSTS["test_swin"][1]).state_dict()
    path = tmp_path_factory.mktemp("swin") / "model_best.pth.tar"
    torch.save({"epoch": 300, "state_dict": weights, "arch": "swin"}, path)
    return path, weights


@pytest.mark.parametrize("name", ["test_swin_attn_softmax", "test_swin_dwattn"])
def test_swin_host_at_another_size(swin_host, name):
    """At 64 px the last stage's map is 4x4: its window grows to 4x4 and its table is resampled."""
    path, weights = swin_host
    model, report = create_pretrained(name, path, num_classes=3, in_chans=1, img_size=64)
    key = "layers.3.blocks.0.attn.relative_position_bias_table"
    expected = {key: resize_rel_pos_bias_table(weights[key], (4, 4), (49, 4))}
    for k in model.state_dict():
        if ".attn.qk." in k:
            qkv = weights[k.replace(".qk.", ".qkv.")]
            expected[k] = qkv[: 2 * qkv.shape[0] // 3]
    check_finetuned(model, report, weights, stem="patch_embed.proj", heads=("head.fc",), expected=expected)
    assert report.endswith("stem adapted 3 -> 1 channels; relative position table resampled 2x2 -> 4x4")
    assert model.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_swin_absolute_map_resampled(tmp_path):
    source = timm.create_model("test_swin_attn_softmax", pos_embed="abs")
    path = tmp_path / "checkpoint-best.pth"
    save_checkpoint({"model": source.state_dict()}, path)
    model, report = create_pretrained(
        "test_swin_attn_softmax", path, num_classes=3, in_chans=1, img_size=64, pos_embed="abs"
    )
    key = "layers.0.downsample.pos_embed"
    pos = resample_abs_pos_embed_nhwc(source.state_dict()[key], [32, 32])
    check_finetuned(
        model, report, source.state_dict(), stem="patch_embed.proj", heads=("head.fc",), expected={key: pos}
    )
    assert report.endswith("position embedding resampled 16x16 -> 32x32")


# --- what cannot be adapted: one line naming it -------------------------------------------------------------------


def test_size_mismatch_names_the_tensor(deit_host):
    path, _ = deit_host
    with pytest.raises(
        ValueError, match=r"^checkpoint tensor '[\w.]+' has shape \[[\d, ]*32\], the model expects"
    ) as e:
        create_pretrained("deit_test_attn_softmax", path, embed_dim=64)
    assert "\n" not in str(e.value)


def test_missing_and_unplaced_tensors_are_named(tmp_path):
    weights = timm.create_model("test_acmix_resnet").state_dict()
    lacking, extra = tmp_path / "lacking.pth", tmp_path / "extra.pth"
    torch.save({k: v for k, v in weights.items() if k != "layer2.0.bn1.weight"}, lacking)
    torch.save({**weights, "aux.weight": torch.zeros(2)}, extra)
    with pytest.raises(
        ValueError, match=r"lacks 1 of the test_acmix_resnet's tensors \(first: layer2\.0\.bn1\.weight\)"
    ):
        create_pretrained("test_acmix_resnet", lacking, num_classes=3)
    with pytest.raises(
        ValueError, match=r"holds 1 tensors a test_acmix_resnet has no place for \(first: aux\.weight\)"
    ):
        create_pretrained("test_acmix_resnet", extra, num_classes=3)
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no tensors"):
        create_pretrained("test_acmix_resnet", tmp_path / "empty.pth")


def test_layout_of_official_names():
    """The first 4-D tensor for a stem under another name; a parent module's name for timm's ``head.fc``."""
    weights = {"patch_embed.proj.weight": torch.zeros(8, 2, 4, 4), "head.weight": torch.zeros(7, 8)}
    assert weights_layout("fcvit_tiny", weights) == (2, 7)
    assert weights_layout("test_acmix_swin", weights) == (2, 7)
    assert weights_layout("test_acmix_swin", {"norm.weight": torch.zeros(8)}) == (None, None)
