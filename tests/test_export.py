"""``fcvit export``: ONNX (onnxruntime matches PyTorch, dynamic batch), torch.export programs and safetensors
round trips, official checkpoints as input, clear errors."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from safetensors import safe_open

import fcvit
from fcvit.cli import main
from fcvit.export import export_onnx, export_program, export_safetensors, load_model, load_safetensors, onnx_max_error

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TINY_CKPT = SHARED / "official_fcvit_tiny_random.pth"


def small_model(**kwargs) -> fcvit.FCViT:
    torch.manual_seed(0)
    return fcvit.FCViT(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), num_classes=7, **kwargs).eval()


def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path):
    model = small_model(kernel_size=8)  # even kernel, maps 8x8 .. 1x1 at 32 px: cropped kernels in the graph
    path = tmp_path / "model.onnx"
    export_onnx(model, str(path), img_size=32)
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic, not fixed
    assert onnx_max_error(model, str(path), img_size=32, batch_sizes=(1, 3)) <= 1e-4


def test_exported_program_round_trip(tmp_path):
    model = small_model()
    path = tmp_path / "model.pt2"
    export_program(model, str(path), img_size=32)
    loaded = torch.export.load(str(path)).module()
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)


def test_safetensors_round_trip(tmp_path):
    model = small_model()
    path = tmp_path / "model.safetensors"
    export_safetensors(model, str(path), "custom")
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["model"] == "custom" and f.metadata()["num_classes"] == "7"
        assert set(f.keys()) == set(model.state_dict())
    rebuilt = small_model()
    rebuilt.load_state_dict({k: torch.zeros_like(v) for k, v in rebuilt.state_dict().items()})
    from safetensors.torch import load_file

    rebuilt.load_state_dict(load_file(str(path)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.skipif(not TINY_CKPT.exists(), reason=f"official fixture not found at {TINY_CKPT} (../shared absent)")
def test_cli_official_checkpoint_to_safetensors_and_back(tmp_path):
    """An official-layout checkpoint goes in; the safetensors file (our layout) rebuilds the same model."""
    io = torch.load(SHARED / "official_fcvit_tiny_random_io.pt", weights_only=True)
    out = tmp_path / "tiny.safetensors"
    args = ["export", "--model", "fcvit_tiny", "--checkpoint", str(TINY_CKPT), "--format", "safetensors"]
    assert main([*args, "--output", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert not any(k.startswith(("network.", "patch_embed.")) for k in f.keys())
    model = load_safetensors(str(out))
    with torch.no_grad():
        torch.testing.assert_close(model(io["x160x192"]), io["logits160x192"], rtol=0, atol=1e-4)


def test_cli_onnx_export_checks_onnxruntime(tmp_path, capsys):
    out = tmp_path / "resnet.onnx"
    assert main(["export", "--model", "test_resnet", "--format", "onnx", "--img-size", "32", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "max abs difference" in printed
    assert "[torch.onnx]" not in printed  # the exporter's progress goes to stderr: stdout holds results (fcvit bench)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'fcvit_huge'"):
        load_model("fcvit_huge")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_model("fcvit_tiny", checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(small_model(), str(tmp_path / "m.onnx"), img_size=32, opset=16)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_safetensors(str(plain))
