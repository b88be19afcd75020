"""The checkpoint of a grey (1-channel) ``fcvit train`` run through every command that reads checkpoints: validate,
predict, export (and the exported file back through validate and predict), analyze stats|similarity|compare; bare
weights files; corrupt files and other tasks' checkpoints as one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_utils import TINY, TINY_KWARGS, make_fashion_root, one_thread

from fcvit.cli import main
from fcvit.engine.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(checkpoint, data root, grey image folder, summary) of a 1-epoch tiny run on 28 px grey images."""
    tmp = tmp_path_factory.mktemp("grey")
    root = make_fashion_root(tmp / "data", n_train=128, n_test=64)
    args = ["train", *TINY, "--data-dir", str(root), "--output", str(tmp), "--experiment", "r", "--epochs", "1"]
    with one_thread():
        assert main([*args, "--batch-size", "32", "--no-model-ema"]) == 0
    images = tmp / "images" / "any"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (28, 28)).astype(np.uint8), "L").save(images / f"g{i}.png")
    summary = json.loads((tmp / "r" / "summary.json").read_text())
    return tmp / "r" / "checkpoint-last.pth", root, images.parent, summary


def _predict(capsys, *args) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", "--json", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def test_export_validate_predict_round_trip(run, tmp_path, capsys):
    ckpt, root, images, summary = run
    image = images / "any" / "g0.png"
    out = tmp_path / "grey.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "safetensors", "--output", str(out)]) == 0
    capsys.readouterr()
    for weights in (ckpt, out):  # the exported file alone says model, kwargs, channels, size, mean/std, classes
        assert main(["validate", "--checkpoint", str(weights), "--data-dir", str(root), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(summary["top1"])
    from_ckpt, from_file = _predict(capsys, "--checkpoint", ckpt, image), _predict(capsys, "--checkpoint", out, image)
    assert from_ckpt == from_file and from_ckpt[0]["top"][0]["class"] != "class_0"  # the class names travel too

    program = tmp_path / "grey.pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "exported-program", "--output", str(program)]) == 0
    assert "input [B, 1, H, W]" in capsys.readouterr().out
    (example,) = torch.export.load(str(program)).example_inputs[0]
    assert list(example.shape[1:]) == [1, 28, 28]  # channels and size from the checkpoint


def test_bare_weights_infer_channels_and_classes(run, tmp_path, capsys):
    ckpt, _, images, _ = run
    bare = tmp_path / "bare.pth"
    save_checkpoint(load_checkpoint(ckpt)["model"], bare)
    image = images / "any" / "g1.png"
    base = ["--model", "fcvit_tiny", "--checkpoint", bare, "--topk", "10"]
    inferred = _predict(capsys, *base, "--model-kwargs", json.dumps(TINY_KWARGS), image)
    assert [t["class"] for t in inferred[0]["top"]][:1][0].startswith("class_") and len(inferred[0]["top"]) == 10
    kwargs_too = json.dumps({**TINY_KWARGS, "in_chans": 1, "num_classes": 10})  # once "got multiple values"
    assert _predict(capsys, *base, "--model-kwargs", kwargs_too, image) == inferred
    flags = _predict(capsys, *base, "--model-kwargs", json.dumps(TINY_KWARGS), "--in-chans", "1", image)
    assert flags == inferred


def test_analyze_reads_the_checkpoint(run, tmp_path, capsys):
    ckpt, _, images, _ = run
    common = ["--model", "fcvit_tiny", "--no-optimize"]
    data = ["--data", str(images), "--limit", "4", "--workers", "0", "--batch-size", "2"]
    capsys.readouterr()
    assert main(["analyze", "stats", *common, "--checkpoint", str(ckpt), *data, "--output", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "attention statistics [2/2]" in err  # plain lines in a redirected log
    record = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert record["num_images"] == 4
    similarity = ["analyze", "similarity", *common, "--checkpoint", str(ckpt), str(images / "any" / "g0.png")]
    assert main([*similarity, "--output", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "similarity.json").read_text())["input_size"] == [1, 28, 28]
    assert main(["analyze", "compare", str(ckpt), str(ckpt), *common, *data, "--output", str(tmp_path / "c")]) == 0


def test_corrupt_files_are_one_line_in_every_command(run, tmp_path, capsys):
    ckpt, root, images, _ = run
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(ckpt.read_bytes()[:3000])
    safetensors = tmp_path / "cut.safetensors"
    safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": np.float64(1.0)}, pickled)  # numpy: refused by safe loading
    out = tmp_path / "o"
    for bad in (truncated, safetensors, pickled):
        commands = [
            ["validate", "--checkpoint", bad, "--data-dir", root],
            ["predict", "--checkpoint", bad, images / "any" / "g0.png"],
            ["export", "--checkpoint", bad, "--format", "safetensors", "--output", out / "x.safetensors"],
            ["analyze", "stats", "--model", "fcvit_tiny", "--checkpoint", bad, "--data", images, "--output", out],
        ]
        for command in commands:
            capsys.readouterr()
            assert main(list(map(str, command))) != 0, command
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and str(bad) in err and "weights_only=False" not in err, (command, err)


def test_other_tasks_checkpoints_say_what_they_are(run, tmp_path, capsys):
    ckpt, _, images, _ = run
    det = tmp_path / "det.pth"
    save_checkpoint({"task": "det", "model": {"w": torch.zeros(1)}, "config": {}}, det)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(det), str(images / "any" / "g0.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("is a Mask R-CNN detection checkpoint (fcvit det train), not a classifier: "
                        "use `fcvit det predict|eval` with it") and len(err.splitlines()) == 1  # fmt: skip
    assert main(["det", "predict", str(ckpt), str(images / "any" / "g0.png"), "--out", str(tmp_path / "p")]) == 1
    assert "holds a fcvit_tiny classifier (fcvit train): use `fcvit predict|validate`" in capsys.readouterr().err
