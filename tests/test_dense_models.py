"""Dense backbones and models: FCViT feature maps + FPN, Mask R-CNN and Semantic FPN training steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import fcvit
from fcvit.dense.backbone import FCViTFPN, create_feature_backbone
from fcvit.dense.detection import build_mask_rcnn
from fcvit.dense.segmentation import build_semantic_fpn

FIXTURES = Path(__file__).parent / "fixtures"
TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (100, 70)])
def test_feature_backbone_shapes(size):
    body = create_feature_backbone("fcvit_b12", **TINY)
    assert body.feature_info.channels() == [16, 32, 64, 128]
    assert body.feature_info.reduction() == [4, 8, 16, 32]
    feats = body(torch.randn(2, 3, *size))
    assert len(feats) == 4
    for f, c, r in zip(feats, body.feature_info.channels(), body.feature_info.reduction()):
        assert f.shape == (2, c, -(-size[0] // r), -(-size[1] // r))  # ceil: stride-2 convs with padding


def test_feature_norms_apply_groupnorm1_to_each_stage():
    body = create_feature_backbone("fcvit_b12", **TINY).eval()
    with torch.no_grad():
        for i, f in enumerate(body(torch.randn(1, 3, 64, 64))):
            per_sample = f.flatten(1)
            assert per_sample.mean().abs() < 1e-4 and (per_sample.std(unbiased=False) - 1).abs() < 1e-3, i


def test_fresh_backbone_uses_dense_layer_scale():
    body = create_feature_backbone("fcvit_b12", **TINY)
    gammas = [m.gamma for n, m in body.named_modules() if n.endswith(".ls1")]
    assert gammas and all(torch.allclose(g, torch.full_like(g, 1e-6)) for g in gammas)


def test_backbone_from_official_classification_checkpoint():
    """Official micro fixture: stage maps equal GroupNorm(1) of the classification model's intermediates."""
    io = torch.load(FIXTURES / "official_fcvit_micro_random_io.pt", weights_only=True)
    names = {"groups": "gc_groups", "compete": "competitive"}  # fixture config -> FCViT arguments
    kwargs = {names.get(k, k): v for k, v in io["config"].items() if k != "num_classes"}
    ckpt = FIXTURES / "official_fcvit_micro_random.pth"
    body = create_feature_backbone("fcvit_b12", checkpoint=ckpt, **kwargs).eval()
    cls = timm.create_model("fcvit_b12", num_classes=10, checkpoint_path=str(ckpt), **kwargs).eval()
    x = io["x64"]
    with torch.no_grad():
        feats = body(x)
        _, stages = cls.forward_intermediates(x)
    for f, s in zip(feats, stages):
        torch.testing.assert_close(f, F.group_norm(s, 1), atol=1e-5, rtol=1e-5)


def test_backbone_from_our_checkpoint_and_clear_errors(tmp_path):
    cls = fcvit.FCViT(num_classes=10, **TINY)
    path = tmp_path / "cls.pth"
    torch.save({"model": cls.state_dict(), "epoch": 3}, path)
    body = create_feature_backbone("fcvit_b12", checkpoint=path, **TINY)
    torch.testing.assert_close(body.model.stem.conv.weight, cls.stem.conv.weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_feature_backbone("fcvit_b12", checkpoint=tmp_path / "missing.pth", **TINY)
    with pytest.raises(ValueError, match="depths"):
        create_feature_backbone("fcvit_b12", checkpoint=path, depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))


def test_fpn_levels():
    fpn = FCViTFPN(create_feature_backbone("fcvit_b12", **TINY), out_channels=32)
    out = fpn(torch.randn(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(v.shape[1] == 32 for v in out.values())
    assert list(FCViTFPN(fpn.body, 32, extra_pool=False)(torch.randn(1, 3, 64, 64))) == ["0", "1", "2", "3"]


def _step(model, loss_fn) -> tuple[float, float]:
    """One AdamW step; returns (loss before, loss after) on the same batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = loss_fn()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        return before.item(), loss_fn().item()


def test_mask_rcnn_training_step_and_inference():
    torch.manual_seed(0)
    model = build_mask_rcnn(
        4, model_kwargs=TINY, fpn_channels=32, representation_size=64, train_sizes=(64,), max_size=64
    )
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 34:60, 20:50] = 1
    targets = [
        dict(boxes=torch.tensor([[10.0, 8, 40, 30], [20, 34, 50, 60]]), labels=torch.tensor([1, 3]), masks=masks),
        dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 64, 48)),
    ]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    torch.manual_seed(1)
    before, after = _step(model, lambda: sum(model(images, targets).values()))
    assert torch.isfinite(torch.tensor(before)) and after < before
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert out[1]["masks"].shape[1:] == (1, 64, 48) and out[1]["boxes"].shape[1] == 4


def test_semantic_fpn_training_step():
    torch.manual_seed(0)
    model = build_semantic_fpn(5, model_kwargs=TINY, fpn_channels=32, head_channels=16, dropout=0.0)
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    label[:, :4] = 255
    model.train()
    assert model(x).shape == (2, 5, 64, 64)
    torch.manual_seed(1)
    before, after = _step(model, lambda: F.cross_entropy(model(x), label, ignore_index=255))
    assert after < before
    model.eval()
    assert model(torch.randn(1, 3, 50, 70)).shape == (1, 5, 50, 70)


def test_semantic_fpn_layout_matches_the_official_head():
    """FPN with 3x3 output convs, per-level stacks of 1, 1, 2, 3 conv blocks, 1x1 classifier (mmseg FPNHead)."""
    model = build_semantic_fpn(150)
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in h.modules()) for h in model.head.scale_heads] == [1, 1, 2, 3]
    assert len(model.backbone.fpn.layer_blocks) == 4
    assert model.head.cls_seg.out_channels == 150
