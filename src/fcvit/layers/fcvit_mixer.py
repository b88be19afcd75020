"""FCViT's token mixer (paper Eq. 5, repeated twice): global context fused into local convolution."""

from __future__ import annotations

import torch
from timm.layers import ConvMlp
from torch import nn

from .depthwise import DepthwiseConv2d
from .global_context import GLOBAL_CONTEXT_MODES, GlobalContext
from .registry import register_token_mixer


class MixingRound(nn.Module):
    """One round: ``x = x + GC(x); x = GELU(P(DW(x)))``.

    DW is a depth-wise ``k x k`` conv; P a pointwise MLP C -> max(C // 8, 16) -> C.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 11,
        global_context: str = "dynamic",
        competitive: bool = True,
        groups: int = 8,
        reduction: int = 8,
    ):
        super().__init__()
        if global_context not in GLOBAL_CONTEXT_MODES:
            raise ValueError(f"global_context must be one of {GLOBAL_CONTEXT_MODES}, got {global_context!r}")
        self.gc = (
            None
            if global_context == "none"
            else GlobalContext(dim, global_context, groups=groups, competitive=competitive, reduction=reduction)
        )
        self.dw = DepthwiseConv2d(dim, kernel_size)
        self.mlp = ConvMlp(dim, max(dim // 8, 16), dim, act_layer=nn.GELU)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gc is not None:
            x = x + self.gc(x)
        return self.act(self.mlp(self.dw(x)))


@register_token_mixer("fcvit")
class FCViTMixer(nn.Module):
    """FCViT token mixer: ``rounds`` mixing rounds (the paper uses two).

    Args:
        dim: channels.
        kernel_size: depth-wise kernel size (paper: 11; ablation 3..13, even sizes included).
        rounds: number of mixing rounds (1 or 2).
        global_context: ``"none"``, ``"static"`` or ``"dynamic"`` (token-global similarity).
        competitive: competitive information bottleneck on/off.
        groups: groups of the token-global similarity (paper: 8).
        reduction: bottleneck reduction (paper: 8).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 11,
        rounds: int = 2,
        global_context: str = "dynamic",
        competitive: bool = True,
        groups: int = 8,
        reduction: int = 8,
    ):
        super().__init__()
        if rounds < 1:
            raise ValueError(f"FCViTMixer needs at least one mixing round, got {rounds}")
        self.rounds = nn.Sequential(
            *[MixingRound(dim, kernel_size, global_context, competitive, groups, reduction) for _ in range(rounds)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rounds(x)
