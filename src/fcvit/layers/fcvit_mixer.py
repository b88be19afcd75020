"""FCViT's token mixer (paper Eq. 5, repeated twice): global context fused into local convolution."""

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from .depthwise import DepthwiseConv2d
from .global_context import GLOBAL_CONTEXT_MODES, GlobalContext
from .registry import register_token_mixer


@dataclass(frozen=True)
class MixerSettings:
    """FCViT's token-mixer settings, the paper's ablations (section 4.3), declared once for every model.

    Args:
        kernel_size: depth-wise kernel size (paper: 11; ablation 3..13, even sizes included).
        mixer_rounds: number of mixing rounds (paper: 2).
        global_context: ``"none"``, ``"static"`` or ``"dynamic"`` (token-global similarity).
        competitive: competitive information bottleneck on/off.
        gc_groups: groups of the token-global similarity (paper: 8).
        gc_reduction: bottleneck reduction (paper: 8).
    """

    kernel_size: int = 11
    mixer_rounds: int = 2
    global_context: str = "dynamic"
    competitive: bool = True
    gc_groups: int = 8
    gc_reduction: int = 8

    def __post_init__(self) -> None:
        if self.global_context not in ("none", *GLOBAL_CONTEXT_MODES):
            modes = ("none", *GLOBAL_CONTEXT_MODES)
            raise ValueError(f"global_context must be one of {modes}, got {self.global_context!r}")
        if self.mixer_rounds < 1:
            raise ValueError(f"FCViT's token mixer needs at least one mixing round, got {self.mixer_rounds}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, settings: dict[str, Any]) -> "MixerSettings":
        """The settings from keyword arguments, with an error that lists the accepted names."""
        unknown = sorted(set(settings) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown FCViT mixer setting(s) {unknown}; accepted: {', '.join(cls.names())}")
        return cls(**settings)


class PointwiseMlp(nn.Module):
    """``GELU(P(x))`` of Eq. 5: 1x1 conv C -> hidden, GELU, 1x1 conv hidden -> C, GELU (keys as timm's ConvMlp)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))


class MixingRound(nn.Module):
    """One round: ``x = x + GC(x); x = GELU(P(DW(x)))``.

    DW is a depth-wise ``k x k`` conv; P a pointwise MLP C -> max(C // 8, 16) -> C.
    """

    def __init__(self, dim: int, settings: MixerSettings):
        super().__init__()
        s = settings
        self.gc = (
            nn.Identity()
            if s.global_context == "none"
            else GlobalContext(dim, s.global_context, s.gc_groups, s.competitive, s.gc_reduction)
        )
        self.dw = DepthwiseConv2d(dim, s.kernel_size)
        self.mlp = PointwiseMlp(dim, max(dim // 8, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.dw(self.gc(x)))


@register_token_mixer("fcvit")
class FCViTMixer(nn.Module):
    """FCViT token mixer: ``mixer_rounds`` mixing rounds (the paper uses two); settings as :class:`MixerSettings`."""

    def __init__(self, dim: int, **settings: Any):
        super().__init__()
        s = MixerSettings.of(settings)
        self.rounds = nn.Sequential(*[MixingRound(dim, s) for _ in range(s.mixer_rounds)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rounds(x)
