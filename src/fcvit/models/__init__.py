"""Model families; importing this package registers every model with timm."""

from . import dynconv, mixers  # noqa: F401  (register the attention hosts, ACmix and attention models)
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
