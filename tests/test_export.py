"""``fcvit export``: ONNX (onnxruntime matches PyTorch, dynamic batch), torch.export programs and safetensors
round trips; every format carries the checkpoint's record (model, classes, preprocessing, version); failed exports
leave an existing file alone; non-finite weights are refused; official checkpoints as input; clear errors."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from PIL import Image
from safetensors import safe_open
from train_utils import TINY_KWARGS

import fcvit
from fcvit.cli import main
from fcvit.engine.checkpoint import save_checkpoint
from fcvit.export import (
    FORMATS,
    RECORD_KEYS,
    export_onnx,
    export_program,
    export_record,
    export_safetensors,
    load_model,
    load_safetensors,
    read_record,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
TINY_CKPT = SHARED / "official_fcvit_tiny_random.pth"
NAMES = ["cat", "dog", "bird"]
# a grey 32 px eval config unlike any model default, so that the test sees it travel
GREY_CONFIG = {
    "input_size": [1, 32, 32],
    "interpolation": "bilinear",
    "mean": [0.4],
    "std": [0.2],
    "crop_pct": 0.9,
    "crop_mode": "center",
}


def small_model(**kwargs) -> fcvit.FCViT:
    torch.manual_seed(0)
    return fcvit.FCViT(depths=(1, 1, 1, 1), dims=(16, 16, 32, 32), num_classes=7, **kwargs).eval()


def grey_checkpoint(path: Path, edit: Callable[[torch.nn.Module], object] | None = None) -> torch.nn.Module:
    """Save an ``fcvit train``-style checkpoint of a tiny grey 3-class fcvit_tiny (weights changed by ``edit``)."""
    torch.manual_seed(0)
    model = timm.create_model("fcvit_tiny", num_classes=len(NAMES), in_chans=1, **TINY_KWARGS).eval()
    if edit is not None:
        with torch.no_grad():
            edit(model)
    record = dict(model_name="fcvit_tiny", model_kwargs=TINY_KWARGS, num_classes=len(NAMES), class_names=NAMES)
    save_checkpoint({"model": model.state_dict(), **record, "data_config": GREY_CONFIG}, path)
    return model


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("fcvit export: error: "), err
    return err[-1]


def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path):
    model = small_model(kernel_size=8)  # even kernel, maps 8x8 .. 1x1 at 32 px: cropped kernels in the graph
    path = tmp_path / "model.onnx"
    assert export_onnx(model, str(path), img_size=32) <= 1e-4
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == 18
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic, not fixed
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = torch.randn(batch, 3, 32, 32)
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=0, atol=1e-4)


def test_exported_program_round_trip(tmp_path):
    model = small_model()
    path = tmp_path / "model.pt2"
    assert export_program(model, str(path), img_size=32) <= 1e-5
    loaded = torch.export.load(str(path)).module()
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)


def test_safetensors_round_trip(tmp_path):
    model = small_model()
    path = tmp_path / "model.safetensors"
    config = {**GREY_CONFIG, "input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    export_safetensors(model, str(path), export_record("custom", {}, 7, [f"c{i}" for i in range(7)], config))
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


def test_every_format_carries_the_checkpoints_record(tmp_path, capsys):
    """What the checkpoint records comes back from each file through its own runtime's API (an --img-size given
    replaces the recorded input size, and says so), and the ONNX file's data config alone preprocesses a grey image
    of another size for onnxruntime."""
    model = grey_checkpoint(tmp_path / "grey.pth")
    outputs = {
        "onnx": tmp_path / "m.onnx",
        "exported-program": tmp_path / "m.pt2",
        "safetensors": tmp_path / "m.safetensors",
    }
    sizes = {"onnx": 32, "exported-program": 32, "safetensors": 48}
    capsys.readouterr()
    for fmt, out in outputs.items():
        args = ["export", "--checkpoint", str(tmp_path / "grey.pth"), "--format", fmt, "--output", str(out)]
        assert main([*args, *(["--img-size", "48"] if sizes[fmt] == 48 else [])]) == 0
        printed = capsys.readouterr().out
        assert f"input [B, 1, H, W] at {sizes[fmt]}x{sizes[fmt]}" in printed
        assert "record: model fcvit_tiny, 3 class names" in printed
        assert ("--img-size 48 (the checkpoint records 32)" in printed) == (sizes[fmt] == 48)
        assert ("max abs difference" in printed) == (fmt != "safetensors")
        assert "[torch.onnx]" not in printed  # the exporter's progress goes to stderr: stdout holds results

    session = ort.InferenceSession(str(outputs["onnx"]), providers=["CPUExecutionProvider"])
    from_onnx = session.get_modelmeta().custom_metadata_map
    from_program = dict.fromkeys(RECORD_KEYS, "")
    program = torch.export.load(str(outputs["exported-program"]), extra_files=from_program).module()
    with safe_open(str(outputs["safetensors"]), framework="pt") as f:
        from_safetensors = f.metadata()
    for fmt, found in zip(outputs, (from_onnx, from_program, from_safetensors)):
        assert found["model"] == "fcvit_tiny" and found["fcvit_version"] == fcvit.__version__, fmt
        assert json.loads(found["model_kwargs"]) == TINY_KWARGS and int(found["num_classes"]) == 3, fmt
        assert json.loads(found["class_names"]) == NAMES, fmt
        size = [1, sizes[fmt], sizes[fmt]]
        assert json.loads(found["data_config"]) == {**GREY_CONFIG, "input_size": size}, fmt
        assert read_record(outputs[fmt], fmt) == {k: found[k] for k in RECORD_KEYS}, fmt

    transform = timm.data.create_transform(**json.loads(from_onnx["data_config"]))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8), "L")
    x = transform(image)[None]
    assert x.shape == (1, 1, 32, 32)
    with torch.no_grad():
        expected = model(x)
        (got,) = session.run(None, {"image": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(program(x), expected, rtol=0, atol=1e-5)
        assert torch.equal(load_safetensors(outputs["safetensors"])(x), expected)  # rebuilt from the record alone


def test_failed_onnx_export_keeps_the_existing_file(tmp_path, capsys):
    """--opset 999 and a failed --tolerance check (logits scaled up, so onnxruntime's rounding shows) leave the
    file that was there byte for byte, even with --overwrite, and no temporary file."""
    grey_checkpoint(tmp_path / "big.pth", lambda m: m.head.weight.mul_(1e3))
    folder = tmp_path / "out"
    folder.mkdir()
    good = folder / "m.onnx"
    good.write_bytes(b"an earlier good export")
    base = ["export", "--checkpoint", str(tmp_path / "big.pth"), "--format", "onnx", "--output", str(good)]
    for flags, message in (
        (["--opset", "999"], "ONNX opset must be 17 (LayerNorm/GroupNorm ops) to "),
        (["--tolerance", "1e-7"], f"{good}: onnxruntime differs from PyTorch by "),
    ):
        capsys.readouterr()
        assert main([*base, *flags, "--overwrite"]) == 1
        err = one_line_error(capsys)
        assert message in err and "0.00e+00" not in err, err
        assert good.read_bytes() == b"an earlier good export"
        assert [p.name for p in folder.iterdir()] == ["m.onnx"]


def test_non_finite_outputs_fail_the_check(tmp_path, capsys):
    """Finite weights whose logits overflow: the saved program and PyTorch both give Inf/NaN, which is a failure
    (not a difference of 0), and the existing file stays."""

    def overflow(model: torch.nn.Module) -> None:
        model.norm.weight.fill_(1e30)
        model.head.weight.fill_(1e30)

    grey_checkpoint(tmp_path / "inf.pth", overflow)
    good = tmp_path / "out" / "m.pt2"
    good.parent.mkdir()
    good.write_bytes(b"an earlier good export")
    args = ["export", "--checkpoint", str(tmp_path / "inf.pth"), "--format", "exported-program"]
    assert main([*args, "--output", str(good), "--overwrite"]) == 1
    err = one_line_error(capsys)
    assert f"{good}: the saved program differs from PyTorch by NaN/Inf" in err
    assert good.read_bytes() == b"an earlier good export" and [p.name for p in good.parent.iterdir()] == ["m.pt2"]


def test_non_finite_weights_are_refused(tmp_path, capsys):
    """From a checkpoint (the front door refuses it) and from a model in memory (each export function does)."""

    def poison(model: torch.nn.Module) -> None:
        model.stages[0].blocks[0].norm1.weight[1] = math.nan
        model.head.weight[0, 0] = math.inf

    model = grey_checkpoint(tmp_path / "nan.pth", poison)
    first = "tensor 'stages.0.blocks.0.norm1.weight' holds 1 non-finite value(s) (NaN or inf) of 8"
    for fmt in FORMATS:
        out = tmp_path / f"m.{fmt}"
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(tmp_path / "nan.pth"), "--format", fmt, "--output", str(out)]) == 1
        assert f"{tmp_path / 'nan.pth'}: {first}" in one_line_error(capsys)
        assert not out.exists()
    record = export_record("fcvit_tiny", TINY_KWARGS, 3, NAMES, GREY_CONFIG)
    for export in (
        lambda path: export_onnx(model, path, 32, in_chans=1),
        lambda path: export_program(model, path, 32, in_chans=1),
        lambda path: export_safetensors(model, path, record),
    ):
        with pytest.raises(ValueError, match=f"^the model to export: {re.escape(first)}"):
            export(tmp_path / "m")
        assert not (tmp_path / "m").exists()


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


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'fcvit_huge'"):
        load_model("fcvit_huge")
    with pytest.raises(FileNotFoundError, match="missing.pth does not exist"):
        load_model("fcvit_tiny", checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="opset must be 17 .* got 16"):
        export_onnx(small_model(), str(tmp_path / "m.onnx"), img_size=32, opset=16)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="plain.safetensors carries no fcvit export record"):
        load_safetensors(str(plain))
    with pytest.raises(ValueError, match="the suffix '.bin' does not"):
        read_record(tmp_path / "m.bin")
    with pytest.raises(FileNotFoundError, match="m.onnx does not exist"):
        read_record(tmp_path / "m.onnx")
