"""The Triton depth-wise kernels give F.conv2d's outputs and gradients: run in Triton's interpreter on CPU here
(fp32, 1e-4), and compiled on a GPU where the machine has one (fp32 1e-4, bf16 autocast within bf16 rounding).

Triton decides at import whether kernels are compiled or interpreted (``TRITON_INTERPRET=1``), so the
interpreted tests run in a child pytest process started by :func:`test_interpreted_suite`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fast_path_utils import TOL, assert_grads_close, assert_same_training
from official_fixtures import micro_model

import fcvit
from fcvit.accel import depthwise
from fcvit.layers import DepthwiseConv2d

triton = pytest.importorskip("triton", reason="Triton is not installed (PyTorch's CUDA wheels bring it)")
import triton.language as tl  # noqa: E402

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
UNUSABLE = "Triton's interpreter is unusable here"  # the child's skip reason, which the parent passes on
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@triton.jit
def _count_kernel(out_ptr, n):
    total = 0
    for _ in range(0, n):  # bounds known only at run time, as in the weight-gradient kernel
        total += 1
    tl.store(out_ptr, total)


@functools.cache
def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the kernels in this environment, or None.

    Known case: Triton 3.6's interpreter (PyTorch 2.11's) turns a run-time scalar into an ``int`` through a
    one-element array, which NumPy 2.4 refuses, so no loop with run-time bounds runs (Triton 3.9 works). Compiled
    kernels are not affected.
    """
    out = torch.zeros(1, dtype=torch.int32)
    try:
        _count_kernel[(1,)](out, 3)
    except Exception as error:  # whatever the interpreter raised, it is the reason to give
        return f"{UNUSABLE} (Triton {triton.__version__}, NumPy {np.__version__}): {error!r}"[:300]
    return None if out.item() == 3 else f"{UNUSABLE}: a 3-step loop counted {out.item()}"


