"""Self-attention read as dynamic convolution, with the design changes the reading suggests.

"Interpret Vision Transformers as ConvNets with Dynamic Convolutions" (Zhou et al., 2023) sees the
query-key product as a 1x1 convolution whose kernels (the keys) are generated from the input and
*selected* per query from a kernel bank: all tokens (ViT, *global* selection) or a local window
(Swin, *window* selection). Two studies follow, both token mixers here:

* :class:`Attention2d`: the scaled-softmax between the two dynamic convolutions replaced by other
  activations (paper section 4.2): ``softmax``; ``none``; ``scaling`` (the scaled logits divided by the
  number of selected keys); ``scaling_relu``; ``ln`` (LayerNorm over the key axis); ``ln_relu``.
* :class:`DepthwiseAttention2d`: depth-wise self-attention (section 4.3): no value bank; the selected
  keys are averaged into one kernel and multiplied element-wise with the query.

Window selection here is a sliding neighbourhood: query i selects the keys of the ``window x window``
square centred on it that lie inside the map (keys outside are masked, not padded). So a window of
``2 * max(H, W) - 1`` selects every token and equals global selection.

Position embedding: ``"rel"`` (a learnable bias per head and relative offset, Swin's table; offsets
beyond the table are clipped), ``"abs"`` (a learnable map added to the mixer's input, resized bicubically
for other map sizes) or ``"none"``. The frame has no model-level hook for an embedding, so the absolute
one lives in each mixer; it costs ``C * H * W`` parameters per block.

Every mixer passes its [B, heads, N, M] weights through ``self.attn_drop`` (M = N for global selection,
``window ** 2`` for window selection, masked entries zero), so timm's
``AttentionExtract(model, method="hook")`` captures them as it does for timm's ``Attention``.
Hand-written: timm's attention modules offer neither the activations nor masked sliding windows.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_
from torch import nn

from .checks import check_input
from .registry import register_token_mixer

torch.fx.wrap("check_input")  # a leaf for torch.fx.symbolic_trace too (it reads the input's shape)
ATTENTION_ACTIVATIONS = ("softmax", "none", "scaling", "scaling_relu", "ln", "ln_relu")
POSITION_EMBEDDINGS = ("rel", "abs", "none")


@torch.jit.ignore
def check_activation(activation: str, owner: str = "attention") -> None:
    """Raise a ValueError naming ``activation`` unless it is one of :data:`ATTENTION_ACTIVATIONS`."""
    if activation not in ATTENTION_ACTIVATIONS:
        raise ValueError(f"{owner}: unknown activation {activation!r}; choose from {ATTENTION_ACTIVATIONS}")


def attention_activation(
    logits: torch.Tensor, activation: str, valid: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """Activation over the key axis (last) of ``logits`` [..., N, M]; ``valid`` (broadcast to [..., N, M]) marks the
    selected keys.

    Unselected keys get weight 0 and do not count in the normalisation (number of keys, LayerNorm statistics).
    ``scaling`` divides by the number of selected keys M (the paper's "number of channels" of the activation's
    input, whose channels are the keys); ``ln`` is LayerNorm over the selected keys without affine (M varies
    with the map size and the window's position). TorchScript-compatible, so the models that call it script.
    """
    if not torch.jit.is_scripting():  # a scripted module checked its activation when it was built
        check_activation(activation)
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf") if activation == "softmax" else 0.0)
    if activation == "softmax":
        return logits.softmax(dim=-1)
    if activation == "none":
        return logits
    if valid is None:
        num_keys = torch.full_like(logits[..., :1], float(logits.shape[-1]))
    else:
        num_keys = valid.sum(-1, keepdim=True).to(logits.dtype)
    if activation.startswith("scaling"):
        out = logits / num_keys
    else:
        centred = logits - logits.sum(-1, keepdim=True) / num_keys
        if valid is not None:
            centred = centred.masked_fill(~valid, 0.0)
        out = centred * torch.rsqrt(centred.pow(2).sum(-1, keepdim=True) / num_keys + eps)
    return out.relu() if activation.endswith("_relu") else out


def depthwise_attention(
    q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor | None = None, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Depth-wise self-attention (Eq. 5) on dense keys: ``o_i = q_i * mean_{j in S_i} k_j + sum_{j in S_i} p_ij k_j``.

    ``q``, ``k``: per-head queries and keys [..., N, d]; ``weights``: the relative position weights ``p``
    [..., N, N] (None: no position term); ``valid`` (broadcast to [..., N, N]): the keys ``S_i`` each query
    selects (None: all of them; Swin's shifted windows select the keys of the query's own region). Shared by
    :class:`DepthwiseAttention2d` (global selection) and the hosts of :mod:`fcvit.models.dynconv`.
    """
    if valid is None:
        out = q * k.mean(dim=-2, keepdim=True)
    else:
        selected = valid.to(q.dtype)
        out = q * ((selected / selected.sum(-1, keepdim=True)) @ k)
        if weights is not None:
            weights = weights.masked_fill(~valid, 0.0)
    if weights is not None:
        out = out + weights @ k
    return out


def window_dot(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Logits of queries [B, h, d, N] with their window keys [B, h, d, M, N]: [B, h, N, M].

    Element-wise product and sum: on CPU several times faster than an einsum, which copies the windows.
    """
    return (q.unsqueeze(3) * keys).sum(2).transpose(-1, -2)


def window_sum(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of window values [B, h, d, M, N] with weights [B, h, N, M]: [B, h, d, N]."""
    return (weights.transpose(-1, -2).unsqueeze(2) * values).sum(3)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class RelativePositionBias(nn.Module):
    """Learnable bias ``p[h, dy, dx]`` per head and offset (query minus key); offsets beyond ``max_offset`` clip."""

    def __init__(self, num_heads: int, max_offset: tuple[int, int]):
        super().__init__()
        self.max_offset = max_offset
        rows, cols = 2 * max_offset[0] + 1, 2 * max_offset[1] + 1
        self.table = nn.Parameter(torch.zeros(num_heads, rows * cols))
        trunc_normal_(self.table, std=0.02)

    def forward(self, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """Bias [heads, *dy.shape] for integer offset grids ``dy``, ``dx``."""
        rh, rw = self.max_offset
        index = (dy.clamp(-rh, rh) + rh) * (2 * rw + 1) + dx.clamp(-rw, rw) + rw
        return self.table[:, index]


class AbsolutePositionEmbedding(nn.Module):
    """Learnable map [1, C, H, W] added to the input; bicubically resized for other map sizes."""

    def __init__(self, dim: int, size: tuple[int, int]):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, dim, *size))
        trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        return x + pos


class _KernelSelection(nn.Module):
    """What both attention mixers share: heads, kernel selection (global / window), position embedding, output."""

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        head_dim: int = 32,
        window: int | None = None,
        pos_embed: str = "rel",
        pos_size: int | tuple[int, int] = 14,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        name = type(self).__name__
        heads = num_heads or max(dim // head_dim, 1)
        if dim % heads:
            raise ValueError(f"{name}: {dim} channels do not split into {heads} heads")
        if window is not None and (window < 1 or window % 2 == 0):
            raise ValueError(f"{name}: window must be a positive odd number or None (global), got {window}")
        if pos_embed not in POSITION_EMBEDDINGS:
            raise ValueError(f"{name}: pos_embed must be one of {POSITION_EMBEDDINGS}, got {pos_embed!r}")
        self.num_heads, self.head_dim, self.window = heads, dim // heads, window
        size = _pair(pos_size)
        self.abs_pos = AbsolutePositionEmbedding(dim, size) if pos_embed == "abs" else None
        max_offset = (window // 2, window // 2) if window else (size[0] - 1, size[1] - 1)
        self.rel_pos = RelativePositionBias(heads, max_offset) if pos_embed == "rel" else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] map (plus absolute position) -> [B, N, C] tokens."""
        x = check_input(x, self.proj.in_features, "attention mixer")
        if self.abs_pos is not None:
            x = self.abs_pos(x)
        return x.flatten(2).transpose(1, 2)

    def heads(self, t: torch.Tensor, parts: int) -> list[torch.Tensor]:
        """Projected tokens [B, N, parts * C] -> ``parts`` tensors [B, heads, N, head_dim]."""
        B, N, _ = t.shape
        return t.reshape(B, N, parts, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def select(self, t: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Window selection: per-head tokens [B, h, N, d] -> the windows [B, h, d, window^2, N], zero off the map."""
        B, h, N, d = t.shape
        cols = F.unfold(t.transpose(-1, -2).reshape(B, h * d, H, W), self.window, padding=self.window // 2)
        return cols.view(B, h, d, self.window * self.window, N)

    def valid_keys(self, H: int, W: int, device: torch.device) -> torch.Tensor:
        """[N, window^2] mask of the window keys that lie inside the H x W map."""
        ones = torch.ones(1, 1, H, W, device=device)
        return F.unfold(ones, self.window, padding=self.window // 2)[0].t() > 0

    def position_bias(self, H: int, W: int, device: torch.device) -> torch.Tensor | None:
        """Relative position bias [heads, N, N] (global) or [heads, 1, window^2] (window), None without one."""
        if self.rel_pos is None:
            return None
        if self.window is None:
            ys, xs = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            return self.rel_pos(ys[:, None] - ys[None], xs[:, None] - xs[None])
        # window position m = (a, b) holds the key at offset (a - r, b - r) from the query
        r = self.window // 2
        offsets = torch.arange(self.window, device=device) - r
        dy = -offsets.view(-1, 1).expand(self.window, self.window).reshape(1, -1)
        dx = -offsets.view(1, -1).expand(self.window, self.window).reshape(1, -1)
        return self.rel_pos(dy, dx)

    def output(self, out: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Per-head outputs [B, h, N, d] -> output projection -> [B, C, H, W]."""
        B, h, _, d = out.shape
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, H * W, h * d)))
        return out.transpose(1, 2).reshape(B, out.shape[-1], H, W)


@register_notrace_module  # shapes drive its windows and heads: a leaf for FX tracing
class Attention2d(_KernelSelection):
    """Multi-head self-attention on a map, with softmax or one of its replacements (paper Table 2).

    ``o_i = act(q_i k_S^T / sqrt(d) + p_i) v_S`` where ``S`` are the keys query i selects and ``p`` the
    relative position bias.

    Args:
        dim: channels.
        activation: one of :data:`ATTENTION_ACTIVATIONS`.
        num_heads: heads (default ``dim // head_dim``).
        head_dim: channels per head when ``num_heads`` is not given.
        window: odd side of the sliding selection window, or None for global selection.
        pos_embed: ``"rel"``, ``"abs"`` or ``"none"``.
        pos_size: map size the position embedding is made for (global relative table, absolute map).
        qkv_bias: bias of the q/k/v projection.
        attn_drop / proj_drop: dropout on the attention weights / the output.
    """

    def __init__(self, dim: int, activation: str = "softmax", qkv_bias: bool = True, **kwargs):
        super().__init__(dim, **kwargs)
        check_activation(activation, "Attention2d")
        self.activation = activation
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        q, k, v = self.heads(self.qkv(self.tokens(x)), 3)
        q = q * self.scale
        valid = None
        if self.window is None:
            logits = q @ k.transpose(-2, -1)
        else:
            k, v, valid = self.select(k, H, W), self.select(v, H, W), self.valid_keys(H, W, x.device)
            logits = window_dot(q.transpose(-1, -2), k)
        bias = self.position_bias(H, W, x.device)
        if bias is not None:
            logits = logits + bias
        attn = self.attn_drop(attention_activation(logits, self.activation, valid))
        out = attn @ v if self.window is None else window_sum(attn, v).transpose(-1, -2)
        return self.output(out, H, W)


@register_notrace_module  # shapes drive its windows and heads: a leaf for FX tracing
class DepthwiseAttention2d(_KernelSelection):
    """Depth-wise self-attention (paper section 4.3, Eq. 5): ``o_i = q_i * mean_{j in S} k_j + sum_{j in S} p_ij k_j``.

    No value projection: the selected keys are averaged into one kernel ``k_bar`` that multiplies the query
    element-wise, as a depth-wise convolution does; the relative position term (``pos_embed="rel"``) is the
    only per-query mixing weight and is what ``self.attn_drop`` sees ([B, heads, N, M]); with ``"abs"`` or
    ``"none"`` there are no such weights and nothing passes ``attn_drop``.

    Args: as :class:`Attention2d` without ``activation`` (``qkv_bias`` is the bias of the q/k projection).
    """

    def __init__(self, dim: int, qkv_bias: bool = True, **kwargs):
        super().__init__(dim, **kwargs)
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        H, W = x.shape[-2:]
        q, k = self.heads(self.qk(self.tokens(x)), 2)
        bias = self.position_bias(H, W, x.device)
        if self.window is None:
            p = None if bias is None else self.attn_drop(bias.expand(B, -1, -1, -1))
            return self.output(depthwise_attention(q, k, p), H, W)
        k, valid = self.select(k, H, W), self.valid_keys(H, W, x.device)
        out = q * (k.sum(dim=3) / valid.sum(-1)).transpose(-1, -2)  # keys outside the map are zero
        if bias is not None:
            p = self.attn_drop(bias.expand(B, -1, H * W, -1).masked_fill(~valid, 0.0))
            out = out + window_sum(p, k).transpose(-1, -2)
        return self.output(out, H, W)


for _activation in ATTENTION_ACTIVATIONS:
    register_token_mixer(f"attn_{_activation}")(partial(Attention2d, activation=_activation))
register_token_mixer("dwattn")(DepthwiseAttention2d)
