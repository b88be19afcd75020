"""The input check shared by the models and layers: the shape every model and token mixer expects, written so
that FX tracing keeps it."""

import torch
from timm.layers import register_notrace_function


@register_notrace_function  # it reads the input's shape, which FX tracing cannot: a traced graph calls it instead
def check_input(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    """``x``, after raising ``ValueError`` unless it is a batch of maps [B, ``channels``, H, W]; ``name`` (the model
    or layer) goes into the message. Returned so that traced graphs keep the call (FX drops unused results)."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects an input of shape [B, {channels}, H, W], got a tensor of shape {list(x.shape)}"
        )
    return x
