"""FCViT: Fully Convolutional Vision Transformer.

"A Close Look at Spatial Modeling: From Attention to Convolution" (Ma et al., 2022).

A MetaFormer: overlapping patch embedding, then blocks of pre-norm token mixer + channel mixer with
layer scale. The hierarchical :class:`FCViT` has 4 stages (reductions 4, 8, 16, 32), the isotropic
:class:`IsoFCViT` patchifies once and keeps width and resolution. The token mixer of every stage is
chosen by name from :mod:`fcvit.layers.registry` (default: FCViT's own), so other spatial mixers
run in the same frame.

The key layout differs from the official release (``network.N.M``); :func:`checkpoint_filter_fn`
maps official checkpoints, and a ``load_state_dict`` pre-hook makes ``model.load_state_dict`` and
timm's ``checkpoint_path=`` accept them as released.
"""

import re
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import DropPath, GroupNorm1, LayerScale2d, trunc_normal_
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ..layers import ChannelMixer, MixerSettings, create_token_mixer
from ..layers.checks import check_input
from ._checkpoints import check_tensor_shapes
from ._registry import build_model, imagenet_cfg, new_classifier, register_model, register_paper_figures

torch.fx.wrap("check_input")  # a leaf for torch.fx.symbolic_trace too (it reads the input's shape)
__all__ = ["FCViT", "IsoFCViT", "FCViTBlock", "checkpoint_filter_fn"]


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: conv (stride < kernel) then BatchNorm (stem and downsampling)."""

    def __init__(self, in_chans: int, dim: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, padding=padding)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class FCViTBlock(nn.Module):
    """MetaFormer block, pre-norm with layer scale.

    ``x = x + drop_path(g1 * TokenMixer(N1(x)))``;  ``x = x + drop_path(g2 * ChannelMixer(N2(x)))``.
    """

    def __init__(
        self,
        dim: int,
        token_mixer: str = "fcvit",
        mixer_kwargs: dict[str, Any] | None = None,
        mlp_ratio: float = 4.0,
        mlp_dwconv: bool = True,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.token_mixer = create_token_mixer(token_mixer, dim, **(mixer_kwargs or {}))
        self.ls1 = LayerScale2d(dim, layer_scale_init_value)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = GroupNorm1(dim)
        self.channel_mixer = ChannelMixer(dim, mlp_ratio, dwconv=mlp_dwconv, drop=proj_drop)
        self.ls2 = LayerScale2d(dim, layer_scale_init_value)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.token_mixer(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.channel_mixer(self.norm2(x))))


class FCViTStage(nn.Module):
    """Optional downsampling (3x3 conv, stride 2, then BatchNorm) followed by ``depth`` blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, drop_path_rates: Sequence[float], **kw):
        super().__init__()
        self.downsample = OverlapPatchEmbed(in_dim, dim, 3, 2, 1) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[FCViTBlock(dim, drop_path=dpr, **kw) for dpr in drop_path_rates])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _per_stage(value: Any, num_stages: int, name: str) -> list:
    """Broadcast a single value to every stage, or check a per-stage sequence has the right length."""
    if isinstance(value, (str, dict)) or value is None or not isinstance(value, Sequence):
        return [value] * num_stages
    if len(value) != num_stages:
        raise ValueError(f"{name} has {len(value)} entries, expected one per stage ({num_stages})")
    return list(value)


