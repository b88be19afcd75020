"""Swin-ACmix: official logits and key layout, both timm loading routes, sizes, features, scripting, init."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
from mixers_utils import check_gradients
from official_fixtures import SHARED
from timm.layers import create_feature_extractor

import fcvit
from fcvit.layers.acmix import shift_kernels
from fcvit.models._registry import paper_figures
from fcvit.models.acmix_swin import AcmixSwinBlock, AcmixWindowAttention, checkpoint_filter_fn

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MICRO_CKPT = SHARED / "official_swin_acmix_micro_random.pth"
MICRO_IO = SHARED / "official_swin_acmix_micro_random_io.pt"
SHAPES = SHARED / "official_swin_acmix_state_dict_shapes.json"
needs_swin_fixtures = pytest.mark.skipif(
    not MICRO_CKPT.exists(), reason=f"official Swin-ACmix fixture not found at {MICRO_CKPT} (../shared is absent)"
)


def attentions(model: torch.nn.Module) -> list[AcmixWindowAttention]:
    return [m for m in model.modules() if isinstance(m, AcmixWindowAttention)]


class CfgNode(dict):
    """Stands in for yacs' CfgNode (a dict subclass with flags in its __dict__) and pickles as it does."""

    __module__ = "yacs.config"

    def __init__(self, entries: dict | None = None):
        super().__init__(entries or {})
        self.__dict__["__immutable__"] = True
        self.__dict__["__new_allowed__"] = False


