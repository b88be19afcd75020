"""``fcvit.optimize``: every optimised module gives its plain module's outputs and gradients (fp32: 1e-4), on the
official fixtures, at several sizes including maps smaller than the kernel, with odd and even kernels; the swap
keeps parameters and state_dict keys and round-trips."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from fast_path_utils import TOL, assert_grads_close, assert_same_training, outputs_and_grads
from official_fixtures import TINY_CKPT, TINY_IO, micro_model, needs_shared

import fcvit
from fcvit.accel import cpu as cpu_module
from fcvit.accel.cpu import FUSED_CONV, LINEAR_MAX_PIXELS, batch_chunk, conv_gelu, run_conv
from fcvit.accel.depthwise import DEPTHWISE_MAX_PIXELS, DepthwiseConvFunction
from fcvit.accel.global_context import DynamicContextFunction
from fcvit.layers import ChannelMixer, DepthwiseConv2d, GlobalContext
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
    layer = fcvit.optimize(DepthwiseConv2d(8, 11))
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert type(layer(x).grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    y = layer(x.contiguous(memory_format=torch.channels_last))
    assert type(y.grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    y.sum().backward()
    with torch.no_grad():
        assert layer(x).grad_fn is None
    fcvit.optimize(layer, None)
    assert type(layer(x).grad_fn).__name__ != "DepthwiseConvFunctionBackward"


def test_depthwise_function_under_bf16_autocast():
    """Under CPU bf16 autocast the custom backward stays within bf16 rounding of the plain one."""
    torch.manual_seed(0)
    layer = DepthwiseConv2d(16, 11)
    x = torch.randn(4, 16, 9, 9)
    results = []
    for fast in (True, False):
        fcvit.optimize(layer, "cpu" if fast else None)
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
            fcvit.optimize(model, "cpu" if fast else None)
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
    out, grads, gx = outputs_and_grads(model, io["x48x80"], "cpu")
    model_cl = model.to(memory_format=torch.channels_last)
    out_cl, grads_cl, gx_cl = outputs_and_grads(
        model_cl, io["x48x80"].contiguous(memory_format=torch.channels_last), "cpu"
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
        fcvit.optimize(model, "cpu" if fast else None)
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
    monkeypatch.setattr(cpu_module, "TRAIN_CHUNK_BYTES", 2 * 64 * 36 * 4)
    calls = []
    mixer.fc1.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    assert_same_training(mixer, x)
    assert calls == [2, 2, 1, 5]  # fast path in chunks, then the plain path whole
    fcvit.optimize(mixer)
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
    """The channel mixer's depth-wise nn.Conv2d (through run_conv) and FCViT's optimised DepthwiseConv2d take
    DepthwiseConvFunction's backward by the same rule (fast_backward_helps), in training only."""
    x = torch.randn(2, 8, *size).contiguous(memory_format=torch.channels_last)
    convs = [torch.nn.Conv2d(8, 8, kernel, padding=kernel // 2, groups=8), fcvit.optimize(DepthwiseConv2d(8, kernel))]
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
    """With autograd on or under autocast the plain conv + GELU runs (and is differentiable)."""
    conv = torch.nn.Conv2d(8, 8, 1)
    x = torch.randn(2, 8, 5, 5)
    with torch.profiler.profile() as prof:
        y = conv_gelu(conv, x)
        with torch.no_grad():
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
    monkeypatch.setattr(cpu_module, "CHUNK_BYTES", budget)
    with torch.no_grad():
        fcvit.optimize(model)
        got = model(x)
        fcvit.optimize(model, None)
        plain = model(x)
    torch.testing.assert_close(got, plain, rtol=0, atol=TOL)
    torch.testing.assert_close(got, expected, rtol=0, atol=TOL)


def test_iso_model_chunked_inference_equals_plain(monkeypatch):
    torch.manual_seed(0)
    model = fcvit.IsoFCViT(dim=32, depth=2, num_classes=4).eval()
    x = torch.randn(5, 3, 64, 64)
    monkeypatch.setattr(cpu_module, "CHUNK_BYTES", 1)
    outs = []
    for enabled in (True, False):
        fcvit.optimize(model, "cpu" if enabled else None)
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=TOL)


def test_maps_come_back_in_the_callers_memory_format():
    """FCViT runs channels_last inside on CPU but returns maps as they came: NCHW in, NCHW out."""
    model, io = micro_model()
    x = io["x48x80"]
    fcvit.optimize(model)
    with torch.no_grad():
        assert model.forward_features(x).is_contiguous()
        final, maps = model.forward_intermediates(x)
        assert final.is_contiguous() and all(m.is_contiguous() for m in maps)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert model.forward_features(x_cl).is_contiguous(memory_format=torch.channels_last)


def test_tracing_sees_the_plain_graph():
    """torch.export (the route of ONNX export) of an optimised model never records the oneDNN fused op or batch
    chunks."""
    model, io = micro_model()
    fcvit.optimize(model)
    with torch.no_grad():  # where eager CPU inference would take the fast paths
        program = torch.export.export(model, (io["x64"],))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in t for t in targets), targets
    assert not any("cat" in t or "split" in t for t in targets), targets
    torch.testing.assert_close(program.module()(io["x64"]), io["logits64"], rtol=0, atol=TOL)


