"""ResNet-ACmix: ResNet-50 v1.5 bottlenecks whose 3x3 conv is an ACmix module.

"On the Integration of Self-Attention and Convolution" (Pan et al., CVPR 2022), the ResNet models of its
ImageNet table (ResNet-ACmix 26 / 38 / 50, layers 1-2-4-1, 2-3-5-2, 3-4-6-3). As the official
``ResNet/ResNet_ImageNet.py``: torchvision's ResNet (7x7 stem, max pool, stages of 64-128-256-512 bottleneck
channels, expansion 4) with ``conv2`` of every bottleneck ``ACmix(width, width, kernel_att=7, head=4,
kernel_conv=3, stride)``; the stride sits in ACmix (v1.5) and the shortcut is a strided 1x1 conv + BatchNorm.

Built on timm's :class:`~timm.models.resnet.ResNet` with a bottleneck subclass, so timm's ``features_only``,
``forward_intermediates``, gradient checkpointing and classifier reset apply. The parameter names are the
official ones (``conv1``, ``bn1``, ``layer1.0.conv2.rate1``, ``layer1.0.downsample.0``, ``fc``, ...): official
checkpoints load as they are, and timm's loaders take the training script's ``{"state_dict": ...}`` with
DataParallel's ``module.`` prefixes. Departure from the official code: after the global Kaiming init of
every conv (which in the official code also redraws ACmix's ``dep_conv``), ACmix's own init restores the shift
kernels and 0.5 rates, the initialisation the paper describes (Sec. 4.3).
"""

import re
from collections.abc import Sequence
from typing import Any

import torch
from timm.models import generate_default_cfgs
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from ..layers import ACmix
from ._checkpoints import check_tensor_shapes
from ._registry import build_model, imagenet_cfg, register_model, register_paper_figures

__all__ = ["ACmixBottleneck", "ACmixResNet"]