def save_release_checkpoint(path: Path, state_dict: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dict the official Swin training script saves, its config a pickled ``yacs.config.CfgNode``.

    yacs is importable only while saving, so loading the file cannot run or import the class.
    """
    with monkeypatch.context() as patch:
        module = types.ModuleType("yacs.config")
        module.CfgNode = CfgNode
        patch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
        patch.setitem(sys.modules, "yacs.config", module)
        config = CfgNode({"MODEL": CfgNode({"TYPE": "swin_acmix", "DROP_PATH_RATE": 0.2}), "TAG": "default"})
        release = {
            "model": state_dict,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "lr_scheduler": {"t_initial": 300, "base_values": [1e-3]},
            "epoch": 299,
            "max_accuracy": 81.9,
            "config": config,
        }
        torch.save(release, path)
    assert "yacs" not in sys.modules


def load_both_routes(name: str, path: Path, num_classes: int, **kwargs) -> list[torch.nn.Module]:
    overlay = dict(file=str(path), num_classes=num_classes)
    return [
        timm.create_model(name, num_classes=num_classes, checkpoint_path=str(path), **kwargs).eval(),
        timm.create_model(name, num_classes=num_classes, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs),
    ]


# --- official code --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_io() -> dict:
    if not MICRO_IO.exists():
        pytest.skip(f"official Swin-ACmix fixture not found at {MICRO_IO} (../shared is absent)")
    return torch.load(MICRO_IO, weights_only=True)


@needs_swin_fixtures
@pytest.mark.parametrize("strict_img_size", [True, False], ids=["fixed_masks", "dynamic_masks"])
def test_micro_fixture_matches_official_logits(micro_io, strict_img_size):
    c = micro_io["config"]
    assert (c["embed_dim"], c["depths"], c["num_heads"], c["window_size"]) == (24, [2, 2, 2, 2], [1, 2, 3, 6], 7)
    model = timm.create_model(
        "test_acmix_swin", num_classes=c["num_classes"], img_size=micro_io["img_size"], strict_img_size=strict_img_size
    ).eval()
    model.load_state_dict(torch.load(MICRO_CKPT, weights_only=True))  # official layout, buffers included
    with torch.no_grad():
        logits = model(micro_io["x224"])
        diff = (logits - micro_io["logits224"]).abs().max().item()
        assert diff <= 1e-4, f"max |diff| {diff}"
        # the convolution path's share is far above the tolerance, so an error in it shows
        for attn in attentions(model):
            attn.rate2.zero_()
        assert (model(micro_io["x224"]) - logits).abs().max() > 1e-2


@needs_swin_fixtures
@pytest.mark.parametrize("release", [False, True], ids=["state_dict", "release_dict"])
def test_official_checkpoint_loads_through_both_timm_routes(micro_io, tmp_path, monkeypatch, release):
    path = tmp_path / "official.pth"
    official = torch.load(MICRO_CKPT, weights_only=True)
    if release:
        save_release_checkpoint(path, official, monkeypatch)
    else:
        torch.save(official, path)
    c = micro_io["config"]
    for model in load_both_routes("test_acmix_swin", path, c["num_classes"], img_size=micro_io["img_size"]):
        with torch.no_grad():
            diff = (model.eval()(micro_io["x224"]) - micro_io["logits224"]).abs().max().item()
        assert diff <= 1e-4, f"max |diff| {diff}"


@pytest.mark.skipif(not SHAPES.exists(), reason=f"{SHAPES} not found (../shared is absent)")
@pytest.mark.parametrize("name", ["acmix_swin_tiny", "acmix_swin_small"])
def test_official_key_layout(name):
    """The official keys, mapped, are exactly ours with the same shapes; the official buffers match ours."""
    official = json.loads(SHAPES.read_text())[name]
    model = timm.create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = checkpoint_filter_fn({k: torch.empty(s, device="meta") for k, s in official.items()}, model)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == ours
    buffers = {k: tuple(v.shape) for k, v in model.named_buffers()}
    rebuilt = {k: tuple(s) for k, s in official.items() if k.endswith(("attn_mask", "relative_position_index"))}
    assert rebuilt and rebuilt == {k: buffers[k] for k in rebuilt}


# --- loading ----------------------------------------------------------------------------------------


def test_release_dict_loads_without_yacs(tmp_path, monkeypatch):
    """The pickled config becomes an inert OrderedDict; the weights load through both timm routes."""
    source = timm.create_model("test_acmix_swin", num_classes=3).eval()
    path = tmp_path / "release.pth"
    save_release_checkpoint(path, source.state_dict(), monkeypatch)
    config = torch.load(path, weights_only=True)["config"]
    assert type(config).__name__ == "OrderedDict" and config["MODEL"]["TYPE"] == "swin_acmix"
    assert config.__dict__ == {"__immutable__": True, "__new_allowed__": False}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        for model in load_both_routes("test_acmix_swin", path, 3):
            torch.testing.assert_close(model.eval()(x), expected, atol=1e-6, rtol=0)
    assert "yacs" not in sys.modules


def test_checkpoint_of_another_variant_names_both(tmp_path):
    path = tmp_path / "micro.pth"
    torch.save(timm.create_model("test_acmix_swin").state_dict(), path)
    with pytest.raises(ValueError, match=r"checkpoint is test_acmix_swin .* the model is a custom Swin-ACmix"):
        timm.create_model("test_acmix_swin", depths=(2, 2, 4, 2), checkpoint_path=str(path))
    state = timm.create_model("test_acmix_swin").state_dict()
    state["layers.1.blocks.0.attn.dep_conv.weight"] = torch.zeros(48, 9, 5, 5)
    with pytest.raises(ValueError, match=r"'layers\.1\.blocks\.0\.attn\.dep_conv\.weight'.*\[48, 9, 3, 3\]"):
        timm.create_model("test_acmix_swin").load_state_dict(state)


def test_plain_swin_checkpoint_is_named():
    state = {k: v for k, v in timm.create_model("test_acmix_swin").state_dict().items() if ".attn.rate" not in k}
    with pytest.raises(ValueError, match="no ACmix tensors"):
        timm.create_model("test_acmix_swin").load_state_dict(state)


# --- model contract -----------------------------------------------------------------------------------


def test_registered_with_paper_figures():
    assert {"acmix_swin_tiny", "acmix_swin_small", "test_acmix_swin"} <= set(fcvit.list_models())
    assert paper_figures("acmix_swin_tiny") == dict(params_m=30.0, gmacs=4.6, top1=81.9)
    assert paper_figures("acmix_swin_small") == dict(params_m=51.0, gmacs=9.0, top1=83.5)


def test_trains_one_step_at_64px():
    torch.manual_seed(0)
    model = timm.create_model("test_acmix_swin", num_classes=4)
    assert model.pretrained_cfg["input_size"] == (3, 64, 64)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    check_gradients(model)  # every parameter, both paths' included, gets a gradient


@pytest.mark.parametrize(
    "kwargs, sizes",
    [
        (dict(img_size=(96, 160)), [(96, 160)]),
        (dict(img_size=64), [(64, 64)]),
        (dict(strict_img_size=False), [(64, 64), (96, 160), (128, 96)]),
    ],
)
def test_input_sizes_divisible_by_32(kwargs, sizes):
    """Maps that windows do not tile (16 and 8 sides at 64 px, window 7) are padded for the attention path."""
    model = timm.create_model("test_acmix_swin", num_classes=2, **kwargs).eval()
    with torch.no_grad():
        for size in sizes:
            assert model(torch.randn(1, 3, *size)).shape == (1, 2)


def test_features_only_gives_four_stage_maps_like_timm_swin():
    model = timm.create_model("test_acmix_swin", features_only=True)
    assert model.feature_info.channels() == [24, 48, 96, 192]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 24), (1, 8, 8, 48), (1, 4, 4, 96), (1, 2, 2, 192)]  # NHWC
    full = timm.create_model("test_acmix_swin").eval()
    with torch.no_grad():
        nchw = full.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [tuple(m.shape) for m in nchw] == [(1, 24, 16, 16), (1, 48, 8, 8), (1, 96, 4, 4), (1, 192, 2, 2)]


def test_torchscript_and_fx():
    model = timm.create_model("test_acmix_swin", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        out = create_feature_extractor(model, {"layers.1": "stage1", "head": "logits"})(x)
    torch.testing.assert_close(out["logits"], expected)
    assert out["stage1"].shape == (1, 8, 8, 48)


def test_rates_and_shift_kernels_survive_model_init():
    model = timm.create_model("test_acmix_swin", weight_init="jax")  # jax init redraws every conv
    blocks = [m for m in model.modules() if isinstance(m, AcmixSwinBlock)]
    assert len(blocks) == 8 and [b.shift_size for b in blocks[:2]] == [(0, 0), (3, 3)]
    for attn in attentions(model):
        assert attn.rate1.item() == 0.5 and attn.rate2.item() == 0.5
        assert attn.dep_conv.bias is None
        assert torch.equal(attn.dep_conv.weight, shift_kernels(attn.dim, 3))
        assert attn.dep_conv.weight[5, 4, 1, 1] == 1 and attn.dep_conv.weight[5, 4].sum() == 1  # tap 4: centre


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="head_dim is not supported"):
        timm.create_model("test_acmix_swin", head_dim=16)
    with pytest.raises(ValueError, match="dim=24 does not split into num_heads=5"):
        AcmixWindowAttention(24, 5)
