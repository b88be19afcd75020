"""FCViT's global context made faster, with the same results: the dynamic context as batched matrix products
over the tokens in place (any device, training too), with a written-out backward for channels_last tokens."""

import torch
from timm.layers import register_notrace_module

from ..layers.global_context import EPS, GlobalContext


@register_notrace_module  # it looks at memory formats: a leaf for FX tracing
class FastGlobalContext(GlobalContext):
    """:class:`~fcvit.layers.GlobalContext` computing ``x + GC(x)`` without the full-size temporaries of the
    equations: the static context as one broadcast add, the dynamic one as :meth:`_add_dynamic`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "static":
            B, C = x.shape[:2]
            return x + self.bottleneck(x.mean(dim=(2, 3))).view(B, C, 1, 1)
        return self._add_dynamic(x)

    def _add_dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """``x + s * v`` with the similarity and the weighting each one ``bmm`` over the token matrix.

        The tokens are seen without a copy as [B, HW, C] (channels_last) or [B, C, HW] (NCHW). Per-group
        dot products and outer products become products with block-diagonal [G, C] matrices (``g`` or
        ``v`` on the diagonal blocks), so that the backward is made of ``bmm`` too, instead of full-size
        temporaries and reductions. For channels_last tokens outside autocast the backward is written out
        (:class:`DynamicContextFunction`): fewer passes over the tokens than autograd's, 1.2-1.3x faster
        forward + backward per call at fcvit_tiny's 64 px shapes.
        """
        B, C, H, W = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        # The mean is taken over the token view, so its gradient comes back in x's memory format.
        tokens = x.permute(0, 2, 3, 1).reshape(B, H * W, C) if channels_last else x.reshape(B, C, H * W)
        g = tokens.mean(dim=1 if channels_last else 2)
        v = self.bottleneck(g)
        params = (self.rescale_weight, self.rescale_bias, self.groups)
        if channels_last:
            if torch.is_autocast_enabled(x.device.type):  # autograd's backward keeps autocast's dtypes
                _, v_blocks, _, _, scaled = _context_terms(tokens, g, v, *params)
                out = _add_product(tokens, scaled, v_blocks)
            else:
                out = DynamicContextFunction.apply(tokens, g, v, *params)
            return out.view(B, H, W, C).permute(0, 3, 1, 2)
        g_blocks = _block_diagonal(g, self.groups, (C // self.groups) ** -0.5)
        v_blocks = _block_diagonal(v, self.groups)
        rows = torch.bmm(g_blocks, tokens).view(B, self.groups * H * W)
        s = _standardise_rows(rows)[0].view(B, self.groups, H * W)  # [B, G, HW]
        s = s * self.rescale_weight.view(1, -1, 1) + self.rescale_bias.view(1, -1, 1)
        return _add_product(tokens, v_blocks.transpose(1, 2), s).view(B, C, H, W)


def _add_product(tokens: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``tokens + a @ b`` in one pass; under autocast as a separate add, so the sum keeps the tokens' dtype."""
    if torch.is_autocast_enabled(tokens.device.type):
        return tokens + torch.bmm(a, b)
    return torch.baddbmm(tokens, a, b)


