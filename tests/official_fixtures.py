"""The official FCViT fixtures: random weights run through the official code, with inputs and logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fcvit

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TINY_CKPT = SHARED / "official_fcvit_tiny_random.pth"
TINY_IO = SHARED / "official_fcvit_tiny_random_io.pt"
needs_shared = pytest.mark.skipif(
    not TINY_CKPT.exists(), reason=f"large official fixture not found at {TINY_CKPT} (../shared is absent)"
)


def micro_model() -> tuple[fcvit.FCViT, dict]:
    """The model of the official micro fixture (eval mode, official weights) and the fixture's inputs/outputs."""
    io = torch.load(FIXTURES / "official_fcvit_micro_random_io.pt", weights_only=True)
    c = io["config"]
    model = fcvit.FCViT(
        depths=c["depths"],
        dims=c["dims"],
        mlp_ratios=c["mlp_ratios"],
        num_classes=c["num_classes"],
        kernel_size=c["kernel_size"],
        gc_groups=c["groups"],
        gc_reduction=c["gc_reduction"],
        competitive=c["compete"],
    )
    model.load_state_dict(torch.load(FIXTURES / "official_fcvit_micro_random.pth", weights_only=True))
    return model.eval(), io
