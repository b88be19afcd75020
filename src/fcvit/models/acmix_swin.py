"""Swin-ACmix: Swin Transformer whose window attention also runs ACmix's shift-convolution path.

"On the Integration of Self-Attention and Convolution" (Pan et al., CVPR 2022), Swin variant. In every block the
projections ``qkv = Linear(C, 3C)(x)`` feed two paths on the (cyclically shifted, in odd blocks) map:

* attention: Swin's window attention with relative position bias, then ``proj``;
* convolution: per head-channel, a 1x1 conv ``fc`` mixes the ``3 * heads`` projections into 9 maps, which the
  grouped 3x3 ``dep_conv`` (initialised as the nine shift kernels) aggregates over the whole map.

``out = proj_drop(rate1 * attention + rate2 * convolution)``, both rates learnable and initialised to 0.5. The
frame (patch embedding, patch merging, norms, head, shifting and masking) is timm's ``SwinTransformer``; only the
window attention module and the block's token mixing are ACmix's.

Official weights (``Swin-Transformer/models/swin_transformer_acmix.py`` of LeapLabTHU/ACmix) load as released:
a bare state_dict or the training script's dict (``model``, ``optimizer``, ``lr_scheduler``, ``config``, ...),
through ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` or
``timm.create_model(name, checkpoint_path=PATH)``. See :data:`RELEASE_CONFIG_CLASS` for how the pickled config is
read without importing yacs.

Inputs: any size at creation (``img_size``), or any size per call with ``strict_img_size=False`` (masks built per
forward). Maps that windows do not tile are padded for the attention path as timm's Swin pads them; the
convolution path always runs on the unpadded map, as in the official code.
"""

import re
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import calculate_drop_path_rates, to_ntuple
from timm.models import generate_default_cfgs
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
    resolve_stage_window_sizes,
    window_partition,
    window_reverse,
)
from timm.models.swin_transformer import checkpoint_filter_fn as swin_checkpoint_filter_fn
from torch import nn

from ..layers.acmix import shift_kernels
from ._checkpoints import check_tensor_shapes
from ._registry import build_model, imagenet_cfg, register_model, register_paper_figures

__all__ = ["AcmixWindowAttention", "AcmixSwinBlock", "AcmixSwinTransformer", "checkpoint_filter_fn"]

KERNEL_CONV = 3  # the convolution path's kernel side (fixed in the official code)


class AcmixWindowAttention(WindowAttention):
    """timm's window attention plus ACmix's convolution path, sharing the ``qkv`` projection.

    Unlike timm's module, it takes the whole map rather than its windows, since the convolution path needs it.
    Parameter names and shapes follow the official ``WindowAttention_acmix``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | tuple[int, int] = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(
            dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        if dim % num_heads:
            raise ValueError(f"AcmixWindowAttention: dim={dim} does not split into num_heads={num_heads} heads")
        self.head_dim = dim // num_heads
        taps = KERNEL_CONV**2
        self.fc = nn.Conv2d(3 * num_heads, taps, 1)
        # The official module builds dep_conv with a bias, then sets it to None when initialising.
        self.dep_conv = nn.Conv2d(
            taps * self.head_dim, dim, KERNEL_CONV, padding=KERNEL_CONV // 2, groups=self.head_dim, bias=False
        )
        self.rate1 = nn.Parameter(torch.empty(1))  # weight of the attention path
        self.rate2 = nn.Parameter(torch.empty(1))  # weight of the convolution path
        self.init_weights()

    def init_weights(self) -> None:
        """Rates 0.5 and shift kernels; timm's model init calls it after initialising the submodules."""
        nn.init.constant_(self.rate1, 0.5)
        nn.init.constant_(self.rate2, 0.5)
        with torch.no_grad():
            self.dep_conv.weight.copy_(shift_kernels(self.dim, KERNEL_CONV))

    def attention(self, qkv: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None) -> torch.Tensor:
        """Window attention on projections [B, Hp, Wp, 3C] (windows tile Hp x Wp) -> [B, H, W, C] after ``proj``."""
        _, Hp, Wp, C3 = qkv.shape
        C, N = C3 // 3, self.window_area
        windows = window_partition(qkv, self.window_size).view(-1, N, 3, self.num_heads, self.head_dim)
        q, k, v = windows.permute(2, 0, 3, 1, 4).unbind(0)  # [B * windows, heads, N, head_dim]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self._get_rel_pos_bias()
        if mask is not None:  # shifted windows: -100 between tokens that were not neighbours before the shift
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        out = self.proj((attn @ v).transpose(1, 2).reshape(-1, N, C))
        out = window_reverse(out.view(-1, self.window_size[0], self.window_size[1], C), self.window_size, Hp, Wp)
        return out[:, : size[0], : size[1]]

    def convolution(self, qkv: torch.Tensor) -> torch.Tensor:
        """Shift-convolution path on projections [B, H, W, 3C] -> [B, H, W, C]."""
        B, H, W, _ = qkv.shape
        # the 3 * heads maps (q, k, v of each head) of every head-channel: [B, 3 * heads, H * W, head_dim]
        f = qkv.reshape(B, H * W, 3 * self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        f = self.fc(f)  # [B, 9, H * W, head_dim]
        # grouped per head-channel (the groups of dep_conv): [B, head_dim * 9, H, W]
        f = f.permute(0, 3, 1, 2).reshape(B, self.head_dim * f.shape[1], H, W)
        return self.dep_conv(f).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int], mask: torch.Tensor | None = None) -> torch.Tensor:
        """ACmix on a block's (shifted) map.

        Args:
            x: map [B, Hp, Wp, C], padded at the bottom and right so that windows tile it.
            size: (H, W) of the map before padding; the convolution path runs on that part.
            mask: Swin's attention mask of shifted windows, [windows, N, N], or None.

        Returns:
            [B, H, W, C].
        """
        qkv = self.qkv(x)
        conv = self.convolution(qkv[:, : size[0], : size[1]])
        return self.proj_drop(self.rate1 * self.attention(qkv, size, mask) + self.rate2 * conv)