def test_gmacs_of_the_plain_model():
    """MACs are those of the computation as defined (fcvit_tiny: 0.90 GMACs at 224, the official figure); the
    optimised model crops its kernels on the 7x7 maps of stage 4 and computes fewer."""
    model = timm.create_model("fcvit_tiny")
    assert count_gmacs(model, (3, 224, 224)) == pytest.approx(0.9015, abs=1e-3)
    assert count_gmacs(fcvit.optimize(model), (3, 224, 224)) < 0.9


# --- the swap itself ---------------------------------------------------------------------------------------


def test_optimize_round_trips_and_keeps_the_state_dict():
    """Each FCViT module becomes a subclass of its own class holding the same tensors; backend=None swaps back."""
    model = timm.create_model("fcvit_tiny")
    plain_types = [type(m) for m in model.modules()]
    state = {k: v.data_ptr() for k, v in model.state_dict().items()}
    fcvit.optimize(model)
    swapped = [(p, type(m)) for p, m in zip(plain_types, model.modules()) if type(m) is not p]
    assert len(swapped) > 50 and all(issubclass(new, old) for old, new in swapped)
    assert fcvit.accel.is_optimized(model)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == state
    fcvit.optimize(model, None)
    assert [type(m) for m in model.modules()] == plain_types and not fcvit.accel.is_optimized(model)
    other_sequentials = [m for m in fcvit.optimize(model).modules() if type(m) is torch.nn.Sequential]
    assert other_sequentials and all(
        n == "stages" or n.endswith("rounds") for n, m in model.named_modules() if m in other_sequentials
    )


def test_optimize_rejects_unknown_backends_and_leaves_other_models_alone():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        fcvit.optimize(torch.nn.Conv2d(1, 1, 1), "gpu")
    resnet = timm.create_model("resnet18")
    assert not fcvit.accel.is_optimized(fcvit.optimize(resnet))


def test_optimized_checkpoints_and_ema_load_into_either():
    """A state_dict saved from an optimised model loads into a plain one (and back) with the same logits; an EMA
    copy (deepcopy, as timm's ModelEmaV3 makes) stays optimised."""
    torch.manual_seed(0)
    fast = fcvit.optimize(timm.create_model("fcvit_tiny", num_classes=3)).eval()
    plain = timm.create_model("fcvit_tiny", num_classes=3).eval()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=TOL)
    ema = timm.utils.ModelEmaV3(fast)
    assert fcvit.accel.is_optimized(ema.module)


# --- the global context ------------------------------------------------------------------------------


