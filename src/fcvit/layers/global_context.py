"""Global context of FCViT (paper section 3.2).

The paper observes that deep-layer attention is nearly the same for every query, so it replaces
attention by one query-irrelevant *global context* per image: the spatial mean ``g`` of the tokens,
squeezed through a (competitive) bottleneck into ``v``. The *dynamic* variant then weights ``v``
per token by how similar the token is to ``g`` (token-global similarity), per channel group.
"""

import torch
from torch import nn

GLOBAL_CONTEXT_MODES = ("static", "dynamic")
EPS = 1e-5  # added to the std when the similarity is standardised


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
        if mode not in GLOBAL_CONTEXT_MODES:
            raise ValueError(f"GlobalContext mode must be one of {GLOBAL_CONTEXT_MODES}, got {mode!r}")
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
        self.eps = EPS

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
        # standardised per sample over groups and positions together (unbiased std), then rescaled per group
        flat = s.reshape(B, self.groups * H * W)
        flat = (flat - flat.mean(dim=1, keepdim=True)) / (flat.std(dim=1, keepdim=True) + self.eps)
        return flat.view_as(s) * self.rescale_weight.view(1, -1, 1) + self.rescale_bias.view(1, -1, 1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """``GC(x)`` of shape [B, C, H, W]."""
        B, C, H, W = x.shape
        v = self.bottleneck(x.mean(dim=(2, 3)))
        if self.mode == "static":
            return v.view(B, C, 1, 1).expand(B, C, H, W)
        s = self.similarity(x)
        # out[b, h*d+j, n] = s[b, h, n] * v[b, h*d+j]
        out = s.unsqueeze(2) * v.view(B, self.groups, C // self.groups, 1)
        return out.reshape(B, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + GC(x)``: the tokens with the global context added (first line of paper Eq. 5)."""
        return x + self.context(x)
