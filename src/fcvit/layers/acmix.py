"""ACmix: self-attention and convolution sharing their 1x1 projections.

"On the Integration of Self-Attention and Convolution" (Pan et al., CVPR 2022). Stage I projects the
input by three 1x1 convs into q, k, v (shared by both paths). Stage II runs two cheap aggregations
on them and sums the results with learnable rates: ``F_out = alpha * F_att + beta * F_conv``.

* Attention path: local ``k_att x k_att`` window self-attention per head over reflection-padded maps, with a
  relative position term computed from a 2-channel coordinate grid through the 1x1 conv ``conv_p``.
* Convolution path: a light fully connected layer ``fc`` turns the 3 * heads projections of each head-channel
  into ``k_conv^2`` feature maps, which a grouped ``k_conv x k_conv`` conv initialised as shift kernels
  aggregates (the paper's "shift and summation", made learnable).

Parameter names and shapes follow the official module, so its ``state_dict`` loads as is. Hand-written
because neither timm nor torchvision offers ACmix. Departures from the official code, all where the
official code fails: the coordinate grid is built on the input's device and dtype (the official one only
on CUDA); the window unfold honours ``dilation`` (the official one pads for it but unfolds undilated, a
shape error); the conv path pads ``kernel_conv // 2`` (the official pads 1, a shape error unless
``kernel_conv == 3``); odd map sizes with ``stride > 1`` give ``ceil(H / stride)`` outputs on both paths;
maps not larger than the window's padding, where ``F.pad(mode="reflect")`` is undefined, are extended by
repeated reflection (:func:`reflect_pad`), so ACmix runs at any map size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from .attention import window_dot, window_sum
from .checks import check_input
from .registry import register_token_mixer


def coordinate_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """The [1, 2, H, W] grid of ACmix's position term: x (-1..1 along W) then y (-1..1 along H)."""
    loc_w = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype).view(1, width)
    loc_h = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype).view(height, 1)
    return torch.stack([loc_w.expand(height, width), loc_h.expand(height, width)]).unsqueeze(0)


def shift_kernels(out_channels: int, k: int) -> torch.Tensor:
    """ACmix's initial grouped-conv weight [out_channels, k * k, k, k]: input map i of every group is a one-hot
    kernel at tap (i // k, i % k), so the conv shifts each of the k * k maps by its tap and sums them."""
    shift = torch.zeros(k * k, k, k)
    for i in range(k * k):
        shift[i, i // k, i % k] = 1.0
    return shift.expand(out_channels, k * k, k, k).clone()


def reflect_indices(size: int, pad: int, device: torch.device) -> torch.Tensor:
    """Source index of each position of an axis of ``size`` samples extended by ``pad`` on both sides.

    Repeated reflection about the end samples (numpy's ``np.pad(mode="reflect")``): the axis read back and
    forth with period ``2 * (size - 1)``, so a pad of any width is defined; a single sample repeats.
    """
    idx = torch.arange(-pad, size + pad, device=device)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx < size, idx, period - idx)


def reflect_pad(t: torch.Tensor, pad: int) -> torch.Tensor:
    """``t`` [..., H, W] padded by ``pad`` on each side by reflection: ``F.pad(t, [pad] * 4, mode="reflect")``
    where that is defined (``pad < H, W``), repeated reflection beyond (numpy's ``mode="reflect"``)."""
    rows = reflect_indices(t.shape[-2], pad, t.device)
    cols = reflect_indices(t.shape[-1], pad, t.device)
    return t.index_select(-2, rows).index_select(-1, cols)


