"""Every fast path of FCViT gives the plain path's outputs and gradients (fp32: 1e-4), on the official fixtures,
at several sizes including maps smaller than the kernel, with odd and even kernels."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from fast_path_utils import TOL, assert_grads_close, assert_same_training, outputs_and_grads
from official_fixtures import TINY_CKPT, TINY_IO, micro_model, needs_shared

import fcvit
from fcvit.layers import fast as fast_module
from fcvit.layers.channel_mixer import ChannelMixer
from fcvit.layers.depthwise import DEPTHWISE_MAX_PIXELS, DepthwiseConv2d, DepthwiseConvFunction
from fcvit.layers.fast import (
    FUSED_CONV,
    LINEAR_MAX_PIXELS,
    batch_chunk,
    conv_gelu,
    run_conv,
    set_fast_path,
)
from fcvit.models.complexity import count_gmacs

# --- the layer --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [3, 8, 11])
def test_depthwise_function_gradcheck(kernel):
    """The hand-written backward passes torch.autograd.gradcheck in float64 (odd and even, cropped shapes)."""
    torch.manual_seed(0)
    left = (kernel - 1) // 2
    pad = (left, kernel - 1 - left, left, kernel - 1 - left)
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: DepthwiseConvFunction.apply(x, w, b, pad)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("kernel", [8, 11])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 5), (12, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_layer_fast_equals_plain(kernel, size, channels_last):
    torch.manual_seed(0)
    layer = DepthwiseConv2d(16, kernel)
    x = torch.randn(3, 16, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert_same_training(layer, x)


def test_fast_backward_is_chosen_only_where_it_helps():
    """The custom backward runs for CPU tensors that need gradients (either memory format), never in inference."""
    layer = DepthwiseConv2d(8, 11)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    y = layer(x.contiguous(memory_format=torch.channels_last))
    assert type(y.grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    y.sum().backward()
    with torch.no_grad():
        assert layer(x).grad_fn is None
    set_fast_path(layer, False)
    assert type(layer(x).grad_fn).__name__ != "DepthwiseConvFunctionBackward"


def test_depthwise_function_under_bf16_autocast():
    """Under CPU bf16 autocast the custom backward stays within bf16 rounding of the plain one."""
    torch.manual_seed(0)
    layer = DepthwiseConv2d(16, 11)
    x = torch.randn(4, 16, 9, 9)
    results = []
    for fast in (True, False):
        set_fast_path(layer, fast)
        layer.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        y.float().square().sum().backward()
        results.append((y.float(), xi.grad, layer.weight.grad))
    for fast, plain in zip(*results):
        assert fast.dtype == plain.dtype
        torch.testing.assert_close(fast.float(), plain.float(), rtol=2e-2, atol=2e-2 * plain.abs().max().item())


# --- whole models -------------------------------------------------------------------------------------


def test_micro_fixture_fast_equals_plain_and_official():
    model, io = micro_model()
    for key in ("64", "48x80"):
        x, expected = io[f"x{key}"], io[f"logits{key}"]
        for fast in (True, False):
            set_fast_path(model, fast)
            with torch.no_grad():
                torch.testing.assert_close(model.eval()(x), expected, rtol=0, atol=TOL)
    model.train()
    assert_same_training(model, io["x48x80"])  # maps 12x20, 6x10, 3x5, 2x3: the last three smaller than 11x11


def test_even_kernel_model_fast_equals_plain():
    torch.manual_seed(0)
    model = fcvit.FCViT(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), kernel_size=8, num_classes=5).train()
    assert_same_training(model, torch.randn(2, 3, 24, 40))  # maps 6x10 .. 1x2


def test_channels_last_model_equals_nchw():
    """The whole model in channels_last gives the NCHW model's outputs and gradients."""
    model, io = micro_model()
    model.train()
    out, grads, gx = outputs_and_grads(model, io["x48x80"], fast=True)
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl, grads_cl, gx_cl = outputs_and_grads(
        model_cl, io["x48x80"].contiguous(memory_format=torch.channels_last), True
    )
    torch.testing.assert_close(out_cl, out, rtol=0, atol=TOL)
    torch.testing.assert_close(gx_cl, gx, rtol=TOL, atol=TOL * gx.abs().max().item())
    assert_grads_close(grads_cl, grads)


