"""FCViT's modules made faster on CPU, with the same parameters and results: what :func:`fcvit.optimize` swaps in.

* **channels_last inside** (:class:`FastFCViT`, :class:`FastIsoFCViT`): oneDNN's convolutions, depth-wise ones
  most, are faster on NHWC tensors, so the model converts its input once and hands maps back in the caller's
  format.
* **Conv + GELU as one oneDNN call** in inference, **small-map linear paths** in training
  (:mod:`fcvit.accel.cpu`): the channel mixer, the pointwise MLP of the token mixer, the stem and the
  downsampling convs.
* **One addcmul per residual** (:class:`FastFCViTBlock`): ``x + gamma * y`` in one pass over memory where
  drop path is off.
* **Batch chunking**: in inference a stage runs its blocks on a few images at a time (:class:`FastBlocks`), so
  that the widest map a block makes (the channel mixer's hidden map, 8x the width in stages 1-2) stays small.
  Eval mode makes every image independent (BatchNorm uses its running statistics), so chunking cannot change
  the result. In training only the channel mixer is chunked, and only where its hidden map would reach
  glibc's mmap ceiling (it holds no BatchNorm: exact in either mode).
"""

import torch
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

from ..layers import ChannelMixer, PointwiseMlp
from ..models.fcvit import FCViT, FCViTBlock, IsoFCViT, OverlapPatchEmbed
from ..runtime import adapt_threads
from .cpu import conv_gelu, run_chunked, run_chunked_in_training, run_conv
from .dispatch import cpu_inference, eager_on


@register_notrace_module  # it looks at map sizes: a leaf for FX tracing
class FastChannelMixer(ChannelMixer):
    """:class:`~fcvit.layers.ChannelMixer` with conv + GELU fused in inference, the small-map training paths,
    and its batch in chunks in CPU training where the hidden map would reach glibc's mmap ceiling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_chunked_in_training(self.mix, x, self.fc1.out_channels)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The channel mixer on a batch of images, as one piece."""
        if isinstance(self.dwconv, nn.Identity):
            x = conv_gelu(self.fc1, x)
        else:
            x = conv_gelu(self.dwconv, run_conv(self.fc1, x))
        return self.drop2(run_conv(self.fc2, self.drop1(x)))


@register_notrace_module
class FastPointwiseMlp(PointwiseMlp):
    """:class:`~fcvit.layers.PointwiseMlp` with each 1x1 conv and its GELU as one oneDNN call in CPU inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_gelu(self.fc2, conv_gelu(self.fc1, x))


@register_notrace_module
class FastOverlapPatchEmbed(OverlapPatchEmbed):
    """:class:`~fcvit.models.fcvit.OverlapPatchEmbed` whose conv runs as a linear layer over its patches on small
    maps in CPU training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(run_conv(self.conv, x))


class FastFCViTBlock(FCViTBlock):
    """:class:`~fcvit.models.FCViTBlock` with each residual ``x + gamma * y`` as one ``addcmul`` where drop path is
    off (one pass over memory instead of two)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.residual(x, self.token_mixer(self.norm1(x)), self.ls1, self.drop_path1)
        return self.residual(x, self.channel_mixer(self.norm2(x)), self.ls2, self.drop_path2)

    def residual(self, x: torch.Tensor, y: torch.Tensor, ls: nn.Module, drop_path: nn.Module) -> torch.Tensor:
        if self.training and not isinstance(drop_path, nn.Identity):
            return x + drop_path(ls(y))
        return torch.addcmul(x, ls.gamma.view(-1, 1, 1), y)


@register_notrace_module
class FastBlocks(nn.Sequential):
    """A sequence of FCViT blocks that, in CPU inference, runs a few images at a time so that the blocks' widest
    map (the channel mixers' hidden map) stays within :data:`fcvit.accel.cpu.CHUNK_BYTES`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not cpu_inference(x):
            return super().forward(x)
        widest = max([x.shape[1], *(b.channel_mixer.fc1.out_channels for b in self)])
        return run_chunked(super().forward, x, widest)


@register_notrace_function  # it reads the memory format, which FX tracing cannot
def channels_last_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last if eager PyTorch runs it on the CPU, else as it is."""
    return x.contiguous(memory_format=torch.channels_last) if eager_on(x, "cpu") else x


@register_notrace_function
def like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in the memory format of the caller's input ``x`` (NCHW unless ``x`` came channels_last)."""
    return y.contiguous() if x.is_contiguous() else y


class ChannelsLastInside:
    """Mixin for the FCViT models: channels_last from the input on (CPU), maps handed back as the input came; and
    on the CPU, torch's thread team kept to the cores other processes leave free (:func:`fcvit.runtime.adapt_threads`,
    a clock check per call and a ``/proc/stat`` read every 2 s): a team waiting at every operator for a thread
    that another process descheduled runs many times slower, and the chunked stages have more operators."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if eager_on(x, "cpu"):
            adapt_threads()
        return like_input(super().forward_features(channels_last_on_cpu(x)), x)

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        out = super().forward_intermediates(channels_last_on_cpu(x), *args, **kwargs)
        if isinstance(out, list):
            return [like_input(y, x) for y in out]
        final, maps = out
        return like_input(final, x), [like_input(y, x) for y in maps]


class FastFCViT(ChannelsLastInside, FCViT):
    """:class:`~fcvit.models.FCViT`, channels_last inside on CPU."""


class FastIsoFCViT(ChannelsLastInside, IsoFCViT):
    """:class:`~fcvit.models.IsoFCViT`, channels_last inside on CPU."""
