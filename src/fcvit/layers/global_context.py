"""Global context of FCViT (paper section 3.2).

The paper observes that deep-layer attention is nearly the same for every query, so it replaces
attention by one query-irrelevant *global context* per image: the spatial mean ``g`` of the tokens,
squeezed through a (competitive) bottleneck into ``v``. The *dynamic* variant then weights ``v``
per token by how similar the token is to ``g`` (token-global similarity), per channel group.
"""

from __future__ import annotations

import torch
from torch import nn

GLOBAL_CONTEXT_MODES = ("none", "static", "dynamic")


class GlobalContext(nn.Module):
    """Query-irrelevant global context, static or dynamic (multi-group token-global similarity).

    Args:
        dim: channels C.
        mode: ``"static"`` (``v`` broadcast over positions) or ``"dynamic"`` (``v`` weighted per token).
        groups: G channel groups of ``d = C / G`` channels for the similarity (paper: 8).
        competitive: competitive (maxout) bottleneck instead of the plain one.
        reduction: bottleneck reduction (paper: 8).
    """

    def __init__(
        self,
        dim: int,
        mode: str = "dynamic",
        groups: int = 8,
        competitive: bool = True,
        reduction: int = 8,
    ):
        super().__init__()
        if mode not in ("static", "dynamic"):
            raise ValueError(f"GlobalContext mode must be 'static' or 'dynamic', got {mode!r}")
        if dim % groups:
            raise ValueError(f"GlobalContext: {dim} channels do not split into {groups} groups")
        self.mode = mode
        self.groups = groups
        self.competitive = competitive
        self.hidden = dim // reduction
        # Bottleneck v = f(g). Competitive (paper Eq. 10): two squeezed vectors compete by maxout,
        # no activation. Plain: SE-style Linear, GELU, Linear.
        self.fc1 = nn.Linear(dim, 2 * self.hidden if competitive else self.hidden)
        self.act = nn.Identity() if competitive else nn.GELU()
        self.fc2 = nn.Linear(self.hidden, dim)
        if mode == "dynamic":
            self.rescale_weight = nn.Parameter(torch.ones(groups))  # w in Eq. 8
            self.rescale_bias = nn.Parameter(torch.zeros(groups))  # beta in Eq. 8
        self.fast = True

    def bottleneck(self, g: torch.Tensor) -> torch.Tensor:
        """``v = f(g)`` for the pooled tokens ``g`` of shape [B, C]."""
        h = self.fc1(g)
        if self.competitive:
            h = h.view(g.shape[0], 2, self.hidden).amax(dim=1)
        return self.fc2(self.act(h))

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised, rescaled token-global similarity ``s`` of shape [B, G, H*W] (paper Eq. 8)."""
        B, C, H, W = x.shape
        d = C // self.groups
        g = x.mean(dim=(2, 3))
        tokens = x.reshape(B, self.groups, d, H * W)
        # s[b, h, n] = d^-1/2 * sum_j x[b, h*d+j, n] * g[b, h*d+j]
        s = torch.einsum("bgdn,bgd->bgn", tokens, g.view(B, self.groups, d)) * d**-0.5
        return self._standardise(s, group_dim=1)

    def _standardise(self, s: torch.Tensor, group_dim: int) -> torch.Tensor:
        """Standardise ``s`` per sample over groups and positions together (unbiased std, as torch.std), then
        rescale per group (``w``, ``beta`` of Eq. 8); ``group_dim`` is where the groups are in ``s``."""
        flat = s.reshape(s.shape[0], -1)
        # Two passes (mean, then centred squares): several times faster than torch.std_mean's Welford
        # reduction on these [B, G*HW] rows, and the centred values are reused.
        centred = flat - flat.mean(dim=1, keepdim=True)
        std = centred.square().sum(dim=1, keepdim=True).div(flat.shape[1] - 1).sqrt()
        s = (centred / (std + 1e-5)).view_as(s)
        shape = [1, 1, 1]
        shape[group_dim] = self.groups
        return s * self.rescale_weight.view(shape) + self.rescale_bias.view(shape)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """``GC(x)`` of shape [B, C, H, W], computed as the equations read (the plain path)."""
        B, C, H, W = x.shape
        v = self.bottleneck(x.mean(dim=(2, 3)))
        if self.mode == "static":
            return v.view(B, C, 1, 1).expand(B, C, H, W)
        s = self.similarity(x)
        # out[b, h*d+j, n] = s[b, h, n] * v[b, h*d+j]
        out = s.unsqueeze(2) * v.view(B, self.groups, C // self.groups, 1)
        return out.reshape(B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + GC(x)``: the tokens with the global context added (first line of paper Eq. 5).

        ``fast`` (default): the dynamic context as two batched matrix products that read the tokens in
        place, in either memory format (:meth:`_add_dynamic`); otherwise ``x + context(x)``.
        """
        if not self.fast:
            return x + self.context(x)
        if self.mode == "static":
            B, C = x.shape[:2]
            return x + self.bottleneck(x.mean(dim=(2, 3))).view(B, C, 1, 1)
        return self._add_dynamic(x)

    def _add_dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """``x + s * v`` with the similarity and the weighting each one ``bmm`` over the token matrix.

        The tokens are seen without a copy as [B, HW, C] (channels_last) or [B, C, HW] (NCHW). Per-group
        dot products and outer products become products with block-diagonal [G, C] matrices (``g`` or
        ``v`` on the diagonal blocks), so that autograd's backward is made of ``bmm`` too, instead of
        full-size temporaries and reductions.
        """
        B, C, H, W = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        # The mean is taken over the token view, so its gradient comes back in x's memory format.
        tokens = x.permute(0, 2, 3, 1).reshape(B, H * W, C) if channels_last else x.reshape(B, C, H * W)
        g = tokens.mean(dim=1 if channels_last else 2)
        v = self.bottleneck(g)
        d = C // self.groups
        eye = torch.eye(self.groups, dtype=x.dtype, device=x.device).view(1, self.groups, self.groups, 1)
        g_blocks = (g.view(B, 1, self.groups, d) * eye).reshape(B, self.groups, C) * d**-0.5
        v_blocks = (v.view(B, 1, self.groups, d) * eye).reshape(B, self.groups, C)
        if channels_last:
            s = self._standardise(torch.bmm(tokens, g_blocks.transpose(1, 2)), group_dim=2)  # [B, HW, G]
            return _add_product(tokens, s, v_blocks).view(B, H, W, C).permute(0, 3, 1, 2)
        s = self._standardise(torch.bmm(g_blocks, tokens), group_dim=1)  # [B, G, HW]
        return _add_product(tokens, v_blocks.transpose(1, 2), s).view(B, C, H, W)


def _add_product(tokens: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``tokens + a @ b`` in one pass; under autocast as a separate add, so the sum keeps the tokens' dtype."""
    if torch.is_autocast_enabled(tokens.device.type):
        return tokens + torch.bmm(a, b)
    return torch.baddbmm(tokens, a, b)