class AcmixSwinBlock(SwinTransformerBlock):
    """timm's Swin block with :class:`AcmixWindowAttention` as token mixer (same shifting, padding and masks)."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int = 4,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(
            dim,
            input_resolution,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_drop=proj_drop,
            attn_drop=attn_drop,
            **kwargs,
        )
        # replaces the WindowAttention timm's block builds, at the window size the block settled on
        self.attn = AcmixWindowAttention(
            dim, num_heads, window_size=self.window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
        padded = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        mask = self.get_attn_mask(padded) if self.dynamic_mask else self.attn_mask
        x = self.attn(padded, (H, W), mask)
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x


class AcmixSwinTransformer(SwinTransformer):
    """Swin-ACmix: timm's ``SwinTransformer`` with :class:`AcmixSwinBlock` blocks.

    Takes ``SwinTransformer``'s arguments (``img_size``, ``embed_dim``, ``depths``, ``num_heads``, ``window_size``,
    ``strict_img_size``, ...) except ``head_dim``: the convolution path needs ``dim // num_heads`` channels per
    head. Loads official state dicts (``_load_from_state_dict``), so timm's ``checkpoint_path=`` route, which
    applies no filter, takes them as released.
    """

    def __init__(
        self,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int | tuple[int, int] = 7,
        always_partition: bool = False,
        strict_img_size: bool = True,
        dynamic_img_size: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        weight_init: str = "",
        **kwargs: Any,
    ):
        if "head_dim" in kwargs:
            raise ValueError("AcmixSwinTransformer: head_dim is not supported (heads have dim // num_heads channels)")
        num_stages = len(depths)
        # timm builds the frame (patch embedding, patch merging, norm, head) with empty stages; ACmix blocks fill them
        super().__init__(
            depths=(0,) * num_stages,
            num_heads=num_heads,
            window_size=window_size,
            always_partition=always_partition,
            strict_img_size=strict_img_size,
            dynamic_img_size=dynamic_img_size,
            norm_layer=norm_layer,
            weight_init="skip",
            **kwargs,
        )
        self.depths = tuple(depths)
        windows = resolve_stage_window_sizes(window_size, num_stages)
        mlp_ratios = to_ntuple(num_stages)(mlp_ratio)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        for i, stage in enumerate(self.layers):
            stage.depth = depths[i]
            stage.blocks = nn.Sequential(
                *[
                    AcmixSwinBlock(
                        dim=self.feature_info[i]["num_chs"],
                        input_resolution=stage.output_resolution,
                        num_heads=num_heads[i],
                        window_size=windows[i],
                        shift_size=0 if j % 2 == 0 else tuple(w // 2 for w in windows[i]),
                        always_partition=always_partition,
                        dynamic_mask=self.dynamic_img_size,
                        mlp_ratio=mlp_ratios[i],
                        qkv_bias=qkv_bias,
                        proj_drop=proj_drop_rate,
                        attn_drop=attn_drop_rate,
                        drop_path=dpr[i][j],
                        norm_layer=norm_layer,
                    )
                    for j in range(depths[i])
                ]
            )
        self.weight_init_mode = "reset" if weight_init == "skip" else weight_init
        if weight_init != "skip":
            self.init_weights(needs_reset=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept the official layout as released (timm's checkpoint_path route applies no filter).
        own = {k[len(prefix) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
        own = checkpoint_filter_fn(own, self)
        check_architecture(own, self)
        state_dict.update({prefix + k: v for k, v in own.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm filter for Swin-ACmix weights: timm's Swin filter, which maps the official layout onto timm's.

    It takes the ``model`` entry of a training dict, drops the ``relative_position_index`` and ``attn_mask``
    buffers (rebuilt by the model), moves each stage's trailing downsampling to the start of the next stage,
    renames ``head`` to ``head.fc`` and resizes relative position tables to the model's windows. The ACmix
    tensors (``fc``, ``dep_conv``, ``rate1``, ``rate2``) keep their names.
    """
    return swin_checkpoint_filter_fn(state_dict, model)


