"""fcvit: FCViT and other convolutional spatial mixers for the timm ecosystem.

``import fcvit`` registers every model with timm: ``timm.create_model("fcvit_b12")`` returns the plain model;
``fcvit.optimize(model)`` swaps in exact faster modules (:mod:`fcvit.accel`).
"""

from . import layers, models
from .accel import optimize
from .models import FCViT, IsoFCViT, list_models

__version__ = "0.1.0"

__all__ = ["FCViT", "IsoFCViT", "layers", "list_models", "models", "optimize", "__version__"]
