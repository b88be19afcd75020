"""Model families; importing this package registers every model with timm."""

from . import acmix_resnet, acmix_swin, dynconv, mixers  # noqa: F401  (every family registers its models)
from ._registry import list_models
from .fcvit import (
    FCViT,
    FCViTBlock,
    IsoFCViT,
    checkpoint_filter_fn,
    convert_official_state_dict,
    is_official_state_dict,
)

__all__ = [
    "FCViT",
    "FCViTBlock",
    "IsoFCViT",
    "checkpoint_filter_fn",
    "convert_official_state_dict",
    "is_official_state_dict",
    "list_models",
]
