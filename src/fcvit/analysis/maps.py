"""Getting the maps to analyse out of a model: attention weights and FCViT's token-global similarity.

Attention comes from timm's :class:`~timm.utils.AttentionExtract` (forward hooks on every
``*attn_drop`` module, which timm's ``Attention`` and this project's attention mixers apply to the
softmax weights [B, heads, N, M]). FCViT has no attention: its analogue is the standardised, rescaled
similarity ``s`` [B, G, H*W] of each token to the global context (paper Eq. 8), read by
:meth:`GlobalContext.similarity` on the input captured by a forward pre-hook, so the model is untouched.
"""

from __future__ import annotations

import fnmatch
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layers import GlobalContext

ATTENTION_PATTERN = "*attn_drop"

SIMILARITY_NORMALISATION = (
    "each group's similarity s over the H*W positions is made a distribution by a softmax over positions "
    "(the attention a query-irrelevant attention with logits s would give); groups take the place of heads, "
    "with a single query row since the map is the same for every query by construction, so "
    "query_irrelevance is undefined (null) and head_irrelevance compares groups"
)


def disable_fused_attention(model: nn.Module) -> None:
    """Switch every module with a ``fused_attn`` flag to the explicit softmax path.

    Fused ``scaled_dot_product_attention`` never materialises the weights, so ``attn_drop`` would not
    see them. Setting the flag per module (rather than ``timm.layers.set_fused_attn(False)`` before
    creation) works on any timm 1.0.x and leaves the process-wide default alone.
    """
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def input_config(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """timm's eval data config of ``model``; the input size follows ``img_size`` or the model's patch embed."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=model)
    size = (img_size, img_size) if img_size else getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size:
        cfg["input_size"] = (cfg["input_size"][0], *size)
    return cfg


def token_grid(num_tokens: int, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) grid of ``num_tokens`` patches whose aspect is closest to the image's.

    Raises ``ValueError`` when no factorisation comes within a factor 1.5 of the image aspect (a
    sequence that is not a patch grid of this image, e.g. window attention).
    """
    aspect = image_hw[0] / image_hw[1]
    pairs = [(h, num_tokens // h) for h in range(1, num_tokens + 1) if num_tokens % h == 0]
    h, w = min(pairs, key=lambda p: abs(math.log(p[0] / p[1] / aspect)))
    if abs(math.log(h / w / aspect)) > math.log(1.5):
        raise ValueError(
            f"{num_tokens} tokens do not form a patch grid of an image of size {image_hw[0]}x{image_hw[1]}"
        )
    return h, w


def attention_layer_names(model: nn.Module) -> list[str]:
    """Names of the attention modules whose ``attn_drop`` timm's ``AttentionExtract`` hooks, in model order."""
    return [n[: -len(".attn_drop")] for n, _ in model.named_modules() if fnmatch.fnmatch(n, ATTENTION_PATTERN)]


def is_window_attention(module: nn.Module) -> bool:
    """True for attention whose keys are a window around each query rather than the whole image.

    Recognised by a set ``window`` (this project's mixers), ``window_size`` (timm's Swin), ``kernel_size`` or
    ``kernel_att`` (ACmix, whose reflection-padded windows repeat border tokens and are not drawn over the image).
    """
    return any(getattr(module, a, None) is not None for a in ("window", "window_size", "kernel_size", "kernel_att"))


@dataclass
class AttentionLayout:
    """Where the queries and keys of an attention map lie on the image's patch grid.

    ``window`` is set for this project's sliding-window attention, whose key ``m = (a, b)`` of query
    ``(y, x)`` is the token ``(y + a - r, x + b - r)`` with ``r = window // 2``; otherwise the keys form
    ``key_grid`` (which may be coarser than the queries, e.g. spatial-reduction attention).
    """

    query_grid: tuple[int, int]
    key_grid: tuple[int, int]
    window: int | None = None

    def maps(self, attn: torch.Tensor, queries: list[tuple[int, int]]) -> torch.Tensor:
        """The attention of each query (row, col) over the key grid: [heads, N, M] -> [Q, heads, *key_grid]."""
        rows = attn[:, [r * self.query_grid[1] + c for r, c in queries]].transpose(0, 1)  # [Q, heads, M]
        if self.window is None:
            return rows.reshape(*rows.shape[:2], *self.key_grid)
        w, r = self.window, self.window // 2
        (gh, gw), Q, H = self.query_grid, len(queries), attn.shape[0]
        out = rows.new_zeros(Q, H, gh + 2 * r, gw + 2 * r)
        for q, (y, x) in enumerate(queries):
            out[q, :, y : y + w, x : x + w] = rows[q].view(H, w, w)
        return out[..., r : r + gh, r : r + gw]


def attention_layout(module: nn.Module, attn: torch.Tensor, batch: int, image_hw: tuple[int, int]) -> AttentionLayout:
    """The layout over the image of ``attn`` [B, heads, N, M] from ``module``, prefix tokens already dropped.

    Raises ``ValueError`` for maps that cannot be placed on the image (timm's Swin-style windows, whose
    batch axis holds the windows, or keys that form no patch grid).
    """
    name = type(module).__name__
    window = getattr(module, "window", None)
    if attn.shape[0] != batch or (is_window_attention(module) and not isinstance(window, int)):
        raise ValueError(
            f"{name} attention maps {list(attn.shape)} for {batch} images hold windows of the image: "
            f"they cannot be drawn over the image (their statistics still apply)"
        )
    query_grid = token_grid(attn.shape[2], image_hw)
    if isinstance(window, int):
        if attn.shape[3] != window**2:
            raise ValueError(
                f"{name}: maps {list(attn.shape)} do not hold a {window}x{window} window of keys per query"
            )
        return AttentionLayout(query_grid, query_grid, window)
    return AttentionLayout(query_grid, token_grid(attn.shape[3], image_hw))


@dataclass
class SimilaritySite:
    """One FCViT block's global context: where its token-global similarity is read."""

    name: str
    block_index: int
    gc: nn.Module


def fcvit_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """FCViT blocks in forward order, flattened over stages: "block K" is the K-th entry."""
    from ..models import FCViTBlock

    return [(n, m) for n, m in model.named_modules() if isinstance(m, FCViTBlock)]


def _site(name: str, block: nn.Module, index: int, round_index: int) -> tuple[SimilaritySite | None, str]:
    """The site of one block, or None and why it has none; a round out of range raises ``ValueError``."""
    rounds = getattr(block.token_mixer, "rounds", None)
    if rounds is None:
        return None, f"block {index} ({name}) has a {type(block.token_mixer).__name__} token mixer, not FCViT's"
    if not -len(rounds) <= round_index < len(rounds):
        raise ValueError(f"round {round_index} is out of range: block {index} ({name}) has {len(rounds)} mixing rounds")
    r = round_index % len(rounds)
    gc = rounds[r].gc
    if not isinstance(gc, GlobalContext) or gc.mode != "dynamic":
        mode = gc.mode if isinstance(gc, GlobalContext) else "none"
        return None, f"block {index} ({name}) has global context {mode!r}: no token-global similarity to show"
    return SimilaritySite(f"{name}.token_mixer.rounds.{r}.gc", index, gc), ""


def similarity_site(model: nn.Module, block: int = -1, round_index: int = -1) -> SimilaritySite:
    """The dynamic global context of block ``block`` (flattened over stages), mixing round ``round_index``."""
    blocks = fcvit_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no FCViT blocks: token-global similarity needs an fcvit_* model")
    if not -len(blocks) <= block < len(blocks):
        raise ValueError(f"block {block} is out of range: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    index = block % len(blocks)
    site, why = _site(*blocks[index], index, round_index)
    if site is None:
        raise ValueError(why)
    return site


def similarity_sites(model: nn.Module, round_index: int = -1) -> list[SimilaritySite]:
    """Every block with a dynamic global context (blocks with other token mixers or none are left out)."""
    sites = (_site(name, block, k, round_index)[0] for k, (name, block) in enumerate(fcvit_blocks(model)))
    return [site for site in sites if site is not None]


def similarity_rows(s: torch.Tensor) -> torch.Tensor:
    """Group maps ``s`` [B, G, H, W] as attention-like rows [B, G, 1, H*W] (see SIMILARITY_NORMALISATION)."""
    return s.flatten(2).softmax(dim=-1).unsqueeze(2)


class MapProbe:
    """Reads attention maps and/or token-global similarity maps of a model in one forward pass.

    Call it with an image batch; it returns an ordered dict ``layer name -> map`` in forward order:
    attention [B, heads, N, M] for attention layers, similarity ``s`` [B, G, H, W] for FCViT blocks.

    Args:
        model: the model (put in eval mode).
        attention: attention layer names to read (see :func:`attention_layer_names`); ``None``: all of them.
        sites: FCViT global contexts to read the similarity of (see :func:`similarity_sites`).
    """

    def __init__(self, model: nn.Module, attention: list[str] | None = None, sites: list[SimilaritySite] | None = None):
        from timm.utils import AttentionExtract

        self.model = model.eval()
        self.attention_names = attention_layer_names(model) if attention is None else list(attention)
        self.sites = list(sites or [])
        if not self.attention_names and not self.sites:
            raise ValueError(
                f"{type(model).__name__} has no attention maps (no module matching {ATTENTION_PATTERN!r}) "
                f"and no FCViT token-global similarity: nothing to analyse"
            )
        self.extractor = (
            AttentionExtract(model, names=[f"{n}.attn_drop" for n in self.attention_names], method="hook")
            if self.attention_names
            else None
        )
        self._inputs: dict[str, torch.Tensor] = {}
        for site in self.sites:
            site.gc.register_forward_pre_hook(self._capture(site.name))
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        self.names = sorted(self.attention_names + [s.name for s in self.sites], key=order.__getitem__)

    def _capture(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self._inputs[name] = args[0]

        return hook

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        self._inputs.clear()
        if self.extractor is not None:
            attn = self.extractor(x)
        else:
            self.model(x)
            attn = {}
        maps: dict[str, torch.Tensor] = {k[: -len(".attn_drop")]: v for k, v in attn.items()}
        missing = [n for n in self.attention_names if n not in maps]
        if missing:
            raise ValueError(
                f"no attention weights reached {missing[0]}.attn_drop ({len(missing)} layer(s) in all): "
                f"the module computes its output without passing weights through attn_drop (fused attention?)"
            )
        for site in self.sites:
            inp = self._inputs[site.name]
            s = site.gc.similarity(inp)
            maps[site.name] = s.view(*s.shape[:2], *inp.shape[-2:])
        return OrderedDict((n, maps[n]) for n in self.names)