@register_notrace_module  # builds its position grid from the map size: a leaf for FX tracing
class ACmix(nn.Module):
    """ACmix module (official signature): 1x1 q/k/v projections shared by window attention and a shift conv.

    Args:
        in_planes / out_planes: input and output channels.
        kernel_att: side of the local attention window (odd).
        head: number of heads; ``out_planes`` must split into them.
        kernel_conv: side of the convolution path's kernel.
        stride: subsampling of the output (query positions / conv stride).
        dilation: dilation of the attention window.
        attn_drop: dropout on the attention weights (not in the official module; a no-op at 0). The weights go
            through ``self.attn_drop`` as [B, head, H_out * W_out, kernel_att ** 2], so timm's
            ``AttentionExtract(model, method="hook")`` captures them.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        kernel_att: int = 7,
        head: int = 4,
        kernel_conv: int = 3,
        stride: int = 1,
        dilation: int = 1,
        attn_drop: float = 0.0,
    ):
        super().__init__()
        if out_planes % head:
            raise ValueError(f"ACmix: out_planes={out_planes} does not split into head={head} heads")
        if kernel_att % 2 == 0 or kernel_conv % 2 == 0:
            raise ValueError(f"ACmix: kernel_att ({kernel_att}) and kernel_conv ({kernel_conv}) must be odd")
        self.in_planes, self.out_planes = in_planes, out_planes
        self.head, self.head_dim = head, out_planes // head
        self.kernel_att, self.kernel_conv = kernel_att, kernel_conv
        self.stride, self.dilation = stride, dilation
        self.padding_att = (dilation * (kernel_att - 1) + 1) // 2

        self.rate1 = nn.Parameter(torch.empty(1))  # alpha: weight of the attention path
        self.rate2 = nn.Parameter(torch.empty(1))  # beta: weight of the convolution path
        self.conv1 = nn.Conv2d(in_planes, out_planes, 1)  # q
        self.conv2 = nn.Conv2d(in_planes, out_planes, 1)  # k
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1)  # v
        self.conv_p = nn.Conv2d(2, self.head_dim, 1)
        self.attn_drop = nn.Dropout(attn_drop)
        self.fc = nn.Conv2d(3 * head, kernel_conv**2, 1, bias=False)
        # The official module builds dep_conv with a bias and then sets it to None in reset_parameters.
        self.dep_conv = nn.Conv2d(
            kernel_conv**2 * self.head_dim,
            out_planes,
            kernel_conv,
            stride=stride,
            padding=kernel_conv // 2,
            groups=self.head_dim,
            bias=False,
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Rates 0.5; ``dep_conv`` as shift kernels: input map i of every group shifts by tap (i // k, i % k)."""
        nn.init.constant_(self.rate1, 0.5)
        nn.init.constant_(self.rate2, 0.5)
        with torch.no_grad():
            self.dep_conv.weight.copy_(shift_kernels(self.out_planes, self.kernel_conv))

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        """Reflection-padded ``k_att x k_att`` windows at the strided query positions: [N, C, k_att^2, L]."""
        padded = reflect_pad(t, self.padding_att)
        cols = F.unfold(padded, self.kernel_att, dilation=self.dilation, stride=self.stride)
        return cols.view(t.shape[0], t.shape[1], self.kernel_att * self.kernel_att, cols.shape[-1])

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Window attention path on projected maps [B, out_planes, H, W] -> [B, out_planes, H_out, W_out]."""
        B, _, H, W = q.shape
        s, heads, d = self.stride, self.head, self.head_dim
        H_out, W_out = -(-H // s), -(-W // s)
        pe = self.conv_p(coordinate_grid(H, W, q))  # [1, d, H, W]
        q = (q * d**-0.5)[:, :, ::s, ::s].reshape(B, heads, d, H_out * W_out)
        k = self._windows(k.reshape(B * heads, d, H, W)).unflatten(0, [B, heads])
        v = self._windows(v.reshape(B * heads, d, H, W)).unflatten(0, [B, heads])
        # position of each query relative to its window keys, pe(query) - pe(key): [1, 1, d, k_att^2, L]
        rel = pe[:, :, ::s, ::s].reshape(1, d, 1, -1) - self._windows(pe)
        # logits[b, h, n, m] = q_n . (k_m + pe_n - pe_m)
        attn = self.attn_drop(window_dot(q, k + rel.unsqueeze(1)).softmax(dim=-1))
        return window_sum(attn, v).reshape(B, self.out_planes, H_out, W_out)

    def convolution(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Shift-convolution path on projected maps [B, out_planes, H, W] -> [B, out_planes, H_out, W_out]."""
        B, _, H, W = q.shape
        per_head = [t.reshape(B, self.head, self.head_dim, H * W) for t in (q, k, v)]
        # fc mixes the 3 * head projections of each head-channel into k_conv^2 maps: [B, k_conv^2, d, H*W]
        f = self.fc(torch.cat(per_head, dim=1))
        # regroup per head-channel (the groups of dep_conv): [B, d * k_conv^2, H, W]
        f = f.permute(0, 2, 1, 3).reshape(B, self.head_dim * self.kernel_conv * self.kernel_conv, H, W)
        return self.dep_conv(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input(x, self.in_planes, "ACmix")
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        # F_out = alpha * F_att + beta * F_conv
        return self.rate1 * self.attention(q, k, v) + self.rate2 * self.convolution(q, k, v)


@register_token_mixer("acmix")
def acmix_token_mixer(
    dim: int, head: int = 4, kernel_att: int = 7, kernel_conv: int = 3, dilation: int = 1, attn_drop: float = 0.0
) -> ACmix:
    """ACmix as a MetaFormer token mixer: ``dim`` channels in and out, stride 1."""
    return ACmix(dim, dim, kernel_att, head, kernel_conv, stride=1, dilation=dilation, attn_drop=attn_drop)