def _standardise_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows - mean) / (std + EPS)`` per row, with the rows' unbiased std (as torch.std), and that std.

    Two passes (mean, then centred squares): several times faster than torch.std_mean's Welford reduction on
    these [B, G*HW] rows.
    """
    centred = rows - rows.mean(dim=1, keepdim=True)
    std = centred.square().sum(dim=1, keepdim=True).div(rows.shape[1] - 1).sqrt()
    return centred / (std + EPS), std


def _block_diagonal(u: torch.Tensor, groups: int, scale: float = 1.0) -> torch.Tensor:
    """[B, C] -> [B, G, C]: row h holds ``scale * u``'s group h of channels, zeros elsewhere."""
    B, C = u.shape
    eye = torch.eye(groups, dtype=u.dtype, device=u.device).mul_(scale).view(1, groups, groups, 1)
    return (u.view(B, 1, groups, C // groups) * eye).reshape(B, groups, C)


def _diagonal_blocks(m: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, G, C] -> [B, C]: row h's own group of channels, for every h (the inverse of :func:`_block_diagonal`)."""
    B, _, C = m.shape
    return m.view(B, groups, groups, C // groups).diagonal(dim1=1, dim2=2).transpose(1, 2).reshape(B, C)


def _context_terms(
    tokens: torch.Tensor, g: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int
) -> tuple[torch.Tensor, ...]:
    """The pieces of the dynamic context for tokens [B, N, C]: block-diagonal ``g / sqrt(d)`` and ``v`` [B, G, C],
    the standardised similarity ``s`` [B, N, G] with its per-sample std [B, 1], and ``S = s * w + beta``."""
    B, N, C = tokens.shape
    g_blocks = _block_diagonal(g, groups, (C // groups) ** -0.5)
    v_blocks = _block_diagonal(v, groups)
    s, std = _standardise_rows(torch.bmm(tokens, g_blocks.transpose(1, 2)).view(B, N * groups))
    s = s.view(B, N, groups)
    return g_blocks, v_blocks, s, std, s * weight + bias


class DynamicContextFunction(torch.autograd.Function):
    """``T + S @ V``: the dynamic context added to the tokens T [B, N, C], with its backward written out.

    Forward, as :meth:`GlobalContext._add_dynamic` computes it: ``r = T @ Gb^T`` (``Gb`` = block-diagonal
    ``g / sqrt(d)``), ``s = standardise(r)`` per sample, ``S = s * w + beta`` [B, N, G], ``out = T + S @ Vb``
    (``Vb`` = block-diagonal ``v``). ``g`` and ``v`` come in as inputs, so autograd still differentiates the
    pooling and the bottleneck. Backward, with ``dS = dOut @ Vb^T``, ``ds = dS * w``, ``sigma`` the std and
    ``n`` the row length N*G:

    * ``dv`` = diagonal blocks of ``S^T @ dOut``; ``dw = sum(dS * s)``, ``dbeta = sum(dS)``;
    * ``dc = ds / (sigma + eps) - s * sum(ds * s) / (sigma (n - 1))`` through ``s = c / (sigma + eps)``,
      ``dr = dc - mean(dc)`` through the centring;
    * ``dT = dOut + dr @ Gb``, ``dg`` = diagonal blocks of ``dr^T @ T``, divided by sqrt(d).
    """

    @staticmethod
    def forward(ctx, tokens, g, v, weight, bias, groups: int):
        g_blocks, v_blocks, s, std, scaled = _context_terms(tokens, g, v, weight, bias, groups)
        ctx.save_for_backward(tokens, g_blocks, v_blocks, s, scaled, std, weight)
        return torch.baddbmm(tokens, scaled, v_blocks)

    @staticmethod
    def backward(ctx, grad):
        tokens, g_blocks, v_blocks, s, scaled, std, weight = ctx.saved_tensors
        B, N, C = tokens.shape
        groups = g_blocks.shape[1]
        grad_scaled = torch.bmm(grad, v_blocks.transpose(1, 2))  # [B, N, G]
        grad_v = _diagonal_blocks(torch.bmm(scaled.transpose(1, 2), grad), groups)
        grad_weight = (grad_scaled * s).sum((0, 1))
        grad_bias = grad_scaled.sum((0, 1))
        grad_s = (grad_scaled * weight).view(B, -1)
        s = s.view(B, -1)
        grad_c = grad_s / (std + EPS) - s * (grad_s * s).sum(1, keepdim=True).div(std * (s.shape[1] - 1))
        grad_r = (grad_c - grad_c.mean(1, keepdim=True)).view(B, N, groups)
        grad_tokens = torch.baddbmm(grad, grad_r, g_blocks)
        grad_g = _diagonal_blocks(torch.bmm(grad_r.transpose(1, 2), tokens), groups) * (C // groups) ** -0.5
        return grad_tokens, grad_g, grad_v, grad_weight, grad_bias, None
