"""timm's model contract, on the smallest model of every family this project registers.

timm's own ``tests/test_models.py`` (run against every registered model with a conftest that imports fcvit:
docs/benchmarks.md gives the last result) checks forward, backward, default configs, TorchScript, FX tracing,
the FX graph scripted, ``features_only`` and ``forward_intermediates``. The same checks, written here for a fast
subset, keep CI holding the contract: the plain models must pass them as ``timm.create_model`` returns them.
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import fcvit  # noqa: F401  (registers the models)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# the smallest model of each family: FCViT (hierarchical, isotropic), FCViT-frame mixers, Swin-/ResNet-ACmix,
# the dynamic-convolution paper's DeiT and Swin hosts
MODELS = {
    "fcvit_tiny": 64,
    "test_acmix": 32,
    "test_attn_softmax": 32,
    "test_dwattn": 32,
    "test_acmix_swin": 64,
    "test_acmix_resnet": 32,
    "deit_test_attn_ln_relu": None,
    "deit_test_attn_softmax": None,
    "test_swin_dwattn": None,
}
TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def _create(name: str, **kwargs) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model and a 2-image batch at its test size (its pretrained_cfg's size where that is fixed)."""
    torch.manual_seed(0)
    size = MODELS[name]
    fixed = getattr(timm.get_pretrained_cfg(name), "fixed_input_size", False)
    if size and fixed:
        kwargs.setdefault("img_size", size)
    model = timm.create_model(name, **kwargs)
    side = size or model.pretrained_cfg["input_size"][-1]
    return model, torch.randn(2, model.pretrained_cfg["input_size"][0], side, side)


def _fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """The whole model traced by FX as timm's tests trace it (its last node as the output)."""
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER)
    return create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER)


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_backward_and_config(name):
    model, x = _create(name, num_classes=7)
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "first_conv", "classifier", "crop_pct", "interpolation"):
        assert key in cfg, key
    modules = dict(model.named_modules())
    assert cfg["first_conv"] in modules and cfg["classifier"] in modules
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    model.reset_classifier(0)
    model.eval()
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (2, model.num_features)
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), pooled)


@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_equals_eager(name):
    model, x = _create(name)
    model.eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_fx_graph_equals_eager_and_scripts(name):
    """FX output is bit-equal to eager (the plain model has no eager-only paths), and the graph scripts."""
    model, x = _create(name)
    model.eval()
    fx = _fx_model(model)
    with torch.no_grad():
        expected = model(x)
        (got,) = fx(x).values()
        assert torch.equal(got, expected)
        (scripted,) = torch.jit.script(fx)(x).values()
    torch.testing.assert_close(scripted, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_factory_device_dtype_and_new_heads(name):
    """timm's factory arguments: ``device``/``dtype`` place every tensor (here on the meta device, no memory), and
    a reset classifier is made on the model's device, in its dtype and training mode."""
    model = timm.create_model(name, device="meta", dtype=torch.bfloat16).eval()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert [n for n, t in tensors if t.device.type != "meta"] == []
    assert {t.dtype for _, t in model.named_parameters()} == {torch.bfloat16}
    model.reset_classifier(3)
    heads = model.get_classifier()
    for head in heads if isinstance(heads, tuple) else (heads,):
        assert {(p.device.type, p.dtype) for p in head.parameters()} == {("meta", torch.bfloat16)}
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    "name", ["fcvit_tiny", "test_attn_softmax", "test_dwattn", "test_acmix_swin", "deit_test_attn_softmax"]
)
def test_plain_symbolic_trace(name):
    """The models the README names trace with plain ``torch.fx.symbolic_trace``, bit-equal to eager."""
    model, x = _create(name)
    model.eval()
    with torch.no_grad():
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_features_only_and_intermediates_agree(name):
    """``features_only`` gives the maps ``forward_intermediates`` gives, with the channels feature_info names."""
    model, x = _create(name)
    model.eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-5)
    features, _ = _create(name, features_only=True)
    features.load_state_dict(model.state_dict(), strict=False)
    features.eval()
    with torch.no_grad():
        got = features(x)
    channels = features.feature_info.channels()
    assert len(got) == len(channels) > 0
    for f, c in zip(got, channels):
        assert c in (f.shape[1], f.shape[-1])  # NCHW, or NHWC as timm's Swin gives its features