def _architecture(state_dict: dict[str, torch.Tensor]) -> tuple[int, tuple[int, ...]] | None:
    """(embed_dim, depths) of a checkpoint in timm's layout, or None if it holds no blocks."""
    depths: dict[int, int] = {}
    for k in state_dict:
        m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.norm1\.weight$", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depths[i] = max(depths.get(i, 0), j + 1)
    if not depths or "patch_embed.proj.weight" not in state_dict:
        return None
    return state_dict["patch_embed.proj.weight"].shape[0], tuple(depths.get(i, 0) for i in range(max(depths) + 1))


def _variant_name(embed_dim: int, depths: tuple[int, ...]) -> str:
    for name, cfg in MODEL_ARGS.items():
        if (cfg["embed_dim"], tuple(cfg["depths"])) == (embed_dim, depths):
            return name
    return "a custom Swin-ACmix"


def check_architecture(state_dict: dict[str, torch.Tensor], model: AcmixSwinTransformer) -> None:
    """Raise ``ValueError`` naming both variants, or the first tensor, when a checkpoint does not fit ``model``."""
    arch = _architecture(state_dict)
    own_arch = (model.embed_dim, model.depths)
    if arch is not None and arch != own_arch:
        raise ValueError(
            f"checkpoint is {_variant_name(*arch)} (embed_dim {arch[0]}, depths {list(arch[1])}) but the model is "
            f"{_variant_name(*own_arch)} (embed_dim {own_arch[0]}, depths {list(own_arch[1])}): "
            f"create the model that matches the checkpoint"
        )
    check_tensor_shapes(state_dict, model)
    if arch is not None and not any(k.endswith(".attn.rate1") for k in state_dict):
        raise ValueError("checkpoint has no ACmix tensors (attn.fc, attn.dep_conv, attn.rate1/2): a plain Swin?")


# --- variants -------------------------------------------------------------------------------------

MODEL_ARGS: dict[str, dict[str, Any]] = {
    # official acmix_swin_{tiny,small}_patch4_window7_224 configs
    "acmix_swin_tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "acmix_swin_small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    # the official micro fixture's config, 64 px by default
    "test_acmix_swin": dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 6)),
}

# The ACmix paper's Table (ImageNet classification): params, GFLOPs (counted as MACs), top-1.
register_paper_figures(
    {
        "acmix_swin_tiny": dict(params_m=30.0, gmacs=4.6, top1=81.9),
        "acmix_swin_small": dict(params_m=51.0, gmacs=9.0, top1=83.5),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> AcmixSwinTransformer:
    model_args = {**MODEL_ARGS[variant], **kwargs}
    out_indices = model_args.pop("out_indices", tuple(range(len(model_args["depths"]))))
    return build_model(
        AcmixSwinTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **model_args,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    own = dict(pool_size=(7, 7), fixed_input_size=True, first_conv="patch_embed.proj", classifier="head.fc")
    return imagenet_cfg("acmix", **{**own, "license": "mit", **kwargs})


default_cfgs = generate_default_cfgs(
    {
        "acmix_swin_tiny.untrained": _cfg(),
        "acmix_swin_small.untrained": _cfg(),
        "test_acmix_swin.untrained": _cfg(input_size=(3, 64, 64), pool_size=(2, 2)),
    }
)


@register_model
def acmix_swin_tiny(pretrained: bool = False, **kwargs: Any) -> AcmixSwinTransformer:
    """Swin-ACmix-T: embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7, drop path 0.2."""
    return _create("acmix_swin_tiny", pretrained, **kwargs)


@register_model
def acmix_swin_small(pretrained: bool = False, **kwargs: Any) -> AcmixSwinTransformer:
    """Swin-ACmix-S: embed 96, depths 2-2-18-2, heads 3-6-12-24, window 7, drop path 0.3."""
    return _create("acmix_swin_small", pretrained, **kwargs)


@register_model
def test_acmix_swin(pretrained: bool = False, **kwargs: Any) -> AcmixSwinTransformer:
    """Tiny Swin-ACmix for tests (the official micro fixture's config): embed 24, depths 2-2-2-2, heads 1-2-3-6,
    64 px by default."""
    return _create("test_acmix_swin", pretrained, **kwargs)
