"""``fcvit det|seg train|eval|predict`` end to end on a tiny generated set: run directory, resume, checkpoints, PNGs."""

from __future__ import annotations

import csv
import json
import re
import sys

import pytest
import torch
from PIL import Image
from train_utils import TORCHRUN, run_cli

from fcvit.cli import main
from fcvit.data import fashion_mnist_paths
from fcvit.dense.config import CanvasConfig, DetConfig, SegConfig
from fcvit.dense.data import make_dense_dataset
from fcvit.dense.engine import load_trained

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("torch_one_thread")]

TINY = ["--model-kwargs", '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}', "--workers", "0", "--lr", "1e-3"]
DET = ["--batch-size", "2", "--train-sizes", "64", "--test-size", "64", "--max-size", "64", "--warmup-iters", "1"]
DET += ["--fpn-channels", "16", "--representation-size", "32", "--box-batch-size-per-image", "32"]
SEG = ["--batch-size", "2", "--crop-size", "48", "--test-size", "64", "--fpn-channels", "16", "--head-channels", "8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    try:
        fashion_mnist_paths("train")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("dense_data")
    make_dense_dataset(root, num_train=4, num_val=2, cfg=CanvasConfig(canvas_size=64, max_objects=2), seed=1)
    return root


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_resume_eval(task, data_dir, out, first, more, capsys) -> tuple:
    """Train ``first`` args into ``out/run``, resume with ``more``, then eval the run; returns (run_dir, eval dict)."""
    extra = TINY + (DET if task == "det" else SEG)
    args = [task, "train", "--data-dir", str(data_dir), "--output", str(out), "--experiment", "run", "--eval-before"]
    assert main(args + extra + first) == 0
    metric = "bbox_AP" if task == "det" else "mIoU"
    assert re.search(rf"^{task} 1/\d+ \(iteration 2\): .*{metric} ", capsys.readouterr().err, re.M)  # per evaluation
    run_dir = out / "run"
    for name in ("config.yaml", "checkpoint-last.pth", "checkpoint-best.pth", "metrics.csv", "curves.png"):
        assert (run_dir / name).is_file(), name
    assert main([task, "train", "--resume", str(run_dir / "checkpoint-last.pth")] + more) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    capsys.readouterr()
    assert main([task, "eval", str(run_dir / "checkpoint-last.pth"), "--output", str(out / "eval.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "eval.json").read_text())
    return run_dir, summary, printed


def test_det_train_resume_eval_predict(data, tmp_path, capsys):
    run_dir, summary, ev = _train_resume_eval(
        "det", data / "coco", tmp_path, ["--epochs", "1", "--lr-steps", "1"], ["--epochs", "2"], capsys
    )
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]  # row 0: before training
    assert [r["iter"] for r in rows] == ["0", "2", "4"]  # 4 images, batch 2: 2 steps per epoch
    config, ckpt = load_trained(run_dir / "checkpoint-last.pth", "det")
    assert ckpt["round"] == 2 and ckpt["step"] == 4 and DetConfig(**config).num_classes == 11
    assert ckpt["class_names"][1] == "T-shirt/top"
    # checkpoint round trip: the evaluation of the saved model reproduces the training run's last evaluation
    for k in ("bbox_AP", "bbox_AP50", "segm_AP"):
        assert ev[k] == pytest.approx(summary["final"][k], abs=1e-9), k
    with pytest.raises(ValueError, match="'det' checkpoint"):
        load_trained(run_dir / "checkpoint-last.pth", "seg")
    images = sorted((data / "coco" / "val2017").glob("*.png"))
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["det", "predict", str(run_dir), *map(str, images), "--out", str(out), "--score-threshold", "0"]) == 0
    for img in images:
        with Image.open(out / f"{img.stem}_det.png") as png:
            png.verify()
        with Image.open(out / f"{img.stem}_det.png") as png, Image.open(img) as src:
            assert png.format == "PNG" and png.size == src.size and png.mode == "RGB"
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == len(images) and all(len(r["boxes_xyxy"]) == len(r["labels"]) for r in records)
    every = [len(r["scores"]) for r in records]
    assert every[0] > 0 and _drawn_and_below(capsys.readouterr().out, images, "0") == [(n, 0) for n in every]
    # at the median score of the first image, each image's detections split into those drawn and those below
    threshold, out2 = sorted(records[0]["scores"])[every[0] // 2], tmp_path / "pred2"
    args = ["det", "predict", str(run_dir), *map(str, images), "--out", str(out2), "--score-threshold", f"{threshold}"]
    assert main(args) == 0
    counts = _drawn_and_below(capsys.readouterr().out, images, f"{threshold:g}")
    records = json.loads((out2 / "predictions.json").read_text())
    assert counts == [(len(r["scores"]), r["below_threshold"]) for r in records]
    assert [drawn + below for drawn, below in counts] == every and min(counts[0]) > 0
    with pytest.raises(SystemExit):
        main(["det", "predict", "--help"])
    assert re.search(r"--score-threshold .*default: 0\.5", " ".join(capsys.readouterr().out.split()))


def _drawn_and_below(out: str, images: list, threshold: str) -> list[tuple[int, int]]:
    """(drawn, below) of each image from ``fcvit det predict``'s lines ("IMG: N detections >= T (M below)")."""
    lines = out.splitlines()
    assert lines[-1].startswith(f"wrote {len(images)} overlay PNGs and predictions.json")
    pattern = r"(\d+) detections? >= " + re.escape(threshold) + r" \((\d+) below\)"
    matches = [re.fullmatch(re.escape(str(img)) + ": " + pattern, line) for img, line in zip(images, lines)]
    assert len(lines) == len(images) + 1 and all(matches), lines
    return [(int(m[1]), int(m[2])) for m in matches]


def test_seg_train_resume_eval_predict(data, tmp_path, capsys):
    run_dir, summary, ev = _train_resume_eval(
        "seg", data / "ade", tmp_path, ["--iters", "4", "--eval-interval", "2"], [], capsys
    )
    # the first run trained all 4 iterations; resuming a finished run adds nothing
    assert [r["iter"] for r in _rows(run_dir)] == ["0", "2", "4"]
    config, ckpt = load_trained(run_dir / "checkpoint-last.pth", "seg")
    assert load_trained(run_dir, "seg")[1]["best"] == ckpt["best"]  # a run directory means its best checkpoint
    cfg = SegConfig(**config)
    assert (cfg.num_classes, cfg.reduce_zero_label) == (11, False) and ckpt["step"] == 4
    assert ev["mIoU"] == pytest.approx(json.loads((run_dir / "summary.json").read_text())["final"]["mIoU"])
    assert 0.0 <= ev["mIoU"] <= 1.0 and 0.0 <= ev["aAcc"] <= 1.0
    images = sorted((data / "ade" / "images" / "validation").glob("*.png"))
    out = tmp_path / "pred"
    assert main(["seg", "predict", str(run_dir / "checkpoint-best.pth"), str(images[0].parent), "--out", str(out)]) == 0
    for img in images:
        with Image.open(out / f"{img.stem}_labels.png") as labels, Image.open(img) as src:
            assert labels.format == "PNG" and labels.mode == "P" and labels.size == src.size
            assert max(labels.getdata()) < cfg.num_classes
        with Image.open(out / f"{img.stem}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == src.size
    assert summary["steps"] == 4


@pytest.mark.parametrize("task", ["det", "seg"])
def test_eval_before_leaves_the_trained_weights_unchanged(task, data, tmp_path):
    """The CPU demo recipe, shrunk to two steps on tiny canvases, with and without --eval-before: bitwise equal
    weights (evaluation draws from torch's global generator, which multi-scale training, RPN sampling and the
    segmentation crops draw from too)."""
    data_dir = data / ("coco" if task == "det" else "ade")
    shrink = ["--model-kwargs", '{"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}', "--batch-size", "2"]
    if task == "det":
        shrink += ["--epochs", "1", "--lr-steps", "1", "--train-sizes", "48", "64", "--test-size", "64"]
        shrink += ["--max-size", "64", "--fpn-channels", "16", "--representation-size", "32"]
    else:
        shrink += ["--iters", "2", "--eval-interval", "1", "--crop-size", "48", "--test-size", "64"]
        shrink += ["--fpn-channels", "16", "--head-channels", "8"]
    weights = []
    for name, extra in (("plain", []), ("eval-before", ["--eval-before"])):
        args = [task, "train", "--data-dir", str(data_dir), "--output", str(tmp_path), "--experiment", name]
        assert main(args + ["--preset", "cpu-demo"] + shrink + extra) == 0
        weights.append(load_trained(tmp_path / name / "checkpoint-last.pth", task)[1]["model"])
    assert len(_rows(tmp_path / "eval-before")) == len(_rows(tmp_path / "plain")) + 1  # row 0: the extra evaluation
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_bad_input_is_one_line_and_exit_1(data, tmp_path, capsys):
    args = ["seg", "train", "--data-dir", str(data / "ade"), "--output", str(tmp_path), "--experiment", "r"]
    assert main(args + TINY + SEG + ["--iters", "1", "--eval-interval", "1"]) == 0
    capsys.readouterr()
    assert main(args + TINY + SEG) == 1
    err = capsys.readouterr().err
    assert err.startswith("fcvit seg train: error:") and "--resume" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nlearning_rate: 3\n")
    assert main(["seg", "train", "--data-dir", str(data / "ade"), "--config", str(bad)]) == 1
    assert "learning_rate" in capsys.readouterr().err
    assert main(["det", "train", "--data-dir", str(tmp_path / "nowhere")] + TINY) == 1
    assert "instances_train2017.json" in capsys.readouterr().err
    assert main(["det", "eval", str(tmp_path / "r" / "checkpoint-last.pth")]) == 1
    assert "'seg' checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo tested on Linux")
def test_seg_train_under_torchrun_two_processes(data, tmp_path):
    """Two CPU processes (gloo): one batch split over ranks, evaluation gathered; rank 0 writes the run."""
    args = ["seg", "train", "--data-dir", str(data / "ade"), "--output", str(tmp_path), "--experiment", "ddp"]
    args += ["--iters", "2", "--eval-interval", "2", "--device", "cpu"] + TINY + SEG
    proc = run_cli(args, cwd=tmp_path, prefix=[*TORCHRUN, "-m", "fcvit.cli"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    assert torch.load(tmp_path / "ddp" / "checkpoint-last.pth", weights_only=True)["step"] == 2
