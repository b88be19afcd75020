"""fcvit train end to end on tiny models: outputs, falling loss, kill-and-resume, NaN, bad images."""

from __future__ import annotations

import csv
import json
import random
import signal
import sys

import numpy as np
import pytest
import torch
from train_utils import TINY, make_fashion_root, make_image_folder, run_cli

import fcvit.train.train as train_module
from fcvit.cli import main
from fcvit.engine.checkpoint import load_checkpoint
from fcvit.train.config import load_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    return make_fashion_root(tmp_path_factory.mktemp("fm"), n_train=256, n_test=128)


def _fm_args(root, out, *extra):
    return ["train", *TINY, "--data-dir", str(root), "--output", str(out), "--batch-size", "32", *extra]


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_loss_falls_and_run_directory(fm_root, tmp_path, capsys):
    assert main(_fm_args(fm_root, tmp_path, "--experiment", "run", "--epochs", "3", "--lr", "5e-3")) == 0
    run = tmp_path / "run"
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[2] < losses[0] - 0.3, losses
    summary = json.loads((run / "summary.json").read_text())
    for key in ("top1", "top5", "best_top1", "epochs", "wall_time_s", "top1_ema"):
        assert key in summary, key
    assert summary["top1"] == pytest.approx(float(rows[-1]["val_top1"]))
    assert summary["best_top1"] == max(float(r["val_top1_ema"]) for r in rows)  # EMA on: selected by EMA top-1
    assert summary["top1"] > 30  # 10 classes: chance is 10%
    assert (run / "curves.png").stat().st_size > 10_000
    assert list((run / "tb").glob("events.out.tfevents.*"))
    cfg = load_config(run / "config.yaml")
    assert (cfg.in_chans, cfg.img_size, cfg.crop_mode, cfg.lr) == (1, 28, "pad", 5e-3)
    last, best = load_checkpoint(run / "checkpoint-last.pth"), load_checkpoint(run / "checkpoint-best.pth")
    assert (last["epoch"], last["batch"], last["step"]) == (3, 0, 24)
    assert best["epoch"] == summary["best_epoch"]
    assert last["class_names"][0] == "T-shirt/top" and last["data_config"]["input_size"] == [1, 28, 28]
    out = capsys.readouterr().out
    assert "epoch 3/3: train loss" in out and "top-1" in out


