"""fcvit on a CUDA GPU (issue 30): `fcvit train` under mixed precision and torch.compile, and the attention models
(DeiT and Swin hosts, ACmix in its three frames) against the CPU. Skipped without a GPU (CI has none);
``scripts/gpu_checks.sh`` runs them with the other CUDA tests (test_triton_depthwise, test_optimize, test_acmix)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import timm
import torch
from train_utils import TINY, make_fashion_root

from fcvit.cli import main

DEVICE = "cuda"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    return make_fashion_root(tmp_path_factory.mktemp("fm"), n_train=256, n_test=128)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_train_under_autocast_and_compile(fm_root, tmp_path, capsys, amp_dtype, compiled):
    """Three epochs of the tiny FCViT on the GPU under autocast (float16 with the gradient scaler), eager or
    compiled: finite falling loss, better than chance; its checkpoint validates on the CPU in fp32 to the GPU's
    top-1 within 2 of the 128 images (autocast rounds a few close logits the other way)."""
    args = ["train", *TINY, "--data-dir", str(fm_root), "--output", str(tmp_path), "--experiment", "run"]
    args += ["--device", DEVICE, "--amp-dtype", amp_dtype, "--epochs", "3", "--batch-size", "32", "--lr", "5e-3"]
    assert main([*args, "--compile" if compiled else "--no-compile", "--no-model-ema"]) == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    top1 = float(rows[-1]["val_top1"])
    assert top1 > 30, top1  # 10 classes: chance is 10 %

    capsys.readouterr()
    checkpoint = str(tmp_path / "run" / "checkpoint-last.pth")
    assert main(["validate", "--checkpoint", checkpoint, "--device", "cpu", "--workers", "0", "--json"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert abs(on_cpu["top1"] - top1) <= 2 * 100 / 128 + 1e-6, (on_cpu, top1)


@pytest.mark.parametrize(
    "name",
    [
        "deit_test_attn_softmax",
        "deit_test_attn_ln_relu",
        "test_swin_attn_softmax",
        "test_attn_softmax",
        "test_dwattn",
        "test_acmix",
        "test_acmix_swin",
        "test_acmix_resnet",
    ],
)
def test_attention_models_on_the_gpu_equal_the_cpu(name):
    """Logits in fp32 (TF32 off) within 1e-4 of the CPU's; under bf16 autocast within bf16 rounding (5e-2 of the
    largest logit, as test_optimize's bf16 check); a bf16 training step gives every parameter a finite gradient."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        expected = model(x)
    model.to(DEVICE)
    scale = expected.abs().max().item()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        matmul_tf32, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
        try:
            got = model(x.to(DEVICE)).cpu()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * scale)

    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
        low = model(x.to(DEVICE)).float().cpu()
    torch.testing.assert_close(low, expected, rtol=5e-2, atol=5e-2 * scale)

    model.train()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = model(x.to(DEVICE))
    out.float().square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
