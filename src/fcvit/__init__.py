"""fcvit: FCViT and other convolutional spatial mixers for the timm ecosystem.

``import fcvit`` registers every model with timm: ``timm.create_model("fcvit_b12")`` returns the plain model;
``fcvit.optimize(model)`` swaps in exact faster modules (:mod:`fcvit.accel`); ``fcvit.create``, ``fcvit.load`` and
``fcvit.create_pretrained`` are the models' front door (:mod:`fcvit.hub`).

In the ``fcvit`` command's own process the package stops at its process settings: each subcommand imports what it
needs when it runs, so that ``fcvit --help`` does not wait for torch and timm.
"""

from .runtime import is_fcvit_command, prepare_command_process

prepare_command_process()  # the fcvit command's OpenMP settings, which must precede torch (fcvit.runtime)

__version__ = "0.1.0"

if not is_fcvit_command():
    from . import layers, models
    from .accel import optimize
    from .hub import create, create_pretrained, load
    from .models import FCViT, IsoFCViT, list_models

    __all__ = [
        "FCViT",
        "IsoFCViT",
        "create",
        "create_pretrained",
        "layers",
        "list_models",
        "load",
        "models",
        "optimize",
        "__version__",
    ]