DRIVER = """
import os, signal, sys
import fcvit.train.train as T
from fcvit.cli import main
save = T.save_checkpoint
def save_then_maybe_die(obj, path):
    save(obj, path)
    if obj["step"] == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
T.save_checkpoint = save_then_maybe_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_and_resume_equals_uninterrupted(fm_root, tmp_path):
    """SIGKILL right after the step-10 checkpoint (epoch 2, batch 2), resume: same weights as no interruption."""
    common = ["--epochs", "2", "--checkpoint-every", "5", "--drop-path", "0.1", "--crop-pad", "2"]
    assert main(_fm_args(fm_root, tmp_path, "--experiment", "straight", *common)) == 0
    killed = run_cli(
        _fm_args(fm_root, tmp_path, "--experiment", "killed", *common),
        cwd=tmp_path,
        env={"KILL_AT_STEP": "10"},
        prefix=[sys.executable, "-c", DRIVER],
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ckpt = load_checkpoint(tmp_path / "killed" / "checkpoint-last.pth")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 2, 10)
    resumed = run_cli(["train", "--resume", str(tmp_path / "killed" / "checkpoint-last.pth")], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at epoch 2 batch 2" in resumed.stdout
    a = load_checkpoint(tmp_path / "straight" / "checkpoint-last.pth")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint-last.pth")
    assert b["step"] == a["step"] == 16
    for part in ("model", "model_ema"):
        for k, v in a[part].items():
            assert torch.allclose(v.float(), b[part][k].float(), rtol=0, atol=1e-6), (part, k)
    for k, v in a["optimizer"]["state"].items():
        assert torch.allclose(v["exp_avg"], b["optimizer"]["state"][k]["exp_avg"], rtol=0, atol=1e-6)
    # PyTorch's fused AdamW, in the uninterrupted run and after the resume.
    assert all(group["fused"] for ckpt in (a, b) for group in ckpt["optimizer"]["param_groups"])
    assert [r["val_top1"] for r in _rows(tmp_path / "straight")] == [r["val_top1"] for r in _rows(tmp_path / "killed")]


def test_validation_never_changes_the_trained_weights(fm_root, tmp_path, monkeypatch):
    """Two runs that differ only in what validation does (how many images it scores, and whether it draws from
    Python's, NumPy's and torch's global generators) end with bitwise equal weights and EMA weights, although the
    training after each validation draws from those generators (drop path: torch; mixup: NumPy)."""
    recipe = ("--epochs", "2", "--train-limit", "64", "--drop-path", "0.1", "--mixup", "0.2", "--model-ema")
    assert main(_fm_args(fm_root, tmp_path, "--experiment", "plain", "--val-limit", "16", *recipe)) == 0
    real_evaluate = train_module.evaluate

    def drawing_evaluate(*args, **kwargs):
        random.random(), np.random.rand(), torch.rand(1)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", drawing_evaluate)
    assert main(_fm_args(fm_root, tmp_path, "--experiment", "drawing", "--val-limit", "32", *recipe)) == 0
    plain, drawing = (load_checkpoint(tmp_path / name / "checkpoint-last.pth") for name in ("plain", "drawing"))
    assert [r["val_loss"] for r in _rows(tmp_path / "plain")] != [r["val_loss"] for r in _rows(tmp_path / "drawing")]
    for key in ("model", "model_ema"):
        assert plain[key].keys() == drawing[key].keys()
        assert all(torch.equal(plain[key][k], drawing[key][k]) for k in plain[key]), key


def test_nan_loss_stops_and_keeps_last_good_checkpoint(fm_root, tmp_path, monkeypatch, capsys):
    class NaNOnFifthCall(torch.nn.CrossEntropyLoss):
        calls = 0

        def forward(self, logits, target):
            NaNOnFifthCall.calls += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if NaNOnFifthCall.calls == 5 else loss

    monkeypatch.setattr(train_module, "LabelSmoothingCrossEntropy", lambda smoothing: NaNOnFifthCall())
    assert main(_fm_args(fm_root, tmp_path, "--experiment", "nan", "--checkpoint-every", "2")) == 1
    err = capsys.readouterr().err
    assert "loss is nan at epoch 1, batch 5 (step 5)" in err and "checkpoint-last.pth" in err
    ckpt = load_checkpoint(tmp_path / "nan" / "checkpoint-last.pth")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "summary.json").exists()


def test_image_folder_full_recipe_and_bad_images(tmp_path, capsys):
    """RandAugment, random erasing, mixup and cutmix on an ImageFolder of mixed sizes and modes."""
    root = make_image_folder(tmp_path / "data", per_class=8)
    (root / "train" / "class_2" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    args = ["train", *TINY, "--data", str(root), "--output", str(tmp_path), "--img-size", "32", "--batch-size", "8"]
    args += ["--aa", "rand-m9-mstd0.5", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0", "--workers", "0"]
    assert main([*args, "--experiment", "strict"]) == 1
    assert "corrupt.png" in capsys.readouterr().err
    assert main([*args, "--experiment", "skip", "--skip-bad-images", "--epochs", "1"]) == 0
    rows = _rows(tmp_path / "skip")
    assert int(rows[0]["skipped_images"]) == 1  # 25 images, 3 full batches of 8: the one bad image sits in them
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0 <= summary["top1"] <= 100
    assert load_checkpoint(tmp_path / "skip" / "checkpoint-last.pth")["class_names"] == [
        "class_0",
        "class_1",
        "class_2",
    ]