class ACmixBottleneck(Bottleneck):
    """timm's bottleneck (1x1, 3x3, 1x1 convs with BatchNorm and ReLU) with ACmix as its 3x3 conv ``conv2``.

    Takes the arguments timm's ResNet gives its blocks, plus ACmix's ``kernel_att``, ``head`` and
    ``kernel_conv``. ACmix takes over the channels, stride and dilation timm chose for the 3x3 conv.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        **kwargs: Any,
    ):
        if cardinality != 1:
            raise ValueError(f"ACmixBottleneck: ACmix has no groups, got cardinality={cardinality}")
        super().__init__(inplanes, planes, stride, downsample, cardinality, **kwargs)
        conv = self.conv2
        self.conv2 = ACmix(
            conv.in_channels,
            conv.out_channels,
            kernel_att,
            head,
            kernel_conv,
            stride=conv.stride[0],
            dilation=conv.dilation[0],
        )


class ACmixResNet(ResNet):
    """ResNet of :class:`ACmixBottleneck` blocks (timm's ResNet: all its arguments apply).

    Args:
        layers: bottlenecks per stage.
        kernel_att / head / kernel_conv: ACmix's attention window, heads and conv-path kernel in every block.
        zero_init_last: zero the last BatchNorm of each block at init (off, as in the official training).
        **kwargs: timm's ResNet arguments (``num_classes``, ``channels``, ``drop_path_rate``, ...).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        zero_init_last: bool = False,
        **kwargs: Any,
    ):
        block_args = dict(kernel_att=kernel_att, head=head, kernel_conv=kernel_conv, **kwargs.pop("block_args", {}))
        super().__init__(ACmixBottleneck, tuple(layers), zero_init_last=zero_init_last, block_args=block_args, **kwargs)
        self.layers = tuple(layers)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        """timm's init (Kaiming normal for every conv), then each ACmix's own (shift kernels, rates 0.5)."""
        super().init_weights(zero_init_last=zero_init_last)
        for m in self.modules():
            if isinstance(m, ACmix):
                m.init_weights()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Both of timm's loading routes end here: name a checkpoint of another depth (or a tensor of another
        # shape) in one line instead of torch's list of missing and unexpected keys.
        own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        layers = checkpoint_layers(own)
        if layers and layers != self.layers:
            raise ValueError(
                f"checkpoint is {_variant_name(layers)} but the model is {_variant_name(self.layers)}: "
                f"create the model that matches the checkpoint"
            )
        check_tensor_shapes(own, self)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def checkpoint_layers(state_dict: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Bottlenecks per stage of a ResNet state dict (from its ``layerN.M.`` keys; empty if it has none)."""
    depth: dict[int, int] = {}
    for k in state_dict:
        m = re.match(r"layer(\d+)\.(\d+)\.", k)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            depth[stage] = max(depth.get(stage, 0), block + 1)
    return tuple(depth[s] for s in sorted(depth))


def _variant_name(layers: Sequence[int]) -> str:
    layout = "-".join(map(str, layers))
    names = [n for n, args in MODEL_ARGS.items() if args["layers"] == tuple(layers)]
    return f"{names[0]} (layers {layout})" if names else f"a ResNet-ACmix with layers {layout}"


# --- variants -------------------------------------------------------------------------------------

MODEL_ARGS: dict[str, dict[str, Any]] = {
    "acmix_resnet26": dict(layers=(1, 2, 4, 1)),
    "acmix_resnet38": dict(layers=(2, 3, 5, 2)),
    "acmix_resnet50": dict(layers=(3, 4, 6, 3)),
    "test_acmix_resnet": dict(layers=(1, 1, 1, 1), channels=(16, 32, 48, 64)),
}

# The paper's ImageNet table (params, FLOPs counted as MACs, top-1); the ACmix README repeats the params.
register_paper_figures(
    {
        "acmix_resnet26": dict(params_m=10.6, gmacs=2.3, top1=76.1),
        "acmix_resnet38": dict(params_m=14.6, gmacs=2.9, top1=77.4),
        "acmix_resnet50": dict(params_m=18.6, gmacs=3.6, top1=77.8),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> ACmixResNet:
    return build_model(ACmixResNet, variant, pretrained, **{**MODEL_ARGS[variant], **kwargs})


def _cfg(**kwargs) -> dict[str, Any]:
    # the official evaluation: resize to 256, centre crop 224, bilinear
    own = dict(pool_size=(7, 7), crop_pct=0.875, interpolation="bilinear", first_conv="conv1", classifier="fc")
    return imagenet_cfg("acmix", **{**own, **kwargs})


default_cfgs = generate_default_cfgs(
    {
        "acmix_resnet26.untrained": _cfg(),
        "acmix_resnet38.untrained": _cfg(),
        "acmix_resnet50.untrained": _cfg(),
        "test_acmix_resnet.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
    }
)


@register_model
def acmix_resnet26(pretrained: bool = False, **kwargs) -> ACmixResNet:
    """ResNet-ACmix 26: layers 1-2-4-1."""
    return _create("acmix_resnet26", pretrained, **kwargs)


@register_model
def acmix_resnet38(pretrained: bool = False, **kwargs) -> ACmixResNet:
    """ResNet-ACmix 38: layers 2-3-5-2."""
    return _create("acmix_resnet38", pretrained, **kwargs)


@register_model
def acmix_resnet50(pretrained: bool = False, **kwargs) -> ACmixResNet:
    """ResNet-ACmix 50: layers 3-4-6-3."""
    return _create("acmix_resnet50", pretrained, **kwargs)


@register_model
def test_acmix_resnet(pretrained: bool = False, **kwargs) -> ACmixResNet:
    """Tiny ResNet-ACmix for tests: layers 1-1-1-1, bottleneck widths 16-32-48-64."""
    return _create("test_acmix_resnet", pretrained, **kwargs)
