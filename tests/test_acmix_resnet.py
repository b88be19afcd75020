"""ResNet-ACmix: equality with the official model, official key layout, loading, timm's model contract."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from mixers_utils import check_gradients
from official_fixtures import SHARED

import fcvit
from fcvit.layers import ACmix
from fcvit.models.acmix_resnet import MODEL_ARGS, ACmixBottleneck, ACmixResNet

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MICRO_CKPT = SHARED / "official_resnet_acmix_micro_random.pth"
MICRO_IO = SHARED / "official_resnet_acmix_micro_random_io.pt"
SHAPES = SHARED / "official_resnet_acmix_state_dict_shapes.json"
needs_micro = pytest.mark.skipif(
    not MICRO_CKPT.exists(), reason=f"large official fixture not found at {MICRO_CKPT} (../shared is absent)"
)
needs_shapes = pytest.mark.skipif(not SHAPES.exists(), reason=f"official key list not found at {SHAPES}")


@needs_micro
def test_matches_official_model():
    """The official model (layers 1-1-2-1, random weights) loaded by timm's checkpoint_path route, both sizes."""
    io = torch.load(MICRO_IO, weights_only=True)
    config = io["config"]
    model = timm.create_model(
        "acmix_resnet26", layers=config["layers"], num_classes=config["num_classes"], checkpoint_path=str(MICRO_CKPT)
    ).eval()
    with torch.no_grad():
        for size in ("128", "96x160"):
            logits = model(io[f"x{size}"])
            assert logits.shape == io[f"logits{size}"].shape
            assert (logits - io[f"logits{size}"]).abs().max() <= 1e-4, size


@needs_shapes
@pytest.mark.parametrize("name", ["acmix_resnet26", "acmix_resnet38", "acmix_resnet50"])
def test_official_key_layout(name):
    """Exactly the official keys and shapes (the official checkpoints load without mapping)."""
    official = json.loads(SHAPES.read_text())[name]
    ours = {k: list(v.shape) for k, v in timm.create_model(name).state_dict().items()}
    assert ours == official


def _official_training_checkpoint(model: torch.nn.Module) -> dict:
    """What the official ``ResNet/main.py`` saves: DataParallel's ``module.`` keys inside a training state."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    optimizer.step()
    scheduler.step()
    return {
        "epoch": 1,
        "arch": "acmix_resnet",
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "best_acc1": torch.tensor(12.5),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }


@pytest.mark.parametrize("layout", ["bare", "training"])
@pytest.mark.parametrize("route", ["pretrained_file", "checkpoint_path"])
def test_loading_routes(tmp_path, layout, route):
    torch.manual_seed(0)
    source = timm.create_model("test_acmix_resnet")
    checkpoint = source.state_dict() if layout == "bare" else _official_training_checkpoint(source)
    path = tmp_path / "weights.pth"
    torch.save(checkpoint, path)
    if route == "pretrained_file":
        model = timm.create_model("test_acmix_resnet", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    else:
        model = timm.create_model("test_acmix_resnet", checkpoint_path=str(path))
    expected = source.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_other_checkpoints_are_named(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(timm.create_model("test_acmix_resnet").state_dict(), path)
    with pytest.raises(ValueError, match=r"checkpoint is test_acmix_resnet \(layers 1-1-1-1\) but the model is "):
        timm.create_model("test_acmix_resnet", layers=(1, 1, 2, 1), checkpoint_path=str(path))
    with pytest.raises(ValueError, match=r"checkpoint tensor 'layer1.0.conv1.weight' has shape \[16, 64, 1, 1\]"):
        timm.create_model("test_acmix_resnet", channels=(32, 32, 48, 64), checkpoint_path=str(path))


@pytest.mark.parametrize("size", [32, 33, 47, 64])
def test_trains_at_small_sizes(size):
    """Forward and backward at small and odd sizes (the official code needs even maps before each stride 2)."""
    torch.manual_seed(0)
    model = timm.create_model("test_acmix_resnet", num_classes=4)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 4)
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    check_gradients(model)


def test_structure_and_init():
    model = timm.create_model("test_acmix_resnet")
    blocks = [b for b in model.modules() if isinstance(b, ACmixBottleneck)]
    assert len(blocks) == 4 and all(isinstance(b.conv2, ACmix) for b in blocks)
    assert [b.conv2.stride for b in blocks] == [1, 2, 2, 2]  # v1.5: the stride sits in the 3x3 (ACmix)
    assert [(b.conv2.kernel_att, b.conv2.head, b.conv2.kernel_conv) for b in blocks] == [(7, 4, 3)] * 4
    for b in blocks:  # ACmix's init survives timm's global conv init; the last BatchNorm is not zeroed
        k = b.conv2.kernel_conv
        taps = b.conv2.dep_conv.weight.flatten(2).argmax(-1)  # [out, k*k]: tap of each one-hot shift kernel
        assert torch.equal(taps, torch.arange(k * k).expand_as(taps))
        assert b.conv2.rate1.item() == 0.5 and b.bn3.weight.min() == 1.0
    assert MODEL_ARGS["acmix_resnet50"]["layers"] == (3, 4, 6, 3)
    assert {"acmix_resnet26", "acmix_resnet38", "acmix_resnet50", "test_acmix_resnet"} <= set(fcvit.list_models())


def test_features_only_and_intermediates():
    model = timm.create_model("test_acmix_resnet", features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = model(x)
    expected = [(64, 32), (64, 16), (128, 8), (192, 4), (256, 2)]  # stem, then 4 * (16, 32, 48, 64) channels
    assert [(m.shape[1], m.shape[-1]) for m in maps] == expected
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    full = timm.create_model("test_acmix_resnet").eval()
    full.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        final, intermediates = full.forward_intermediates(x)
        torch.testing.assert_close(final, full.forward_features(x))
    assert [tuple(t.shape) for t in intermediates] == [tuple(m.shape) for m in maps]


@pytest.mark.filterwarnings("ignore:.torch.jit.script. is deprecated:FutureWarning")
def test_torchscript_fx_and_grad_checkpointing():
    from timm.layers import create_feature_extractor

    model = timm.create_model("test_acmix_resnet", num_classes=5).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected, rtol=0, atol=1e-5)
        extractor = create_feature_extractor(model, {"layer3": "layer3", "fc": "logits"})
        got = extractor(x)
        torch.testing.assert_close(got["logits"], expected, rtol=0, atol=1e-5)
        layer3 = model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]  # 0 is the stem
        torch.testing.assert_close(got["layer3"], layer3, rtol=0, atol=1e-5)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)


def test_classifier_and_pretrained_cfg():
    model = timm.create_model("test_acmix_resnet")
    cfg = model.pretrained_cfg
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    assert cfg["input_size"] == (3, 64, 64) and cfg["paper_ids"] == "arXiv:2111.14556"
    model.reset_classifier(7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(timm.create_model("acmix_resnet26", num_classes=0), ACmixResNet)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ACmix has no groups, got cardinality=2"):
        timm.create_model("test_acmix_resnet", cardinality=2)
    with pytest.raises(ValueError, match=r"ACmix expects an input of shape \[B, 16, H, W\]"):
        timm.create_model("test_acmix_resnet").layer1[0].conv2(torch.randn(1, 8, 8, 8))
