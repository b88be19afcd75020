"""Where the fast paths apply: tensors seen by eager PyTorch on a given device, in inference or in training.

None of them applies while tracing (torch.compile, torch.export, ONNX export, FX, TorchScript): a traced graph
is the plain model's, so exported models run anywhere and the compiler does its own fusing.
"""

import torch


def eager_on(x: torch.Tensor, device_type: str) -> bool:
    """``x`` is a tensor on ``device_type`` seen by eager PyTorch (not under dynamo, TorchScript or jit tracing;
    under FX tracing ``x`` is a Proxy, not a tensor)."""
    tracing = torch.compiler.is_compiling() or torch.jit.is_scripting() or torch.jit.is_tracing()
    return not tracing and isinstance(x, torch.Tensor) and x.device.type == device_type


def cpu_inference(x: torch.Tensor) -> bool:
    """Eager CPU fp32 without autograd or autocast: where the inference-only fast paths apply."""
    return (
        eager_on(x, "cpu")
        and not torch.is_grad_enabled()
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def cpu_training(x: torch.Tensor) -> bool:
    """Eager CPU with autograd recording: where the training-only fast paths apply."""
    return eager_on(x, "cpu") and torch.is_grad_enabled()
