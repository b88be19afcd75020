"""FCViT's token mixer (paper Eq. 5, repeated twice): global context fused into local convolution."""

from __future__ import annotations

import torch
from torch import nn

from .depthwise import DepthwiseConv2d
from .fast import conv_gelu
from .global_context import GLOBAL_CONTEXT_MODES, GlobalContext
from .registry import register_token_mixer


class PointwiseMlp(nn.Module):
    """``GELU(P(x))`` of Eq. 5: 1x1 conv C -> hidden, GELU, 1x1 conv hidden -> C, GELU.

    ``fast``: each 1x1 conv runs with its GELU as one oneDNN call in CPU inference
    (:func:`fcvit.layers.fast.conv_gelu`). Keys as timm's ConvMlp (``fc1``, ``fc2``).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_gelu(self.fc2, conv_gelu(self.fc1, x, self.fast), self.fast)


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
        self.mlp = PointwiseMlp(dim, max(dim // 8, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gc is not None:
            x = self.gc(x)
        return self.mlp(self.dw(x))


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
