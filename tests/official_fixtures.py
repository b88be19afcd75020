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


def micro_kwargs(config: dict) -> dict:
    """FCViT's arguments for the official micro fixture's ``config`` (the official code's names on the right)."""
    return dict(
        depths=config["depths"],
        dims=config["dims"],
        mlp_ratios=config["mlp_ratios"],
        kernel_size=config["kernel_size"],
        gc_groups=config["groups"],
        gc_reduction=config["gc_reduction"],
        competitive=config["compete"],
    )


def micro_model() -> tuple[fcvit.FCViT, dict]:
    """The model of the official micro fixture (eval mode, official weights) and the fixture's inputs/outputs."""
    io = torch.load(FIXTURES / "official_fcvit_micro_random_io.pt", weights_only=True)
    model = fcvit.FCViT(num_classes=io["config"]["num_classes"], **micro_kwargs(io["config"]))
    model.load_state_dict(torch.load(FIXTURES / "official_fcvit_micro_random.pth", weights_only=True))
    return model.eval(), io
