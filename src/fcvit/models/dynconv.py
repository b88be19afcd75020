"""The hosts of "Interpret Vision Transformers as ConvNets with Dynamic Convolutions" (arXiv:2309.10713).

DeiT (timm's :class:`~timm.models.vision_transformer.VisionTransformer`) and Swin (timm's
:class:`~timm.models.swin_transformer.SwinTransformer`) with only the attention changed, as in the paper's
Tables 2 and 3. Registered as ``{host}_{mixer}``: host ``deit_small``, ``deit_base``, ``swin_tiny``,
``swin_base`` (and ``deit_test``, ``test_swin``: tiny, 32 px, for tests; ``deit_test`` was ``test_deit`` and
has three blocks so that timm's model tests see it as the ViT it is and find three feature levels), mixer
``attn_{activation}`` with the activation one of :data:`fcvit.layers.ATTENTION_ACTIVATIONS` (section 4.2)
or ``dwattn`` (depth-wise self-attention, section 4.3). The activations and Eq. 5 are
:mod:`fcvit.layers.attention`'s
(:func:`~fcvit.layers.attention.attention_activation`, :func:`~fcvit.layers.attention.depthwise_attention`).

Keyword arguments (defaults: the paper's rows):

* ``pos_embed="abs"|"rel"``. DeiT: ``"abs"`` is DeiT's learned embedding added to the tokens; ``"rel"`` drops it
  for a learned bias per head and relative offset on the patch grid (a ``(2H-1)(2W-1)`` table per block, as
  Swin's), added to the logits (``dwattn``: the weights ``p`` of Eq. 5). Pairs with the class token get no bias,
  which is what the paper's counts imply (Table 3: the relative term costs 196 x 196 per head, not 197 x 197).
  Default ``"rel"`` for ``attn_ln``, ``attn_ln_relu`` and ``dwattn`` (the paper reports them only so / uses it by
  default), ``"abs"`` otherwise. Swin: ``"rel"`` is Swin's window bias table; ``"abs"`` removes it for a learned
  map added after the patch embedding (Swin's ``ape``); default ``"rel"``.
* DeiT ``distilled=True``: DeiT's distillation token and head (:class:`DistilledDynConvViT`), for students of
  ``fcvit train --distill``.
* DeiT ``class_token=True|False``: False classifies the average of the tokens (the paper's fix for LayerNorm,
  Table 2); default False for ``attn_ln`` and ``attn_ln_relu``.

``deit_small_attn_softmax`` is timm's ``deit_small_patch16_224`` and ``swin_tiny_attn_softmax`` timm's
``swin_tiny_patch4_window7_224`` (same state dict, same logits; likewise the base sizes). The ``.host_*``
pretrained tags load those timm weights into any mixer through :func:`checkpoint_filter_fn` (fine-tuning
start): what the host lacks (relative position tables, ``dwattn``'s q/k projection is cut from the host's
q/k/v) is converted or starts fresh, and the log says which.
"""

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from timm.layers import (
    Attention,
    register_notrace_module,
    resample_abs_pos_embed,
    resample_abs_pos_embed_nhwc,
    resize_rel_pos_bias_table,
    trunc_normal_,
)
from timm.models import generate_default_cfgs, register_model_deprecations
from timm.models._manipulate import named_apply
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from timm.models.swin_transformer import checkpoint_filter_fn as swin_checkpoint_filter_fn
from timm.models.vision_transformer import VisionTransformer, get_init_weights_vit
from torch import nn

from ..layers.attention import (
    ATTENTION_ACTIVATIONS,
    RelativePositionBias,
    attention_activation,
    check_activation,
    depthwise_attention,
)
from ._registry import build_model, imagenet_cfg, new_classifier, register_model, register_paper_figures

# the model functions are appended by timm
__all__ = ["DistilledDynConvViT", "DynConvSwin", "DynConvViT", "checkpoint_filter_fn"]

_logger = logging.getLogger(__name__)

