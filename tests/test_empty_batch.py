"""A batch of 0 images gives empty logits [0, num_classes], as timm's convnext, poolformer and resnet do."""

from __future__ import annotations

import pytest
import timm
import torch

import fcvit
from fcvit.accel import optimize

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# every family of this project at a small size: (model, creation arguments, input size)
FAMILIES = [
    ("fcvit_tiny", {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}, 32),
    ("iso_fcvit_256_12", {"depth": 1, "dim": 32, "patch_size": 8}, 32),
    ("test_acmix", {}, 32),
    ("test_attn_softmax", {}, 32),
    ("test_attn_none", {}, 32),
    ("test_attn_scaling", {}, 32),
    ("test_attn_scaling_relu", {}, 32),
    ("test_attn_ln", {}, 32),
    ("test_attn_ln_relu", {}, 32),
    ("test_dwattn", {}, 32),
    ("test_acmix_resnet", {}, 32),
    ("deit_test_attn_softmax", {}, 32),
    ("deit_test_dwattn", {"pos_embed": "abs"}, 32),
]


@pytest.mark.parametrize("optimized", [False, True], ids=["plain", "optimized"])
@pytest.mark.parametrize("name,kwargs,size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_empty_batch_gives_empty_logits(name, kwargs, size, optimized):
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    if optimized:
        model = optimize(model, "auto")
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(0, 3, size, size).contiguous(memory_format=memory_format)
        with torch.no_grad():
            assert model(x).shape == (0, 5), memory_format
    model.train()
    x = torch.randn(0, 3, size, size, requires_grad=True)
    model(x).sum().backward()  # the training path too
    assert x.grad.shape == x.shape


def _error_of(model: torch.nn.Module, size: int) -> type[BaseException]:
    with pytest.raises(RuntimeError) as info, torch.no_grad():
        model.eval()(torch.randn(0, 3, size, size))
    return info.type


TIMM_SAME = {
    # timm's own SwinTransformer cannot size an empty batch (window_partition, WindowAttention and the block reshape
    # with -1), nor can its VisionTransformer without a position embedding (_pos_embed's view(B, -1, C)); the hosts
    # built on those classes fail the same way, not differently
    "swin": dict(
        model_name="swin_tiny_patch4_window7_224",
        depths=(1, 1),
        embed_dim=8,
        num_heads=(1, 1),
        img_size=32,
        window_size=4,
    ),
    "vit": dict(
        model_name="vit_tiny_patch16_224",
        num_heads=2,
        depth=1,
        embed_dim=32,
        img_size=32,
        patch_size=8,
        pos_embed="none",
        class_token=False,
        global_pool="avg",
    ),
}


@pytest.mark.parametrize(
    "name,host",
    [
        ("test_swin_attn_softmax", "swin"),
        ("test_swin_dwattn", "swin"),
        ("test_acmix_swin", "swin"),
        ("deit_test_dwattn", "vit"),
    ],
)
def test_hosts_take_what_timm_takes(name, host):
    model = timm.create_model(name)
    assert fcvit.list_models().count(name) == 1
    size = model.pretrained_cfg["input_size"][-1]
    assert _error_of(model, size) is _error_of(timm.create_model(**TIMM_SAME[host]), 32)
