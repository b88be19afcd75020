"""Other spatial mixers in FCViT's MetaFormer frame: ACmix, attention with softmax replacements, depth-wise attention.

Same frame as FCViT (:class:`~fcvit.models.FCViT` / :class:`~fcvit.models.IsoFCViT`: conv stem, pre-norm
GroupNorm blocks with layer scale, FCViT's channel mixer), only the token mixer changes, so the models
compare spatial modelling and nothing else. Three sizes per mixer:

* ``{mixer}_s12``: hierarchical, PoolFormer-S12 layout (depths 2-2-6-2, widths 64-128-320-512, MLP ratio 4),
  32 channels per head. Attention mixers select keys in a sliding 7x7 window in stages 1-2 (56x56 and 28x28
  maps at 224: global attention there would cost ~2.5 GMACs in stage 1 alone) and globally in stages 3-4.
  ACmix is local (7x7) everywhere by design.
* ``iso_{mixer}_384_12``: isotropic, DeiT-S size (16x16 patches, width 384, 12 blocks, 6 heads), global selection.
* ``test_{mixer}``: hierarchical, depths 1-1-1-1, widths 16-32-48-64, for tests.

``{mixer}`` is ``acmix``, ``dwattn`` (depth-wise self-attention) or ``attn_{activation}`` with the activation
one of ``softmax``, ``none``, ``scaling``, ``scaling_relu``, ``ln``, ``ln_relu``. Attention mixers use the
relative position bias (the paper's default for the depth-wise variant). ``mixer_kwargs`` given to
``timm.create_model`` update each stage's mixer settings, e.g. ``mixer_kwargs=dict(pos_embed="abs")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from timm.models import generate_default_cfgs
from torch import nn

from ..layers import ATTENTION_ACTIVATIONS
from ._registry import register_model, register_paper_figures
from .fcvit import FCViT, IsoFCViT, _cfg, _create, checkpoint_filter_fn

# FCViT's frame, so FCViT's checkpoint filter (the name timm's convention looks up); timm's register_model appends
# the model functions
__all__: list[str] = ["checkpoint_filter_fn"]

MIXERS = ("acmix", *(f"attn_{a}" for a in ATTENTION_ACTIVATIONS), "dwattn")


def _stage_mixer_kwargs(mixer: str, dim: int, head_dim: int, size: int, window: int | None) -> dict[str, Any]:
    """Mixer settings of one stage of width ``dim`` on ``size x size`` maps (at 224 px input)."""
    if mixer == "acmix":
        return dict(head=dim // head_dim)
    return dict(num_heads=dim // head_dim, window=window, pos_size=size)


def _hierarchical(mixer: str, depths: Sequence[int], dims: Sequence[int], mlp_ratio: float, head_dim: int) -> dict:
    sizes = [224 // (4 * 2**i) for i in range(len(dims))]
    windows = [7, 7, None, None]
    return dict(
        depths=tuple(depths),
        dims=tuple(dims),
        mlp_ratios=mlp_ratio,
        token_mixers=mixer,
        mixer_kwargs=[_stage_mixer_kwargs(mixer, d, head_dim, s, w) for d, s, w in zip(dims, sizes, windows)],
    )


def _isotropic(mixer: str, dim: int, depth: int, num_heads: int) -> dict:
    return dict(
        dim=dim,
        depth=depth,
        patch_size=16,
        mlp_ratio=4.0,
        token_mixer=mixer,
        mixer_kwargs=_stage_mixer_kwargs(mixer, dim, dim // num_heads, 224 // 16, None),
    )


# variant name -> (class, constructor arguments, what it is)
VARIANTS: dict[str, tuple[type[nn.Module], dict[str, Any], str]] = {}
for _mixer in MIXERS:
    VARIANTS[f"{_mixer}_s12"] = (
        FCViT,
        _hierarchical(_mixer, (2, 2, 6, 2), (64, 128, 320, 512), 4.0, 32),
        "PoolFormer-S12 layout (depths 2-2-6-2, widths 64-128-320-512)",
    )
    VARIANTS[f"iso_{_mixer}_384_12"] = (
        IsoFCViT,
        _isotropic(_mixer, 384, 12, 6),
        "isotropic, DeiT-S size (16x16 patches, width 384, 12 blocks, 6 heads)",
    )
    VARIANTS[f"test_{_mixer}"] = (
        FCViT,
        _hierarchical(_mixer, (1, 1, 1, 1), (16, 32, 48, 64), 2.0, 16),
        "tiny hierarchical model for tests (depths 1-1-1-1, widths 16-32-48-64)",
    )


def _merge_mixer_kwargs(default: dict | list[dict], given: dict | Sequence[dict] | None) -> dict | list[dict]:
    """The variant's mixer settings updated by the caller's (one dict for every stage, or one per stage)."""
    if given is None:
        return default
    if isinstance(default, dict):
        return {**default, **given}
    given = [given] * len(default) if isinstance(given, dict) else list(given)
    if len(given) != len(default):
        raise ValueError(f"mixer_kwargs has {len(given)} entries, expected one per stage ({len(default)})")
    return [{**d, **(g or {})} for d, g in zip(default, given)]


def _create_mixer_model(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    cls, model_args, _ = VARIANTS[variant]
    mixer_kwargs = _merge_mixer_kwargs(model_args["mixer_kwargs"], kwargs.pop("mixer_kwargs", None))
    return _create(variant, cls, pretrained, **{**model_args, "mixer_kwargs": mixer_kwargs, **kwargs})


def _mixer_cfg(variant: str) -> dict[str, Any]:
    extra = dict(pool_size=(14, 14)) if VARIANTS[variant][0] is IsoFCViT else {}
    if variant.startswith("test_"):
        extra = dict(input_size=(3, 128, 128), pool_size=(4, 4))
    family = "acmix" if "acmix" in variant else "dynconv"
    return _cfg(family, **extra)


default_cfgs = generate_default_cfgs({f"{v}.untrained": _mixer_cfg(v) for v in VARIANTS})


def _model_fn(variant: str) -> Callable[..., nn.Module]:
    def fn(pretrained: bool = False, **kwargs) -> nn.Module:
        return _create_mixer_model(variant, pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = variant
    fn.__doc__ = f"{variant}: {VARIANTS[variant][2]}."
    return fn


for _variant in VARIANTS:
    globals()[_variant] = register_model(_model_fn(_variant))

# Paper Table 3 (DeiT-S, relative position): GFLOPs (MACs), params (M), ImageNet top-1; Table 2 gives top-1 only
# for the other activations (DeiT-S, relative position, global average pooling). The paper's DeiT-S frame differs
# from ours (LayerNorm, no layer scale, no depth-wise conv in the MLP), so only the differences compare.
register_paper_figures(
    {
        "iso_attn_softmax_384_12": dict(params_m=22.028, gmacs=4.608, top1=80.96),
        "iso_attn_scaling_384_12": dict(params_m=22.028, gmacs=4.543, top1=80.45),
        "iso_dwattn_384_12": dict(params_m=20.253, gmacs=4.079, top1=79.74),
        "iso_attn_scaling_relu_384_12": dict(params_m=None, gmacs=None, top1=80.93),
        "iso_attn_ln_384_12": dict(params_m=None, gmacs=None, top1=80.09),
        "iso_attn_ln_relu_384_12": dict(params_m=None, gmacs=None, top1=80.64),
    }
)