@needs_shared
def test_tiny_fixture_fast_equals_plain_and_official():
    model = timm.create_model("fcvit_tiny", checkpoint_path=str(TINY_CKPT))
    io = torch.load(TINY_IO, weights_only=True)
    with torch.no_grad():  # the plain path's match is tested with the model family; 160x192 crops at 5x6
        for key in ("224", "160x192"):
            torch.testing.assert_close(model.eval()(io[f"x{key}"]), io[f"logits{key}"], rtol=0, atol=TOL)
    assert_same_training(model.train(), io["x224"][:, :, :64, :64])


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_path_compiles_without_graph_breaks(channels_last):
    """torch.compile takes the whole training forward (custom autograd Functions included: the depth-wise
    conv's, and the global context's on channels_last tokens) as one graph."""
    torch._dynamo.reset()
    model = fcvit.FCViT(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), num_classes=5).train()
    x = torch.randn(2, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_fast_equals_plain():
    """On GPU under bf16 autocast (kernel cropping is the fast path there) outputs agree within bf16 rounding."""
    model, io = micro_model()
    model = model.cuda().to(memory_format=torch.channels_last)
    x = io["x48x80"].cuda().contiguous(memory_format=torch.channels_last)
    outs = []
    for fast in (True, False):
        set_fast_path(model, fast)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            outs.append(model.eval()(x).float())
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-2, atol=2e-2 * outs[1].abs().max().item())
    torch.testing.assert_close(outs[1].cpu(), io["logits48x80"], rtol=5e-2, atol=5e-2 * outs[1].abs().max().item())


# --- CPU training on small maps: 1x1 conv as a linear layer, depth-wise conv with the custom backward --


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 3), (4, 4)])
def test_channel_mixer_small_map_training_equals_plain(size):
    torch.manual_seed(0)
    x = torch.randn(4, 16, *size).contiguous(memory_format=torch.channels_last)
    assert_same_training(ChannelMixer(16, mlp_ratio=4), x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_mixer_chunked_training_equals_plain(channels_last, monkeypatch):
    """Where the hidden map would pass TRAIN_CHUNK_BYTES, CPU training runs the mixer on chunks of images (here
    2, 2, 1): same outputs and gradients as the plain path, output in the input's memory format; not in inference."""
    torch.manual_seed(0)
    mixer = ChannelMixer(16, mlp_ratio=4)  # hidden map of one 6x6 image: 64 x 36 x 4 bytes
    x = torch.randn(5, 16, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(fast_module, "TRAIN_CHUNK_BYTES", 2 * 64 * 36 * 4)
    calls = []
    mixer.fc1.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    assert_same_training(mixer, x)
    assert calls == [2, 2, 1, 5]  # fast path in chunks, then the plain path whole
    set_fast_path(mixer, True)
    y = mixer(x.requires_grad_(True))
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    with torch.no_grad():
        mixer(x)
    assert calls[4:] == [2, 2, 1, 5]


def _ops_of_training_step(conv: torch.nn.Conv2d, x: torch.Tensor) -> set[str]:
    x = x.detach().requires_grad_(True)
    with torch.profiler.profile() as prof:
        run_conv(conv, x).sum().backward()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(8, 16, 1), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)])