MIXERS = (*(f"attn_{a}" for a in ATTENTION_ACTIVATIONS), "dwattn")
POSITION_EMBEDDINGS = ("abs", "rel")


def _check(name: str, value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{name}: unknown {what} {value!r}; choose from {choices}")


# --- DeiT: timm's Attention with another activation, or depth-wise -------------------------------------------


class TokenRelativePositionBias(RelativePositionBias):
    """Learned bias per head and offset between the patches of a ViT's ``grid_size`` grid, as [heads, N, N]
    over all tokens: pairs with one of the ``num_prefix_tokens`` (class) tokens get 0."""

    def __init__(self, num_heads: int, grid_size: tuple[int, int], num_prefix_tokens: int):
        super().__init__(num_heads, (grid_size[0] - 1, grid_size[1] - 1))
        self.num_prefix_tokens = num_prefix_tokens
        ys, xs = torch.meshgrid(torch.arange(grid_size[0]), torch.arange(grid_size[1]), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        self.register_buffer("dy", ys[:, None] - ys[None], persistent=False)
        self.register_buffer("dx", xs[:, None] - xs[None], persistent=False)

    def token_bias(self, num_tokens: int) -> torch.Tensor:
        """Bias [heads, N, N] for the ``num_tokens`` = prefix + patch tokens the model was made for."""
        n = self.num_prefix_tokens
        if num_tokens != n + self.dy.shape[0]:
            raise ValueError(
                f"relative position bias: {num_tokens} tokens, made for {n} + {self.dy.shape[0]} (other image size?)"
            )
        return nn.functional.pad(self.forward(self.dy, self.dx), (n, 0, n, 0))


@register_notrace_module  # shape checks and shape-driven selection: a leaf for FX tracing
class DynamicAttention(Attention):
    """timm's ViT attention with its softmax replaced: ``o_i = act(q_i k^T / sqrt(d) + p_i) v`` (paper Table 2).

    Args:
        dim, num_heads, qkv_bias, attn_drop, proj_drop: as timm's :class:`~timm.layers.Attention`.
        activation: one of :data:`~fcvit.layers.ATTENTION_ACTIVATIONS`.
        rel_pos: the relative position bias ``p`` (None: no bias, the model adds an absolute embedding).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        activation: str = "softmax",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos: TokenRelativePositionBias | None = None,
    ):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        check_activation(activation, type(self).__name__)
        self.activation = activation
        self.fused_attn = False  # the activation acts on explicit weights
        self.rel_pos = rel_pos

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("DynamicAttention: attention masks are not supported")
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if self.rel_pos is not None:
            logits = logits + self.rel_pos.token_bias(N)
        x = self.attn_drop(attention_activation(logits, self.activation)) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))


@register_notrace_module  # shape checks and shape-driven selection: a leaf for FX tracing
class DepthwiseAttention(Attention):
    """Depth-wise self-attention (paper section 4.3, Eq. 5) in a ViT block: ``o_i = q_i * mean_j k_j + p_i k``.

    timm's attention without the value bank: ``qk`` projects to queries and keys only; ``attn_drop`` acts on
    the relative position weights ``p``. Args as :class:`DynamicAttention` without ``activation``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rel_pos: TokenRelativePositionBias | None = None,
    ):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        del self.qkv
        self.qk = nn.Linear(dim, 2 * self.attn_dim, bias=qkv_bias)
        self.rel_pos = rel_pos

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("DepthwiseAttention: attention masks are not supported")
        B, N, _ = x.shape
        q, k = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        p = None if self.rel_pos is None else self.attn_drop(self.rel_pos.token_bias(N).expand(B, -1, -1, -1))
        x = depthwise_attention(q, k, p)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim)))


