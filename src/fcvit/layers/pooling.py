"""PoolFormer's token mixer by name (``pool``): timm's :class:`~timm.models.metaformer.Pooling`, average pooling
minus the identity, the "is attention even needed" baseline of "MetaFormer Is Actually What You Need for Vision"
(arXiv:2111.11418), so that it runs in FCViT's frame beside the other mixers."""

from __future__ import annotations

from timm.models.metaformer import Pooling
from torch import nn

from .registry import register_token_mixer

__all__ = ["pooling"]


@register_token_mixer("pool")
def pooling(dim: int, pool_size: int = 3) -> nn.Module:
    """PoolFormer's mixer for ``dim`` channels (which it does not need): ``AvgPool(pool_size)(x) - x``."""
    return Pooling(pool_size)
