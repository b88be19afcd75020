"""Building blocks: token mixers (spatial), channel mixers and the global context of FCViT."""

from .acmix import ACmix
from .attention import (
    ATTENTION_ACTIVATIONS,
    Attention2d,
    DepthwiseAttention2d,
    attention_activation,
    depthwise_attention,
)
from .channel_mixer import ChannelMixer
from .depthwise import DepthwiseConv2d
from .fcvit_mixer import FCViTMixer, MixerSettings, MixingRound, PointwiseMlp
from .global_context import GlobalContext
from .pooling import pooling
from .registry import create_token_mixer, list_token_mixers, register_token_mixer

__all__ = [
    "ACmix",
    "ATTENTION_ACTIVATIONS",
    "Attention2d",
    "DepthwiseAttention2d",
    "attention_activation",
    "depthwise_attention",
    "ChannelMixer",
    "DepthwiseConv2d",
    "FCViTMixer",
    "GlobalContext",
    "MixerSettings",
    "MixingRound",
    "PointwiseMlp",
    "create_token_mixer",
    "list_token_mixers",
    "pooling",
    "register_token_mixer",
]
