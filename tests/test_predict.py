"""fcvit validate and fcvit predict on a checkpoint of a tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from train_utils import TINY, TINY_KWARGS, make_fashion_root, make_image_folder, one_thread

from fcvit.cli import main
from fcvit.data import FASHION_MNIST_CLASSES
from fcvit.engine.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def fm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    root = make_fashion_root(tmp / "data", n_train=128, n_test=96)
    args = ["train", *TINY, "--data-dir", str(root), "--output", str(tmp), "--experiment", "r", "--epochs", "1"]
    with one_thread():
        assert main([*args, "--batch-size", "32"]) == 0
    return root, tmp / "r"


def test_validate_reproduces_training_metrics(fm_run, capsys):
    root, run = fm_run
    capsys.readouterr()
    ckpt = str(run / "checkpoint-last.pth")
    assert main(["validate", "--checkpoint", ckpt, "--data-dir", str(root), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert metrics["n"] == 96
    assert metrics["top1"] == pytest.approx(summary["top1"]) and metrics["top5"] == pytest.approx(summary["top5"])
    assert (
        main(["validate", "--model", "fcvit_tiny", "--checkpoint", ckpt, "--ema", "--data-dir", str(root), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(summary["top1_ema"])
    assert main(["validate", "--model", "resnet18", "--checkpoint", ckpt, "--data-dir", str(root)]) == 1
    assert "holds a fcvit_tiny, not a resnet18" in capsys.readouterr().err


def test_predict_any_size_and_mode_and_broken_files(fm_run, tmp_path, capsys):
    _, run = fm_run
    rng = np.random.default_rng(0)
    paths = []
    for name, mode, size in [("grey.png", "L", (28, 28)), ("odd.jpg", "RGB", (97, 13)), ("rgba.png", "RGBA", (40, 64))]:
        arr = rng.integers(0, 255, (size[1], size[0], 4)).astype(np.uint8)
        img = Image.fromarray(arr, "RGBA").convert(mode)
        img.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.insert(1, str(tmp_path / "broken.png"))
    capsys.readouterr()
    code = main(["predict", "--checkpoint", str(run / "checkpoint-best.pth"), "--topk", "3", "--json", *paths])
    out = capsys.readouterr()
    assert code == 1  # some images could not be read
    assert "broken.png" in out.err
    results = json.loads(out.out)
    assert [r["image"] for r in results] == [p for p in paths if "broken" not in p]
    for r in results:
        assert len(r["top"]) == 3
        assert sum(t["prob"] for t in r["top"]) <= 1.0 + 1e-6
        assert r["top"][0]["prob"] >= r["top"][1]["prob"] >= r["top"][2]["prob"]
        assert r["top"][0]["class"] in FASHION_MNIST_CLASSES
    assert main(["predict", "--checkpoint", str(run / "checkpoint-best.pth"), paths[0]]) == 0
    assert capsys.readouterr().out.startswith(f"{paths[0]}: ")


def test_predict_with_bare_state_dict_uses_pretrained_cfg(tmp_path, capsys):
    """A checkpoint without fcvit metadata: classes from the head, eval transform from the pretrained_cfg."""
    model = timm.create_model("fcvit_tiny", num_classes=4, **TINY_KWARGS)
    save_checkpoint(model.state_dict(), tmp_path / "bare.pth")
    root = make_image_folder(tmp_path / "data", per_class=1, classes=1)
    image = next((root / "val").rglob("*.*"))
    args = ["predict", "--model", "fcvit_tiny", "--model-kwargs", json.dumps(TINY_KWARGS), "--json"]
    assert main([*args, "--checkpoint", str(tmp_path / "bare.pth"), str(image)]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    with torch.no_grad():
        from timm.data import create_transform, resolve_model_data_config

        x = create_transform(**resolve_model_data_config(model))(Image.open(image).convert("RGB"))
        expected = model.eval()(x[None]).softmax(1)[0]
    assert result["top"][0]["class"] == f"class_{int(expected.argmax())}"
    assert result["top"][0]["prob"] == pytest.approx(float(expected.max()), abs=1e-5)