def test_linear_paths_apply_only_to_small_channels_last_maps_in_training(conv):
    """Dense convs run as linear layers on channels_last maps of at most LINEAR_MAX_PIXELS with autograd on only."""
    small = torch.randn(2, 8, 2, LINEAR_MAX_PIXELS // 2).contiguous(memory_format=torch.channels_last)
    larger = torch.randn(2, 8, 3, LINEAR_MAX_PIXELS // 2).contiguous(memory_format=torch.channels_last)
    assert "aten::linear" in _ops_of_training_step(conv, small)
    assert "aten::linear" not in _ops_of_training_step(conv, larger)
    assert "aten::linear" not in _ops_of_training_step(conv, small.contiguous())  # NCHW
    with torch.profiler.profile() as prof, torch.no_grad():
        y = run_conv(conv, small)
    assert "aten::linear" not in {e.name for e in prof.events()} and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "kernel,size,custom",
    [
        (3, (2, DEPTHWISE_MAX_PIXELS // 2), True),  # 3x3 on a tiny map: DepthwiseConvFunction
        (3, (3, DEPTHWISE_MAX_PIXELS // 2), False),  # 3x3 on larger maps: oneDNN's 3x3 backward
        (3, (16, 16), False),
        (5, (16, 16), True),  # larger kernels: DepthwiseConvFunction on any map
        (11, (8, 8), True),
        (11, (2, 2), True),  # cropped to 3x3 on a 2x2 map
    ],
)
def test_depthwise_backward_follows_one_rule(kernel, size, custom):
    """The channel mixer's depth-wise nn.Conv2d (through run_conv) and FCViT's DepthwiseConv2d take
    DepthwiseConvFunction's backward by the same rule (fast_backward_helps), in training only."""
    x = torch.randn(2, 8, *size).contiguous(memory_format=torch.channels_last)
    convs = [torch.nn.Conv2d(8, 8, kernel, padding=kernel // 2, groups=8), DepthwiseConv2d(8, kernel)]
    for conv in convs:
        call = (lambda t, c=conv: run_conv(c, t)) if type(conv) is torch.nn.Conv2d else conv
        xi = x.detach().requires_grad_(True)
        with torch.profiler.profile() as prof:
            call(xi).sum().backward()
        assert ("DepthwiseConvFunctionBackward" in {e.name for e in prof.events()}) == custom, type(conv).__name__
        with torch.profiler.profile() as prof, torch.no_grad():
            call(x)
        assert "DepthwiseConvFunction" not in {e.name for e in prof.events()}


@pytest.mark.parametrize(
    "conv,size",
    [
        (torch.nn.Conv2d(6, 10, 1), (3, 5)),
        (torch.nn.Conv2d(6, 10, 3, stride=2, padding=1), (4, 4)),  # FCViT's downsampling
        (torch.nn.Conv2d(6, 10, 3, stride=2, padding=1), (3, 5)),
        (torch.nn.Conv2d(6, 10, 7, stride=4, padding=3), (4, 4)),  # the stem on a tiny image
        (torch.nn.Conv2d(6, 10, (2, 3), stride=(1, 2), padding=(0, 1)), (4, 3)),
    ],
)
def test_dense_conv_over_patches_equals_conv(conv, size):
    """On small channels_last maps in training a dense conv is a linear layer over its patches: same values
    and gradients as PyTorch's conv (float64, so the tolerance is tight), channels_last out."""
    conv = conv.double()
    x = torch.randn(3, 6, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert "aten::linear" in _ops_of_training_step(conv, x)
    outs = []
    for fn in (lambda t: run_conv(conv, t), conv):
        conv.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
        outs.append((y, xi.grad, conv.weight.grad, conv.bias.grad))
    assert outs[0][0].is_contiguous(memory_format=torch.channels_last)
    for got, expected in zip(*outs):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "conv", [torch.nn.Conv2d(8, 8, 3, padding=2, groups=8), torch.nn.Conv2d(8, 16, 3, padding=1, groups=8)]
)
def test_small_map_depthwise_path_leaves_other_convs_to_pytorch(conv):
    """A depth-wise conv that does not keep the map size, or a grouped one with a channel multiplier, runs as
    PyTorch's conv on small maps too, with the same values and gradients."""
    x = torch.randn(2, 8, 2, 2).contiguous(memory_format=torch.channels_last)
    assert "DepthwiseConvFunctionBackward" not in _ops_of_training_step(conv, x)
    torch.testing.assert_close(run_conv(conv, x), conv(x))


# --- CPU inference paths: channels_last, conv + GELU in one oneDNN call, batch chunking --------------


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups,kernel,padding", [(1, 1, 0), (24, 3, 1), (24, 11, 5)])
def test_fused_conv_gelu_equals_conv_then_gelu(groups, kernel, padding, channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24, 24, kernel, padding=padding, groups=groups)
    x = torch.randn(3, 24, 9, 13)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = F.gelu(conv(x))
        fused = conv_gelu(conv, x)
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5)


def test_fused_conv_gelu_only_in_cpu_inference():
    """With autograd on, under autocast or with ``fast=False`` the plain conv + GELU runs (and is differentiable)."""
    conv = torch.nn.Conv2d(8, 8, 1)
    x = torch.randn(2, 8, 5, 5)
    with torch.profiler.profile() as prof:
        y = conv_gelu(conv, x)
        with torch.no_grad():
            conv_gelu(conv, x, fast=False)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                conv_gelu(conv, x)
            conv_gelu(conv, x)
    fused = [e for e in prof.events() if "_convolution_pointwise" in e.name]
    assert len(fused) == (1 if FUSED_CONV is not None else 0)  # only the last call
    assert y.grad_fn is not None


def test_batch_chunk_sizes():
    x = torch.empty(16, 64, 56, 56)  # a 512-channel hidden map of one image: 6.1 MiB
    assert batch_chunk(x, 512, budget=16 * 2**20) == 2
    assert batch_chunk(x, 512, budget=2**20) == 1
    assert batch_chunk(x, 512, budget=2**40) == 16
    assert batch_chunk(torch.empty(16, 128, 28, 28), 1024, budget=16 * 2**20) == 4  # 5 per chunk -> 4 x 4


@pytest.mark.parametrize("budget", [1, 2**18])  # one image per chunk; 2, 4, 6 and 6 images per chunk by stage
def test_chunked_inference_equals_plain_and_official(budget, monkeypatch):
    model, io = micro_model()
    x = torch.cat([io["x64"]] * 3)  # 6 images
    expected = torch.cat([io["logits64"]] * 3)
    monkeypatch.setattr(fast_module, "CHUNK_BYTES", budget)
    with torch.no_grad():
        set_fast_path(model, True)
        got = model(x)
        set_fast_path(model, False)
        plain = model(x)
    torch.testing.assert_close(got, plain, rtol=0, atol=TOL)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)


def test_iso_model_chunked_inference_equals_plain(monkeypatch):
    torch.manual_seed(0)
    model = fcvit.IsoFCViT(dim=32, depth=2, num_classes=4).eval()
    x = torch.randn(5, 3, 64, 64)
    monkeypatch.setattr(fast_module, "CHUNK_BYTES", 1)
    outs = []
    for enabled in (True, False):
        set_fast_path(model, enabled)
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=TOL)


def test_maps_come_back_in_the_callers_memory_format():
    """FCViT runs channels_last inside on CPU but returns maps as they came: NCHW in, NCHW out."""
    model, io = micro_model()
    x = io["x48x80"]
    with torch.no_grad():
        assert model.forward_features(x).is_contiguous()
        final, maps = model.forward_intermediates(x)
        assert final.is_contiguous() and all(m.is_contiguous() for m in maps)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert model.forward_features(x_cl).is_contiguous(memory_format=torch.channels_last)


def test_tracing_sees_the_plain_graph():
    """torch.export (the route of ONNX export) never records the oneDNN fused op or batch chunks."""
    model, io = micro_model()
    with torch.no_grad():  # where eager CPU inference would take the fast paths
        program = torch.export.export(model, (io["x64"],))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in t for t in targets), targets
    assert not any("cat" in t or "split" in t for t in targets), targets
    torch.testing.assert_close(program.module()(io["x64"]), io["logits64"], rtol=0, atol=TOL)


def test_gmacs_are_counted_on_the_plain_path():
    """MACs are those of the computation as defined (fcvit_tiny: 0.90 GMACs at 224, the official figure),
    and counting leaves each module's fast-path setting as it was."""
    model = timm.create_model("fcvit_tiny")
    model.stages[0].fast = False
    assert count_gmacs(model, (3, 224, 224)) == pytest.approx(0.9015, abs=1e-3)
    flags = [m.fast for m in model.modules() if hasattr(m, "fast")]
    assert flags.count(False) == 1 and len(flags) > 50
