"""fcvit: FCViT and other convolutional spatial mixers for the timm ecosystem.

``import fcvit`` registers every model with timm: ``timm.create_model("fcvit_b12")`` returns the plain model;
``fcvit.optimize(model)`` swaps in exact faster modules (:mod:`fcvit.accel`).
"""

from .runtime import prepare_command_process

prepare_command_process()  # the fcvit command's OpenMP settings, which must precede torch (fcvit.runtime)

from . import layers, models  # noqa: E402
from .accel import optimize  # noqa: E402
from .models import FCViT, IsoFCViT, list_models  # noqa: E402

__version__ = "0.1.0"

__all__ = ["FCViT", "IsoFCViT", "layers", "list_models", "models", "optimize", "__version__"]
