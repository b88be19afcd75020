"""Building blocks: token mixers (spatial), channel mixers and the global context of FCViT."""

from .channel_mixer import ChannelMixer
from .depthwise import DepthwiseConv2d
from .fcvit_mixer import FCViTMixer, MixingRound
from .global_context import GlobalContext
from .registry import create_token_mixer, list_token_mixers, register_token_mixer

__all__ = [
    "ChannelMixer",
    "DepthwiseConv2d",
    "FCViTMixer",
    "GlobalContext",
    "MixingRound",
    "create_token_mixer",
    "list_token_mixers",
    "register_token_mixer",
]