@pytest.mark.parametrize("tokens,channels,groups", [(12, 8, 4), (1, 16, 8), (4, 6, 2)])
def test_dynamic_context_function_gradcheck(tokens, channels, groups):
    """The hand-written backward of the channels_last training path passes gradcheck in float64, down to one
    token (a 1x1 map, where the standardisation runs over the groups alone)."""
    torch.manual_seed(0)
    shapes = [(3, tokens, channels), (3, channels), (3, channels), (groups,), (groups,)]
    inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in shapes]
    fn = lambda t, g, v, w, b: DynamicContextFunction.apply(t, g, v, w, b, groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_dynamic_context_under_cpu_autocast_keeps_autograd_path():
    """Under bf16 autocast the channels_last tokens take autograd's path (the written-out backward is fp32 only):
    the sum keeps the tokens' dtype, values stay within bf16 rounding of fp32, and gradients flow."""
    torch.manual_seed(0)
    gc = fcvit.optimize(GlobalContext(32, "dynamic", groups=8))
    x = torch.randn(2, 32, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gc(x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, gc(x), rtol=0, atol=0.05)
    with torch.profiler.profile() as prof:
        y.sum().backward()
    assert "DynamicContextFunctionBackward" not in {e.name for e in prof.events()}
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.profiler.profile() as prof:
        gc(x).sum().backward()  # fp32: the written-out backward
    assert "DynamicContextFunctionBackward" in {e.name for e in prof.events()}


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_context_fast_add_equals_plain(mode, channels_last):
    """``gc(x)`` (x + GC(x) by batched matrix products) equals ``x + gc.context(x)``, values and gradients,
    and keeps the input's memory format."""
    torch.manual_seed(0)
    gc = GlobalContext(32, mode, groups=8)
    if mode == "dynamic":
        with torch.no_grad():
            gc.rescale_weight.uniform_(0.5, 1.5)
            gc.rescale_bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 32, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(3, 32, 7, 9)
    results = []
    for fast in (True, False):
        fcvit.optimize(gc, "cpu" if fast else None)
        gc.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = gc(xi)
        (y * weights).sum().backward()
        results.append((y.detach(), xi.grad, {n: p.grad for n, p in gc.named_parameters()}))
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    (y_fast, gx_fast, grads_fast), (y_plain, gx_plain, grads_plain) = results
    torch.testing.assert_close(y_fast, y_plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx_fast, gx_plain, rtol=0, atol=1e-5)
    for name in grads_plain:
        torch.testing.assert_close(grads_fast[name], grads_plain[name], rtol=1e-4, atol=1e-4, msg=name)


# --- kernel cropping -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 8, 11, 13])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (4, 4), (7, 5), (16, 9)])
def test_kernel_cropping_equals_plain_convolution(k, size):
    """Exact: cropping drops only taps that multiply padding. Tolerance 1e-5 (fp32 summation order)."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, k)
    x = torch.randn(2, 6, *size, requires_grad=True)
    plain = conv(x)
    fast = fcvit.optimize(conv)(x)
    assert fast.shape == plain.shape == x.shape
    assert torch.allclose(fast, plain, atol=1e-5)
    (g_fast,) = torch.autograd.grad(fast.sum(), x)
    (g_plain,) = torch.autograd.grad(plain.sum(), x)
    assert torch.allclose(g_fast, g_plain, atol=1e-5)


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],
        ["validate", "--checkpoint", "c.pth"],
        ["predict", "--checkpoint", "c.pth", "a.png"],
        ["analyze", "stats", "--model", "fcvit_tiny", "--data", "d", "--output", "o"],
        ["bench", "fcvit_tiny"],
        ["det", "train"],
        ["seg", "train"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_every_command_optimizes_unless_told_not_to(argv):
    """The commands run the optimised model by default and offer ``--no-optimize``."""
    from fcvit.cli import build_parser

    def optimizes(args) -> bool:
        ns = vars(build_parser().parse_args(args))
        return ns.get("optimize", True) is not False and not ns.get("no_optimize", False)

    assert optimizes(argv) and not optimizes([*argv, "--no-optimize"])
