"""Helpers shared by the tests of fcvit.optimize: an optimised model against its plain self, in training."""

from __future__ import annotations

import torch

import fcvit

TOL = 1e-4


def outputs_and_grads(
    model: torch.nn.Module, x: torch.Tensor, backend: str | None
) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Logits, parameter gradients and input gradient of a train-mode forward/backward (no dropout in the model),
    with ``model`` optimised for ``backend`` (None: plain)."""
    fcvit.optimize(model, backend)
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, x.grad.detach().clone()


def assert_grads_close(got: dict, expected: dict, tol: float = TOL) -> None:
    """Every parameter gradient agrees relative to its own scale, floored at 1e-2 of the largest gradient:
    biases of convs followed by train-mode BatchNorm have a true gradient of 0 and hold only rounding noise."""
    assert got.keys() == expected.keys()
    largest = max(g.abs().max().item() for g in expected.values())
    for name in expected:
        scale = max(expected[name].abs().max().item(), 1e-2 * largest)
        torch.testing.assert_close(got[name], expected[name], rtol=tol, atol=tol * scale, msg=name)


def assert_same_training(model: torch.nn.Module, x: torch.Tensor, backend: str = "cpu") -> None:
    """Optimised (for ``backend``) and plain modules agree on outputs, input gradients and every parameter gradient."""
    out_f, grads_f, gx_f = outputs_and_grads(model, x, backend)
    out_p, grads_p, gx_p = outputs_and_grads(model, x, None)
    torch.testing.assert_close(out_f, out_p, rtol=0, atol=TOL)
    torch.testing.assert_close(gx_f, gx_p, rtol=TOL, atol=TOL * gx_p.abs().max().item())
    assert_grads_close(grads_f, grads_p)
