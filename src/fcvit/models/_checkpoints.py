"""What the model families share when they load foreign checkpoints: a one-line error for a tensor that does not
fit, and safe reading of release checkpoints that pickle a config object."""

from collections import OrderedDict
from typing import Any

import torch
from torch import nn


def check_tensor_shapes(state_dict: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first tensor of ``state_dict`` (in ``model``'s layout) whose shape differs
    from ``model``'s, instead of torch's list of every mismatch."""
    own = model.state_dict()
    for k, v in state_dict.items():
        if k in own and own[k].shape != v.shape:
            raise ValueError(
                f"checkpoint tensor {k!r} has shape {list(v.shape)}, the model expects {list(own[k].shape)}"
            )


class ReleaseConfig:
    """Inert stand-in for a config object pickled in a release checkpoint (yacs' ``CfgNode``).

    ``torch.load(weights_only=True)`` creates it through ``__new__``, which hands back a plain ``OrderedDict``:
    the config's entries land in the dict, its attributes (yacs' flags) in the dict's ``__dict__``, and no code
    of the original class is imported or run.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:
        return OrderedDict()


# The official Swin training script (ACmix's release included) saves its yacs config with the weights. Registering
# the name (not the class) lets every weights_only load, timm's included, read such files without yacs.
RELEASE_CONFIG_CLASS = "yacs.config.CfgNode"
torch.serialization.add_safe_globals([(ReleaseConfig, RELEASE_CONFIG_CLASS)])