def _stage_mixer_kwargs(token_mixer: str, extra: dict[str, Any] | None, settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of one stage's token mixer: FCViT's mixer ``settings`` (for FCViT's mixer), then ``extra``."""
    return {**(settings if token_mixer == "fcvit" else {}), **(extra or {})}


def _check_mixer_settings(token_mixers: Sequence[str], settings: dict[str, Any]) -> None:
    """Reject FCViT mixer settings that are misspelt, or that no stage would use (no stage has FCViT's mixer)."""
    MixerSettings.of(settings)
    if settings and "fcvit" not in token_mixers:
        raise TypeError(f"FCViT mixer settings {sorted(settings)} given, but no stage uses FCViT's token mixer")


class _FCViTBase(nn.Module):
    """What the hierarchical and isotropic models share: input check, init, head, checkpoint hooks."""

    num_classes: int
    in_chans: int
    num_features: int

    def _setup_head(self, num_classes: int, drop_rate: float, global_pool: str) -> None:
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.head_hidden_size = self.num_features
        self.norm = GroupNorm1(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def init_weights(self) -> None:
        """Initialise as the official release does; mixers with their own ``init_weights`` get the last word."""
        self.apply(self._init_weights)
        for m in self.modules():
            if m is not self and hasattr(m, "init_weights"):
                m.init_weights()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Check the input and run the stem."""
        return self.stem(check_input(x, self.in_chans, "FCViT"))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        if reset_other:
            self.norm = nn.Identity()
        self.head = new_classifier(self, self.num_features, num_classes)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Spatial mean (if ``global_pool='avg'``), dropout, linear classifier."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def check_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` naming the first tensor of ``state_dict`` (our layout) whose shape does not fit."""
        check_tensor_shapes(state_dict, self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept the official layout as released (timm's checkpoint_path route applies no filter).
        own = {k[len(prefix) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
        own = checkpoint_filter_fn(own, self)
        self.check_checkpoint(own)
        state_dict.update({prefix + k: v for k, v in own.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class FCViT(_FCViTBase):
    """Hierarchical FCViT (4 stages) or any MetaFormer of this frame with other token mixers.

    Args:
        in_chans: input channels.
        num_classes: classes of the linear head (0 for none).
        depths / dims / mlp_ratios: blocks, channels and channel-mixer ratio per stage.
        token_mixers: token-mixer name, or one per stage (see :func:`fcvit.layers.list_token_mixers`).
        mixer_kwargs: extra keyword arguments of the token mixer, one dict or one per stage.
        mlp_dwconv: depth-wise 3x3 conv in the channel mixer.
        drop_rate / proj_drop_rate / drop_path_rate: head dropout, channel-mixer dropout, stochastic depth
            (rising linearly over all blocks from 0).
        layer_scale_init_value: initial layer scale (1e-5; 1e-6 in the dense-prediction backbone).
        feature_norms: give each stage output its own GroupNorm(1) in ``forward_intermediates``, as the
            official dense-prediction backbone does (set by ``features_only=True``).
        **mixer_settings: FCViT token-mixer ablations (paper section 4.3) for the stages with FCViT's mixer:
            ``kernel_size``, ``mixer_rounds``, ``global_context``, ``competitive``, ``gc_groups``, ``gc_reduction``
            (:class:`~fcvit.layers.MixerSettings`).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        mlp_ratios: float | Sequence[float] = (8, 8, 4, 4),
        token_mixers: str | Sequence[str] = "fcvit",
        mixer_kwargs: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        mlp_dwconv: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        feature_norms: bool = False,
        global_pool: str = "avg",
        **mixer_settings: Any,
    ):
        super().__init__()
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise ValueError(f"depths has {num_stages} stages but dims has {len(dims)}")
        mixers = _per_stage(token_mixers, num_stages, "token_mixers")
        extras = _per_stage(mixer_kwargs, num_stages, "mixer_kwargs")
        ratios = _per_stage(mlp_ratios, num_stages, "mlp_ratios")
        _check_mixer_settings(mixers, mixer_settings)
        self.in_chans = in_chans
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.num_features = dims[-1]

        self.stem = OverlapPatchEmbed(in_chans, dims[0], kernel_size=7, stride=4, padding=3)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # numbers, on any device
        stages, self.feature_info, in_dim, first = [], [], dims[0], 0
        for i in range(num_stages):
            kwargs = _stage_mixer_kwargs(mixers[i], extras[i], mixer_settings)
            stages.append(
                FCViTStage(
                    in_dim,
                    dims[i],
                    depths[i],
                    downsample=i > 0,
                    drop_path_rates=dpr[first : first + depths[i]],
                    token_mixer=mixers[i],
                    mixer_kwargs=kwargs,
                    mlp_ratio=ratios[i],
                    mlp_dwconv=mlp_dwconv,
                    proj_drop=proj_drop_rate,
                    layer_scale_init_value=layer_scale_init_value,
                )
            )
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
            in_dim, first = dims[i], first + depths[i]
        self.stages = nn.Sequential(*stages)
        self.feature_norms = nn.ModuleList([GroupNorm1(d) for d in dims]) if feature_norms else None
        self._setup_head(num_classes, drop_rate, global_pool)
        self.init_weights()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def check_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """As the base class, but a checkpoint of another variant is named as such (depths and widths)."""
        arch = _architecture(state_dict)
        if arch is not None and arch != (self.depths, self.dims):
            ckpt_name, model_name = _variant_name(*arch), _variant_name(self.depths, self.dims)
            raise ValueError(
                f"checkpoint is {ckpt_name} (depths {list(arch[0])}, dims {list(arch[1])}) but the model is "
                f"{model_name} (depths {list(self.depths)}, dims {list(self.dims)}): "
                f"create the model that matches the checkpoint"
            )
        super().check_checkpoint(state_dict)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages, final GroupNorm(1): the last feature map [B, C4, H/32, W/32]."""
        return self.norm(self.stages(self.embed(x)))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (through ``feature_norms`` when present) and, unless ``intermediates_only``, the final map.

        ``norm=True`` applies the final norm to the last stage's map when it is taken and has no own norm.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"FCViT intermediates are NCHW maps, output_fmt={output_fmt!r} is not supported")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        y = self.embed(x)
        last = len(self.stages) - 1
        for i, stage in enumerate(stages):
            y = stage(y)
            if i in take_indices:
                if self.feature_norms is not None:
                    out = self.feature_norms[i](y)
                else:
                    out = self.norm(y) if norm and i == last else y
                intermediates.append(out)
        if intermediates_only:
            return intermediates
        return self.norm(y), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last wanted one (and the head / final norm when asked). A kept head is rebuilt
        for the last kept stage's width (fresh weights), so the pruned model still classifies."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if self.feature_norms is not None:
            self.feature_norms = self.feature_norms[: max_index + 1]
        if prune_norm or max_index < len(self.depths) - 1:
            self.norm = nn.Identity()
        if self.num_features != self.dims[max_index]:
            self.num_features = self.head_hidden_size = self.dims[max_index]
            if not prune_head:
                self.reset_classifier(self.num_classes)
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


class IsoFCViT(_FCViTBase):
    """Isotropic FCViT (paper Table 2): 16x16 patchify conv + BatchNorm, then ``depth`` blocks of constant width."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 256,
        depth: int = 12,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        token_mixer: str = "fcvit",
        mixer_kwargs: dict[str, Any] | None = None,
        mlp_dwconv: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-5,
        global_pool: str = "avg",
        **mixer_settings: Any,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.num_features = dim
        self.stem = OverlapPatchEmbed(in_chans, dim, kernel_size=patch_size, stride=patch_size, padding=0)
        _check_mixer_settings([token_mixer], mixer_settings)
        kwargs = _stage_mixer_kwargs(token_mixer, mixer_kwargs, mixer_settings)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # numbers, on any device
        self.blocks = nn.Sequential(
            *[
                FCViTBlock(dim, token_mixer, kwargs, mlp_ratio, mlp_dwconv, proj_drop_rate, p, layer_scale_init_value)
                for p in dpr
            ]
        )
        self.feature_info = [dict(num_chs=dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.grad_checkpointing = False
        self._setup_head(num_classes, drop_rate, global_pool)
        self.init_weights()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        fine = [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]
        return dict(stem=r"^stem", blocks=r"^blocks\.(\d+)" if coarse else fine)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patchify, blocks, final GroupNorm(1): [B, dim, H/16, W/16]."""
        y = self.embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            y = checkpoint_seq(self.blocks, y)
        else:
            y = self.blocks(y)
        return self.norm(y)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs (``norm=True``: through the final norm) and, unless ``intermediates_only``, the final map."""
        if output_fmt != "NCHW":
            raise ValueError(f"IsoFCViT intermediates are NCHW maps, output_fmt={output_fmt!r} is not supported")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        y = self.embed(x)
        for i, block in enumerate(blocks):
            y = block(y)
            if i in take_indices:
                intermediates.append(self.norm(y) if norm else y)
        if intermediates_only:
            return intermediates
        return self.norm(y), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last wanted one (and the head / final norm when asked)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# --- official checkpoints -------------------------------------------------------------------------

_OFFICIAL_BLOCK = re.compile(r"^network\.(\d+)\.(\d+)\.(.*)$")
_OFFICIAL_DOWN = re.compile(r"^network\.(\d+)\.(proj|norm)\.(.*)$")
_OFFICIAL_MIXER = re.compile(r"^token_mixer\.(gc|dw|fc)([12])\.(.*)$")
_OFFICIAL_DENSE_NORM = re.compile(r"^norm([0-3])\.(.*)$")


def _map_official_block_key(rest: str) -> str:
    """Key inside an official block -> ours (``layer_scale_1`` -> ``ls1.gamma``, mixer rounds)."""
    if rest.startswith("layer_scale_"):
        return f"ls{rest[-1]}.gamma"
    m = _OFFICIAL_MIXER.match(rest)
    if m:
        part, idx, tail = m.groups()
        prefix = f"token_mixer.rounds.{int(idx) - 1}"
        if part == "fc":  # nn.Sequential(conv, GELU, conv) -> ConvMlp(fc1, act, fc2)
            tail = tail.replace("0.", "fc1.", 1) if tail.startswith("0.") else tail.replace("2.", "fc2.", 1)
            return f"{prefix}.mlp.{tail}"
        return f"{prefix}.{part}.{tail}"
    return rest


def is_official_state_dict(state_dict: dict[str, Any]) -> bool:
    """True if the keys are in the official release's layout (``patch_embed.*``, ``network.*``)."""
    return any(k.startswith(("patch_embed.", "network.")) for k in state_dict)


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of an official FCViT checkpoint (classification or dense backbone) to ours.

    Official: ``network`` alternates stages and downsamplers: ``network.{2i}`` holds stage i's blocks,
    ``network.{2i-1}`` the downsampling before stage i; the dense backbone adds ``norm0..norm3``.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("patch_embed."):
            k = "stem." + k[len("patch_embed.") :].replace("proj.", "conv.", 1)
        elif m := _OFFICIAL_BLOCK.match(k):
            n, j, rest = m.groups()
            k = f"stages.{int(n) // 2}.blocks.{j}.{_map_official_block_key(rest)}"
        elif m := _OFFICIAL_DOWN.match(k):
            n, part, rest = m.groups()
            k = f"stages.{(int(n) + 1) // 2}.downsample.{'conv' if part == 'proj' else 'norm'}.{rest}"
        elif m := _OFFICIAL_DENSE_NORM.match(k):
            k = f"feature_norms.{m.group(1)}.{m.group(2)}"
        out[k] = v
    return out


def _architecture(state_dict: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(depths, dims) of a hierarchical checkpoint in our layout, or None if it holds no stages."""
    depths: dict[int, int] = {}
    dims: dict[int, int] = {}
    for k, v in state_dict.items():
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.norm1\.weight$", k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depths[i] = max(depths.get(i, 0), j + 1)
            dims[i] = v.shape[0]
    if not depths:
        return None
    stages = range(max(depths) + 1)
    return tuple(depths.get(i, 0) for i in stages), tuple(dims.get(i, 0) for i in stages)


def _variant_name(depths: Sequence[int], dims: Sequence[int]) -> str:
    for name, cfg in MODEL_ARGS.items():
        if tuple(cfg.get("depths", ())) == tuple(depths) and tuple(cfg.get("dims", ())) == tuple(dims):
            return name
    return "a custom FCViT"


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm filter for FCViT weights: official layout -> ours; fresh feature norms where the checkpoint has none.

    Shapes are checked when the weights are loaded (``_load_from_state_dict``), after timm has adapted
    the first conv to ``in_chans`` and dropped a classifier of another class count.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if is_official_state_dict(state_dict):
        state_dict = convert_official_state_dict(state_dict)
    feature_norms = getattr(model, "feature_norms", None)
    if feature_norms is not None and not any(k.startswith("feature_norms.") for k in state_dict):
        # Classification checkpoints have no per-stage output norms: they start fresh (weight 1, bias 0).
        state_dict = {**state_dict, **{f"feature_norms.{k}": v for k, v in feature_norms.state_dict().items()}}
    return state_dict


# --- variants -------------------------------------------------------------------------------------

MODEL_ARGS: dict[str, dict[str, Any]] = {
    "fcvit_tiny": dict(depths=(3, 3, 5, 2), dims=(32, 64, 160, 320)),
    "fcvit_b12": dict(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512)),
    "fcvit_b24": dict(depths=(4, 4, 12, 4), dims=(64, 128, 320, 512)),
    "fcvit_b48": dict(depths=(8, 8, 24, 8), dims=(64, 128, 320, 512)),
    "iso_fcvit_256_12": dict(dim=256, depth=12),
    "iso_fcvit_384_16": dict(dim=384, depth=16),
}

# Figures printed in the paper (Tables 1 and 2): params (M), GFLOPs (counted as MACs), ImageNet top-1.
register_paper_figures(
    {
        "fcvit_tiny": dict(params_m=4.6, gmacs=0.8, top1=74.9),
        "fcvit_b12": dict(params_m=14.0, gmacs=2.5, top1=80.9),
        "fcvit_b24": dict(params_m=25.7, gmacs=4.7, top1=82.5),
        "fcvit_b48": dict(params_m=49.1, gmacs=None, top1=None),
        "iso_fcvit_256_12": dict(params_m=8.2, gmacs=1.4, top1=75.0),
        "iso_fcvit_384_16": dict(params_m=23.2, gmacs=4.0, top1=80.3),
    }
)


def _create(variant: str, cls: type[nn.Module], pretrained: bool = False, **kwargs) -> nn.Module:
    model_args = {**MODEL_ARGS.get(variant, {}), **kwargs}
    if cls is FCViT:
        if kwargs.get("features_only"):
            model_args.setdefault("feature_norms", True)
        feature_cfg = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")
    else:  # the last three blocks, as timm's isotropic models
        feature_cfg = dict(out_indices=3, feature_cls="getter")
    return build_model(
        cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **model_args
    )


def _cfg(paper: str = "fcvit", **kwargs) -> dict[str, Any]:
    own = dict(pool_size=(7, 7), first_conv="stem.conv", classifier="head", license="apache-2.0")
    return imagenet_cfg(paper, **{**own, **kwargs})


default_cfgs = generate_default_cfgs(
    {
        "fcvit_tiny.untrained": _cfg(),
        "fcvit_b12.untrained": _cfg(),
        "fcvit_b24.untrained": _cfg(crop_pct=0.95),
        "fcvit_b48.untrained": _cfg(crop_pct=0.95),
        "iso_fcvit_256_12.untrained": _cfg(pool_size=(14, 14)),
        "iso_fcvit_384_16.untrained": _cfg(pool_size=(14, 14)),
    }
)


@register_model
def fcvit_tiny(pretrained: bool = False, **kwargs) -> FCViT:
    """FCViT-Tiny: depths 3-3-5-2, widths 32-64-160-320 (4.78M params)."""
    return _create("fcvit_tiny", FCViT, pretrained, **kwargs)


@register_model
def fcvit_b12(pretrained: bool = False, **kwargs) -> FCViT:
    """FCViT-B12: depths 2-2-6-2, widths 64-128-320-512 (14.70M params)."""
    return _create("fcvit_b12", FCViT, pretrained, **kwargs)


@register_model
def fcvit_b24(pretrained: bool = False, **kwargs) -> FCViT:
    """FCViT-B24: depths 4-4-12-4, widths 64-128-320-512 (26.96M params)."""
    return _create("fcvit_b24", FCViT, pretrained, **kwargs)


@register_model
def fcvit_b48(pretrained: bool = False, **kwargs) -> FCViT:
    """FCViT-B48: depths 8-8-24-8, widths 64-128-320-512 (51.48M params)."""
    return _create("fcvit_b48", FCViT, pretrained, **kwargs)


@register_model
def iso_fcvit_256_12(pretrained: bool = False, **kwargs) -> IsoFCViT:
    """Isotropic FCViT 256/12: 16x16 patchify, 12 blocks of width 256."""
    return _create("iso_fcvit_256_12", IsoFCViT, pretrained, **kwargs)


@register_model
def iso_fcvit_384_16(pretrained: bool = False, **kwargs) -> IsoFCViT:
    """Isotropic FCViT 384/16: 16x16 patchify, 16 blocks of width 384."""
    return _create("iso_fcvit_384_16", IsoFCViT, pretrained, **kwargs)