def test_interpreted_suite():
    """Run this file's ``interpreted`` tests in a child process with ``TRITON_INTERPRET=1``."""
    if IN_INTERPRETER:
        pytest.skip("this is the child process")
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", __file__, "-k", "interpreted"]
    child = subprocess.run(command, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    if unusable := re.search(f"{UNUSABLE}.*", child.stdout):
        pytest.skip(unusable.group(0))
    assert re.search(r"(^|\s)5 passed", child.stdout), child.stdout[-2000:]


@pytest.fixture
def interpreted(monkeypatch):
    """``fcvit.accel.triton_depthwise`` with its kernels run by Triton's interpreter (numpy, CPU tensors), and
    :class:`~fcvit.accel.depthwise.TritonDepthwiseConv2d` allowed to take it on CPU maps."""
    if not IN_INTERPRETER:
        pytest.skip("runs in the child process of test_interpreted_suite")
    if problem := _interpreter_problem():
        pytest.skip(problem)
    from fcvit.accel import triton_depthwise

    monkeypatch.setattr(depthwise, "eager_on", lambda x, device_type: isinstance(x, torch.Tensor))
    return triton_depthwise


def _conv_and_grads(function, x, weight, bias, pad, grad):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = function(x, weight, bias, pad)
    return (y, *torch.autograd.grad(y, (x, weight, bias), grad))


def _assert_all_close(got: tuple, expected: tuple) -> None:
    """Output and the three gradients agree within TOL of each one's largest value."""
    for name, g, e in zip(("output", "grad_x", "grad_w", "grad_b"), got, expected):
        torch.testing.assert_close(g, e, rtol=TOL, atol=TOL * e.abs().max().item(), msg=name)


@pytest.mark.parametrize(
    "shape,kernel,pad",
    [
        ((2, 20, 9, 11), (5, 5), (2, 2, 2, 2)),  # channels not a multiple of the channel block, odd kernel
        ((1, 8, 6, 6), (4, 4), (1, 2, 1, 2)),  # even kernel: one more padding on the right and bottom
        ((2, 70, 3, 2), (3, 2), (0, 1, 2, 0)),  # a cropped kernel (map smaller than the kernel): uneven padding
        ((1, 16, 13, 13), (11, 11), (5, 5, 5, 5)),  # FCViT's kernel
    ],
)
def test_interpreted_kernels_equal_conv2d(interpreted, shape, kernel, pad):
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(shape[1], 1, *kernel), torch.randn(shape[1])
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    got = _conv_and_grads(interpreted.TritonDepthwiseConvFunction.apply, x, weight, bias, pad, grad)
    expected = _conv_and_grads(depthwise.depthwise_conv, x, weight, bias, pad, grad)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    _assert_all_close(got, expected)


def test_interpreted_model_equals_plain(interpreted):
    """The official micro model trained one step with every depth-wise conv on the Triton kernels gives the plain
    path's logits, input gradient and parameter gradients (maps 12x20 down to 2x3: cropped kernels too)."""
    model, io = micro_model()
    model.train()
    convs = [m for m in fcvit.optimize(model, "triton").modules() if isinstance(m, DepthwiseConv2d)]
    assert convs and all(type(m) is depthwise.TritonDepthwiseConv2d for m in convs)
    assert_same_training(model, io["x48x80"][:1].contiguous(memory_format=torch.channels_last), backend="triton")


def test_triton_switch_leaves_cpu_and_nchw_alone():
    """Without a CUDA channels_last map the Triton layer keeps its other paths."""
    torch.manual_seed(0)
    layer = DepthwiseConv2d(8, 5)
    x = torch.randn(2, 8, 7, 7)
    expected = layer(x)
    fcvit.optimize(layer, "triton")
    assert type(layer) is depthwise.TritonDepthwiseConv2d
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(layer(x.contiguous(memory_format=torch.channels_last)), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_kernels_compile_for_hopper_without_spills(dtype):
    """Both kernels compile for sm_90 (H100/H200) with Triton's own ptxas, no GPU needed, at fcvit_b12's 11x11
    kernel and 64-channel blocks, and keep their tiles in registers (no stack: nothing spilled)."""
    if IN_INTERPRETER:
        pytest.skip("compiles the kernels, not their interpreted form")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fcvit.accel import triton_depthwise as td

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip(f"{cuobjdump} not shipped with this Triton")
    types = {"x_ptr": dtype, "w_ptr": dtype, "b_ptr": dtype, "y_ptr": dtype, "g_ptr": dtype, "out_ptr": "fp32"}
    types = {name: f"*{t}" for name, t in types.items()}  # pointers; every other runtime argument is an int32
    kernels = [
        (td._forward_kernel, dict(KH=11, KW=11, HAS_BIAS=True, BLOCK_H=td.BLOCK_H, BLOCK_W=td.BLOCK_W, BLOCK_C=64)),
        (td._weight_grad_kernel, dict(KW=11, KW_PAD=16, BLOCK_P=td.BLOCK_P, BLOCK_C=64)),
    ]
    for kernel, constexprs in kernels:
        signature = {a: "constexpr" if a in constexprs else types.get(a, "i32") for a in kernel.arg_names}
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=td.COMPILE_OPTIONS)
        cubin = Path(tempfile.mkdtemp()) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
        assert re.search(r"REG:\d+ STACK:0 ", usage.stdout), (kernel.__name__, usage.stdout)


@needs_cuda
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_cuda_model_with_triton_equals_cudnn(dtype):
    """On a GPU: the micro model with the Triton kernels gives cuDNN's logits and gradients (fp32: 1e-4; bf16
    autocast: within bf16 rounding, 2e-2 of the largest value)."""
    model, io = micro_model()
    model = model.cuda().to(memory_format=torch.channels_last).train()
    x = io["x48x80"].cuda().contiguous(memory_format=torch.channels_last)
    tol = TOL if dtype is None else 2e-2
    results = []
    for triton_on in (True, False):
        fcvit.optimize(model, "triton" if triton_on else "cpu")
        model.zero_grad(set_to_none=True)
        autocast = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast, torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out = model(x).float()
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (out_t, grads_t), (out_c, grads_c) = results
    torch.testing.assert_close(out_t, out_c, rtol=tol, atol=tol * out_c.abs().max().item())
    assert_grads_close(grads_t, grads_c, tol)


@needs_cuda
def test_cuda_kernels_equal_conv2d_at_fcvit_shapes():
    """fcvit_b12's stage-1 shape (64 channels, 56x56, 11x11) on a GPU, fp32."""
    torch.manual_seed(0)
    x = torch.randn(4, 64, 56, 56, device="cuda").contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(64, 1, 11, 11, device="cuda"), torch.randn(64, device="cuda")
    grad = torch.randn_like(x)
    from fcvit.accel.triton_depthwise import TritonDepthwiseConvFunction

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # the reference in true fp32
        expected = _conv_and_grads(depthwise.depthwise_conv, x, weight, bias, (5, 5, 5, 5), grad)
    got = _conv_and_grads(TritonDepthwiseConvFunction.apply, x, weight, bias, (5, 5, 5, 5), grad)
    _assert_all_close(got, expected)