class DynConvViT(VisionTransformer):
    """DeiT with its attention changed: timm's :class:`~timm.models.vision_transformer.VisionTransformer`
    whose blocks get :class:`DynamicAttention` or :class:`DepthwiseAttention` after construction (timm's
    ``attn_layer`` takes a class, not a configured one).

    Args:
        mixer: ``attn_{activation}`` or ``dwattn``.
        pos_embed: ``"abs"`` (DeiT's learned token embedding) or ``"rel"`` (a bias per head and patch offset).
        class_token: classify the class token (True) or the average of the patch tokens (False).
        global_pool: timm's pooling; default ``"token"`` with a class token, ``"avg"`` without.
        **kwargs: :class:`~timm.models.vision_transformer.VisionTransformer`'s (size, depth, heads, drop rates).
    """

    def __init__(
        self,
        mixer: str = "attn_softmax",
        pos_embed: str = "abs",
        class_token: bool = True,
        global_pool: str | None = None,
        **kwargs,
    ):
        _check(type(self).__name__, mixer, MIXERS, "mixer")
        _check(type(self).__name__, pos_embed, POSITION_EMBEDDINGS, "pos_embed")
        if pos_embed == "rel" and kwargs.get("dynamic_img_size"):
            raise ValueError("DynConvViT: the relative position bias is made for one patch grid (no dynamic_img_size)")
        if global_pool is None:
            global_pool = "token" if class_token else "avg"
        timm_pos = "learn" if pos_embed == "abs" else "none"
        super().__init__(class_token=class_token, global_pool=global_pool, pos_embed=timm_pos, **kwargs)
        self.mixer = mixer
        for block in self.blocks:
            old = block.attn
            rel_pos = None
            if pos_embed == "rel":
                rel_pos = TokenRelativePositionBias(old.num_heads, self.patch_embed.grid_size, self.num_prefix_tokens)
            args = dict(qkv_bias=old.qkv.bias is not None, attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p)
            if mixer == "dwattn":
                block.attn = DepthwiseAttention(self.embed_dim, old.num_heads, rel_pos=rel_pos, **args)
            else:
                activation = mixer.removeprefix("attn_")
                block.attn = DynamicAttention(self.embed_dim, old.num_heads, activation, rel_pos=rel_pos, **args)
            if kwargs.get("weight_init") != "skip":
                named_apply(get_init_weights_vit(self.weight_init_mode, needs_reset=False), block.attn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """timm's forward without its ``attn_mask``, which these attentions refuse: with ``x`` its only input,
        ``torch.fx.symbolic_trace`` traces the model as it is."""
        return self.forward_head(self.forward_features(x))


class DistilledDynConvViT(DynConvViT):
    """:class:`DynConvViT` with DeiT's distillation token (timm's ``VisionTransformerDistilled`` layout).

    A second learned token after the class token, with its own position entry (``pos_embed="abs"``) and its own
    head ``head_dist``. In training with ``distilled_training`` set, ``forward`` returns ``(class logits,
    distillation logits)`` for :class:`fcvit.train.distill.DistillationLoss`; otherwise (evaluation, inference)
    the average of the two heads, as DeiT. Built on timm's register-token slot, which has the place and position
    entry DeiT gives the distillation token; the parameter is renamed ``dist_token`` as in DeiT.
    """

    def __init__(self, *args, **kwargs):
        if not kwargs.get("class_token", True) or kwargs.get("global_pool") not in (None, "token"):
            raise ValueError("DistilledDynConvViT: the distillation token sits beside a class token (no pooling)")
        if kwargs.get("reg_tokens") or kwargs.get("dynamic_img_size"):
            raise ValueError("DistilledDynConvViT: register tokens and dynamic_img_size are not supported")
        super().__init__(*args, reg_tokens=1, **kwargs)  # num_prefix_tokens = 2 before the attention is built
        self.dist_token = self.reg_token
        self.reg_token = None
        if kwargs.get("weight_init") != "skip":
            trunc_normal_(self.dist_token, std=0.02)
        self.head_dist = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        if kwargs.get("weight_init") != "skip":
            named_apply(get_init_weights_vit(self.weight_init_mode, needs_reset=False), self.head_dist)
        self.distilled_training = False

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        x = torch.cat((self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head, self.head_dist

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "", "token"):
            raise ValueError(f"DistilledDynConvViT reads its class and distillation tokens, not {global_pool!r}")
        super().reset_classifier(num_classes)
        self.head_dist = new_classifier(self, self.embed_dim, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        x, x_dist = self.head_drop(x[:, 0]), self.head_drop(x[:, 1])
        if pre_logits:
            return (x + x_dist) / 2
        x, x_dist = self.head(x), self.head_dist(x_dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return x, x_dist
        return (x + x_dist) / 2


# --- Swin: timm's WindowAttention with another activation, or depth-wise ---------------------------------------


class _WindowSelection:
    """What both Swin attentions add to timm's WindowAttention: an optional bias table, Swin's mask as a selection."""

    def _drop_bias_table(self) -> None:
        """Absolute position (``pos_embed="abs"``): no relative position bias."""
        del self.relative_position_bias_table
        self.relative_position_bias_table = None

    def reset_parameters(self) -> None:
        if self.relative_position_bias_table is not None:
            WindowAttention.reset_parameters(self)


def _selected_keys(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Swin's additive shift mask [windows, N, N] (0 / -100) -> the keys each query selects, [windows, 1, N, N].

    In a shifted window, a query selects the keys of its own region of the shifted map only."""
    return None if mask is None else (mask == 0).unsqueeze(1)


@register_notrace_module  # shape checks and shape-driven selection: a leaf for FX tracing
class DynamicWindowAttention(_WindowSelection, WindowAttention):
    """timm's Swin window attention with its softmax replaced: ``act(q k^T / sqrt(d) + p) v`` per window.

    Keys the shifted-window mask excludes are unselected: weight 0, not counted by the normalisation (softmax: as
    timm's -100 mask, up to exp(-100)).

    Args:
        dim, num_heads, window_size, qkv_bias, attn_drop, proj_drop: as timm's WindowAttention.
        activation: one of :data:`~fcvit.layers.ATTENTION_ACTIVATIONS`.
        rel_pos: keep Swin's relative position bias table (False with an absolute embedding).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        activation: str = "softmax",
        rel_pos: bool = True,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(
            dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        check_activation(activation, type(self).__name__)
        self.activation = activation
        self.fused_attn = False
        if not rel_pos:
            self._drop_bias_table()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if self.relative_position_bias_table is not None:
            logits = logits + self._get_rel_pos_bias()
        valid = _selected_keys(mask)
        if mask is not None:
            logits = logits.view(-1, mask.shape[0], self.num_heads, N, N)
        attn = attention_activation(logits, self.activation, valid).view(-1, self.num_heads, N, N)
        x = self.attn_drop(attn) @ v
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, -1)))


@register_notrace_module  # shape checks and shape-driven selection: a leaf for FX tracing
class DepthwiseWindowAttention(_WindowSelection, WindowAttention):
    """Depth-wise self-attention (Eq. 5) in Swin's windows: ``o_i = q_i * mean_{S_i} k_j + sum_{S_i} p_ij k_j``
    with ``S_i`` the keys of the query's window (and, in shifted windows, of its region).

    timm's window attention without the value bank (``qk``); ``attn_drop`` acts on the bias weights ``p``.
    Args as :class:`DynamicWindowAttention` without ``activation``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        rel_pos: bool = True,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__(
            dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.qk = nn.Linear(dim, self.qkv.out_features * 2 // 3, bias=qkv_bias)
        del self.qkv
        if not rel_pos:
            self._drop_bias_table()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k = self.qk(x).reshape(B_, N, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        p: torch.Tensor | None = None
        if self.relative_position_bias_table is not None:
            p = self.attn_drop(self._get_rel_pos_bias().expand(B_, -1, -1, -1))
        if mask is None:
            x = depthwise_attention(q, k, p)
        else:
            windows = (-1, mask.shape[0], self.num_heads, N, q.shape[-1])
            p = None if p is None else p.reshape(-1, mask.shape[0], self.num_heads, N, N)
            x = depthwise_attention(q.reshape(windows), k.reshape(windows), p, _selected_keys(mask))
            x = x.reshape(B_, self.num_heads, N, -1)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, -1)))


@register_notrace_module  # shape checks and shape-driven selection: a leaf for FX tracing
class AbsolutePosition(nn.Module):
    """Learned map [1, H, W, C] added to Swin's NHWC patch embedding (Swin's ``ape``).

    It sits in stage 0's ``downsample`` slot (an Identity in timm's Swin: stage 0 does not downsample), right
    after the patch embedding, so every path (forward, ``forward_intermediates``, ``features_only``) adds it.
    """

    def __init__(self, grid_size: tuple[int, int], dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size[0], grid_size[1], dim))
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:3] != self.pos_embed.shape[1:3]:
            raise ValueError(f"absolute position: map {list(x.shape[1:3])}, made for {list(self.pos_embed.shape[1:3])}")
        return x + self.pos_embed


class DynConvSwin(SwinTransformer):
    """Swin with its attention changed: timm's :class:`~timm.models.swin_transformer.SwinTransformer` whose
    blocks get :class:`DynamicWindowAttention` or :class:`DepthwiseWindowAttention` after construction (timm's
    Swin builds its WindowAttention itself).

    Args:
        mixer: ``attn_{activation}`` or ``dwattn``.
        pos_embed: ``"rel"`` (Swin's window bias table) or ``"abs"`` (:class:`AbsolutePosition`).
        **kwargs: :class:`~timm.models.swin_transformer.SwinTransformer`'s.
    """

    def __init__(self, mixer: str = "attn_softmax", pos_embed: str = "rel", **kwargs):
        _check(type(self).__name__, mixer, MIXERS, "mixer")
        _check(type(self).__name__, pos_embed, POSITION_EMBEDDINGS, "pos_embed")
        if pos_embed == "abs" and (kwargs.get("dynamic_img_size") or kwargs.get("strict_img_size") is False):
            raise ValueError("DynConvSwin: the absolute position map is made for one patch grid (no dynamic size)")
        super().__init__(**kwargs)
        self.mixer = mixer
        rel_pos = pos_embed == "rel"
        for stage in self.layers:
            for block in stage.blocks:
                old = block.attn
                args = dict(
                    rel_pos=rel_pos,
                    qkv_bias=old.qkv.bias is not None,
                    attn_drop=old.attn_drop.p,
                    proj_drop=old.proj_drop.p,
                )
                if mixer == "dwattn":
                    block.attn = DepthwiseWindowAttention(old.dim, old.num_heads, old.window_size, **args)
                else:
                    activation = mixer.removeprefix("attn_")
                    block.attn = DynamicWindowAttention(old.dim, old.num_heads, old.window_size, activation, **args)
                if kwargs.get("weight_init") != "skip":
                    named_apply(get_init_weights_vit(self.weight_init_mode, needs_reset=False), block.attn)
        if pos_embed == "abs":
            self.layers[0].downsample = AbsolutePosition(self.patch_embed.grid_size, self.embed_dim)


# --- weights of the timm hosts ---------------------------------------------------------------------------------


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's DeiT / Swin weights (softmax attention), or a model's own, -> ``model``: any mixer, position
    embedding and image size.

    Swin weights first pass timm's Swin filter (official layout -> timm's, index buffers dropped, window tables
    resized to the model's windows). Converted: ``dwattn``'s q/k projection is the host's q/k/v projection
    without its value rows; without a class token, the host's final norm becomes the pooled tokens' norm
    (``fc_norm``); the position embedding keeps the entries of the prefix tokens the model has. Resampled to the
    model's patch grid (timm's functions): DeiT's position embedding, Swin's absolute map, DeiT's relative
    tables. Dropped: what the model lacks (the value rows, position weights of the other kind, the class token).
    Fresh (the model's own initialisation, logged): what the host lacks (relative position tables of DeiT,
    Swin's absolute map). So the result loads strictly.
    """
    state_dict = state_dict.get("model", state_dict)
    own = model.state_dict()
    dropped = []
    if isinstance(model, SwinTransformer):
        dropped = [k for k in state_dict if k.endswith("relative_position_bias_table") and k not in own]
        state_dict = swin_checkpoint_filter_fn({k: v for k, v in state_dict.items() if k not in dropped}, model)
    file_prefix = sum(k in state_dict for k in ("cls_token", "dist_token"))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith((".qkv.weight", ".qkv.bias")) and key.replace(".qkv.", ".qk.") in own:
            out[key.replace(".qkv.", ".qk.")] = value[: 2 * value.shape[0] // 3]  # q and k rows; v has no place
        elif key.startswith("norm.") and f"fc_{key}" in own and key not in own:
            out[f"fc_{key}"] = value
        elif key not in own:
            dropped.append(key)
        elif key == "pos_embed" and value.ndim == 3:
            out[key] = _token_positions(value, file_prefix, model)
        else:
            owner = model.get_submodule(key.rpartition(".")[0])
            if isinstance(owner, AbsolutePosition):
                value = resample_abs_pos_embed_nhwc(value, list(own[key].shape[1:3]))
            elif isinstance(owner, RelativePositionBias):
                value = _resize_table(value, own[key])
            out[key] = value
    fresh = [key for key in own if key not in out]
    out.update({key: own[key] for key in fresh})
    if dropped or fresh:
        _logger.info("host weights: dropped %s; start fresh %s", dropped or "nothing", fresh or "nothing")
    return out


def _token_positions(value: torch.Tensor, file_prefix: int, model: VisionTransformer) -> torch.Tensor:
    """DeiT's position embedding [1, prefix + patch tokens, C] with ``file_prefix`` prefix entries (class, then
    distillation token) -> the model's: the entries of prefix tokens it lacks dropped, the grid resampled to its
    patch grid. Left as is where the model has prefix tokens the file lacks (the shape check names it)."""
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    grid = value.shape[1] - file_prefix
    if file_prefix < prefix or math.isqrt(grid) ** 2 != grid:
        return value
    value = torch.cat([value[:, :prefix], value[:, file_prefix:]], dim=1)
    return resample_abs_pos_embed(value, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix)


def _resize_table(table: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """A :class:`RelativePositionBias` table [heads, (2h+1)(2w+1)] resized to ``own``'s offsets with timm's
    interpolation for relative tables (square source, as timm assumes for checkpoints). Left as is where heads
    differ or the source is not square (the shape check names it)."""
    heads, offsets = own.shape
    side = math.isqrt(table.shape[-1])
    if table.shape == own.shape or table.shape[0] != heads or side * side != table.shape[-1]:
        return table
    rows = math.isqrt(offsets)  # the model's tables are square too: 2 * grid - 1 per side
    resized = resize_rel_pos_bias_table(
        table.reshape(heads, side, side), new_window_size=((rows + 1) // 2,) * 2, new_bias_shape=(heads, rows, rows)
    )
    return resized.reshape(heads, offsets)


# --- variants ---------------------------------------------------------------------------------------------------

# host -> (class, constructor arguments, timm weights to start from, pretrained_cfg fields)
HOSTS: dict[str, tuple[type[nn.Module], dict[str, Any], str | None, dict[str, Any]]] = {
    "deit_small": (
        DynConvViT,
        dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
        "deit_small_patch16_224.fb_in1k",
        dict(pool_size=None, classifier="head"),
    ),
    "deit_base": (
        DynConvViT,
        dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
        "deit_base_patch16_224.fb_in1k",
        dict(pool_size=None, classifier="head"),
    ),
    "swin_tiny": (
        DynConvSwin,
        dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
        "swin_tiny_patch4_window7_224.ms_in1k",
        dict(pool_size=(7, 7), classifier="head.fc"),
    ),
    "swin_base": (
        DynConvSwin,
        dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
        "swin_base_patch4_window7_224.ms_in1k",
        dict(pool_size=(7, 7), classifier="head.fc"),
    ),
    "deit_test": (
        DynConvViT,
        dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10),
        None,
        dict(input_size=(3, 32, 32), num_classes=10, pool_size=None, classifier="head"),
    ),
    "test_swin": (  # 16x16 patch grid, 4x4 windows: shifted windows in stages 1-2, window = map in stage 3
        DynConvSwin,
        dict(
            img_size=32,
            patch_size=2,
            window_size=4,
            embed_dim=16,
            depths=(2, 2, 2, 1),
            num_heads=(1, 2, 2, 4),
            num_classes=10,
        ),
        None,
        dict(input_size=(3, 32, 32), num_classes=10, pool_size=(2, 2), classifier="head.fc"),
    ),
}


def default_kwargs(host: str, mixer: str) -> dict[str, Any]:
    """The paper's settings of ``mixer`` in ``host`` (position embedding; DeiT: class token)."""
    if HOSTS[host][0] is DynConvSwin:
        return dict(pos_embed="rel")
    layer_norm = mixer in ("attn_ln", "attn_ln_relu")
    return dict(pos_embed="rel" if layer_norm or mixer == "dwattn" else "abs", class_token=not layer_norm)


def _cfg(host: str, **kwargs) -> dict[str, Any]:
    own = dict(fixed_input_size=True, first_conv="patch_embed.proj", license="apache-2.0")
    return imagenet_cfg("dynconv", **{**own, **HOSTS[host][3], **kwargs})


def _variant_cfgs(host: str, mixer: str) -> dict[str, dict[str, Any]]:
    """``.untrained`` and, for the full hosts, ``.host_{tag}`` (timm's weights of the host, a fine-tuning start).

    The softmax model of the host's own position embedding is the host itself: its host weights come first
    (``pretrained=True`` loads them); the other mixers default to untrained.
    """
    name, weights = f"{host}_{mixer}", HOSTS[host][2]
    cfgs = {f"{name}.untrained": _cfg(host)}
    if weights is not None:
        host_cfg = {f"{name}.host_{weights.split('.')[-1]}": _cfg(host, hf_hub_id=f"timm/{weights}")}
        cfgs = {**host_cfg, **cfgs} if mixer == "attn_softmax" else {**cfgs, **host_cfg}
    return cfgs


default_cfgs = generate_default_cfgs({k: v for h in HOSTS for m in MIXERS for k, v in _variant_cfgs(h, m).items()})


def _create(host: str, mixer: str, pretrained: bool = False, distilled: bool = False, **kwargs) -> nn.Module:
    cls, model_args, _, _ = HOSTS[host]
    if distilled:
        if cls is not DynConvViT:
            raise ValueError(f"{host}_{mixer}: the distillation token is DeiT's; use a DeiT host")
        cls = DistilledDynConvViT
        # both heads are classifiers: timm's loader re-initialises both for another class count (as DeiT's cfgs)
        overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
        kwargs["pretrained_cfg_overlay"] = {"classifier": ("head", "head_dist"), **overlay}
    if issubclass(cls, DynConvViT):
        depth = kwargs.get("depth", model_args["depth"])  # the last three blocks, as timm's ViTs (fewer if shallower)
        feature_cfg = dict(out_indices=kwargs.pop("out_indices", min(3, depth)), feature_cls="getter")
    else:
        depths = model_args["depths"]
        feature_cfg = dict(flatten_sequential=True, out_indices=kwargs.pop("out_indices", tuple(range(len(depths)))))
    args = {**model_args, **default_kwargs(host, mixer), "mixer": mixer, **kwargs}
    return build_model(
        cls, f"{host}_{mixer}", pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **args
    )


def _model_fn(host: str, mixer: str) -> Callable[..., nn.Module]:
    def fn(pretrained: bool = False, **kwargs) -> nn.Module:
        return _create(host, mixer, pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = f"{host}_{mixer}"
    defaults = ", ".join(f"{k}={v!r}" for k, v in default_kwargs(host, mixer).items())
    fn.__doc__ = f"{host} with {mixer} attention (paper arXiv:2309.10713); defaults {defaults}."
    return fn


for _host in HOSTS:
    for _mixer in MIXERS:
        globals()[f"{_host}_{_mixer}"] = register_model(_model_fn(_host, _mixer))
# the earlier names of the tiny DeiT host (depth 2 then: their checkpoints load with depth=2)
register_model_deprecations(__name__, {f"test_deit_{m}": f"deit_test_{m}" for m in MIXERS})

# Table 3: GFLOPs (they are MACs), params (M), activations (M), ImageNet top-1 (%), at the paper's position
# embedding (and, for DeiT, class token). Table 2 adds top-1 only.
register_paper_figures(
    {
        "deit_small_attn_softmax": dict(params_m=22.051, gmacs=4.608, macts=11.947, top1=80.53),
        "deit_small_attn_none": dict(params_m=None, gmacs=None, top1=77.17),
        "deit_small_attn_scaling": dict(params_m=22.051, gmacs=4.366, macts=9.448, top1=78.15),
        "deit_small_attn_scaling_relu": dict(params_m=None, gmacs=None, top1=80.03),
        "deit_small_attn_ln": dict(params_m=None, gmacs=None, top1=80.09),
        "deit_small_attn_ln_relu": dict(params_m=None, gmacs=None, top1=80.64),
        "deit_small_dwattn": dict(params_m=20.253, gmacs=4.079, macts=8.241, top1=79.74),
        "deit_base_attn_softmax": dict(params_m=86.568, gmacs=17.582, macts=23.895, top1=81.76),
        "deit_base_dwattn": dict(params_m=79.434, gmacs=15.830, macts=16.481, top1=81.92),
        "swin_tiny_attn_softmax": dict(params_m=28.288, gmacs=4.508, macts=17.054, top1=81.13),
        "swin_tiny_attn_none": dict(params_m=None, gmacs=None, top1=80.02),
        "swin_tiny_attn_scaling": dict(params_m=28.288, gmacs=4.508, macts=17.054, top1=81.15),
        "swin_tiny_attn_scaling_relu": dict(params_m=None, gmacs=None, top1=81.24),
        "swin_tiny_attn_ln": dict(params_m=None, gmacs=None, top1=81.22),
        "swin_tiny_attn_ln_relu": dict(params_m=None, gmacs=None, top1=81.56),
        "swin_tiny_dwattn": dict(params_m=26.850, gmacs=4.141, macts=14.112, top1=80.75),
        "swin_base_attn_softmax": dict(params_m=87.768, gmacs=15.467, macts=36.625, top1=83.36),
        "swin_base_attn_scaling": dict(params_m=87.768, gmacs=15.468, macts=38.930, top1=82.80),
        "swin_base_dwattn": dict(params_m=80.777, gmacs=14.192, macts=30.256, top1=82.48),
    }
)
register_paper_figures(
    {
        "deit_small_attn_softmax": dict(params_m=22.028, gmacs=4.608, macts=11.947, top1=80.96),
        "deit_small_attn_scaling": dict(params_m=22.028, gmacs=4.543, macts=10.351, top1=80.45),
        "deit_base_attn_softmax": dict(params_m=86.521, gmacs=17.582, macts=23.895, top1=82.39),
    },
    model_kwargs=dict(pos_embed="rel"),
)
register_paper_figures(
    {"deit_small_dwattn": dict(params_m=20.277, gmacs=3.902, macts=7.337, top1=73.61)},
    model_kwargs=dict(pos_embed="abs"),
)
