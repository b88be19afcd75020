"""Hostile and careless input: nothing lost, every mistake one line on stderr with a non-zero exit (issue 19)."""

from __future__ import annotations

import csv
import errno
import json
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from train_utils import TINY, TINY_KWARGS, TORCHRUN, make_fashion_root, make_image_folder, run_cli

import fcvit.train.train as train_module
from fcvit.cli import main
from fcvit.data import ImageFolderDataset, load_image
from fcvit.data.folder import BadImageError
from fcvit.data.loaders import DatasetLoader
from fcvit.engine.atomic import DiskFullError
from fcvit.engine.checkpoint import load_checkpoint, save_checkpoint
from fcvit.engine.rundir import clean_orphans, new_run_dir
from fcvit.train.config import load_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    return make_fashion_root(tmp_path_factory.mktemp("fm"), n_train=64, n_test=32)


def _train(root, out, *extra):
    """A tiny run: 64 images, batch 32 (2 steps per epoch), 1 epoch unless told."""
    return ["train", *TINY, "--data-dir", str(root), "--output", str(out), "--batch-size", "32", *extra]


def _one_line_error(capsys, command: str = "train") -> str:
    """The error line on stderr (progress lines of a run may come before it), which must be the only one."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"fcvit {command}: error: ")]
    assert len(errors) == 1 and "Traceback" not in err and err.endswith(errors[0] + "\n"), err
    return errors[0]


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- 1. never overwrite a run ---------------------------------------------------------------------------------


def test_existing_run_is_refused_and_kept(fm_root, tmp_path, capsys):
    assert main(_train(fm_root, tmp_path, "--experiment", "run", "--epochs", "1")) == 0
    summary = (tmp_path / "run" / "summary.json").read_text()
    capsys.readouterr()
    assert main(_train(fm_root, tmp_path, "--experiment", "run", "--epochs", "1", "--lr", "1e-2")) == 1
    err = _one_line_error(capsys)
    assert str(tmp_path / "run") in err and "--resume" in err
    assert (tmp_path / "run" / "summary.json").read_text() == summary  # the finished run is untouched


def test_default_run_names_differ_within_a_second(tmp_path):
    a, b = new_run_dir(str(tmp_path), "", "m-d"), new_run_dir(str(tmp_path), "", "m-d")
    assert a != b and a.name[:-7] == b.name[:-7]  # same MODEL-DATA-TIMESTAMP (one second), another suffix
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(FileExistsError, match="held already holds a run"):
        new_run_dir(str(tmp_path), "held", "m-d")
    (tmp_path / "empty").mkdir()
    assert new_run_dir(str(tmp_path), "empty", "m-d") == tmp_path / "empty"  # an empty directory is no run


def test_export_refuses_an_existing_file_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep me")
    args = ["export", "--model", "test_acmix", "--num-classes", "3", "--format", "safetensors", "--output", str(out)]
    assert main(args) == 1
    assert "--overwrite" in _one_line_error(capsys, "export") and out.read_bytes() == b"keep me"
    assert main([*args, "--overwrite"]) == 0 and out.read_bytes() != b"keep me"


# --- 3 and 7. resume means what it says; no orphan temp files ---------------------------------------------------


def test_resume_flags_take_effect_or_are_refused(fm_root, tmp_path, capsys):
    from timm.scheduler import create_scheduler_v2

    assert main(_train(fm_root, tmp_path, "--experiment", "r", "--epochs", "1", "--checkpoint-every", "0")) == 0
    last = tmp_path / "r" / "checkpoint-last.pth"
    orphan = tmp_path / "r" / ".checkpoint-last.pth.k1ll3d.pth"  # what a kill during a save leaves
    orphan.write_bytes(b"PK half a checkpoint")
    capsys.readouterr()

    for flags, refused in (
        (["--batch-size", "16"], "--batch-size"),
        (["--model", "resnet18"], "--model"),
        (["--experiment", "other"], "--experiment"),
        (["--epochs", "0"], "--epochs (command line): 0 is out of range: must be >= 1"),
    ):
        assert main(["train", "--resume", str(last), *flags]) == 1, flags
        assert refused in _one_line_error(capsys), flags
    assert load_checkpoint(last)["step"] == 2  # refused before anything was written

    assert main(["train", "--resume", str(last), "--epochs", "3", "--lr", "1e-2", "--min-lr", "1e-4"]) == 0
    out = capsys.readouterr().out
    banner = out.splitlines()[0]
    assert "changed on resume: lr 0.003 -> 0.01, epochs 1 -> 3, min_lr 1e-05 -> 0.0001" in banner
    assert "lr 0.01;" in banner  # the value used
    assert not orphan.exists()
    cfg = load_config(tmp_path / "r" / "config.yaml")
    assert (cfg.epochs, cfg.lr, cfg.min_lr) == (3, 1e-2, 1e-4)
    # the schedule is that of the new config at the resumed step: a fresh 3-epoch cosine from lr 1e-2
    rows = _rows(tmp_path / "r")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-2)
    sched, _ = create_scheduler_v2(
        opt,
        "cosine",
        num_epochs=3,
        warmup_epochs=0.2,
        warmup_lr=1e-6,
        min_lr=1e-4,
        step_on_epochs=False,
        updates_per_epoch=2,
    )
    sched.step_update(num_updates=4)
    assert float(rows[1]["lr"]) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
    assert main(["train", "--resume", str(last), "--epochs", "2"]) == 1  # fewer epochs than trained
    assert "has trained 3 epochs already" in _one_line_error(capsys)


def test_nan_before_any_checkpoint_says_none_was_written(fm_root, tmp_path, monkeypatch, capsys):
    class NaNLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, target):
            return super().forward(logits, target) * float("nan")

    monkeypatch.setattr(train_module, "LabelSmoothingCrossEntropy", lambda smoothing: NaNLoss())
    assert main(_train(fm_root, tmp_path, "--experiment", "nan")) == 1
    err = _one_line_error(capsys)
    assert "loss is nan at epoch 1, batch 1 (step 1)" in err and "No checkpoint was written yet" in err
    assert not (tmp_path / "nan" / "checkpoint-last.pth").exists()


def test_clean_orphans_removes_only_interrupted_saves(tmp_path):
    keep = ["checkpoint-last.pth", "config.yaml", ".hidden-notes"]
    for name in [*keep, ".checkpoint-last.pth.abc.pth", ".checkpoint-best.pth.xyz.pth"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in clean_orphans(tmp_path)] == [".checkpoint-best.pth.xyz.pth", ".checkpoint-last.pth.abc.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


# --- 2. images as they are --------------------------------------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    grey = np.asarray(load_image(tmp_path / "deep.png", "L"), dtype=np.float64)
    np.testing.assert_allclose(grey, ramp / 257.0, atol=0.5 + 1e-9)  # scaled by the bit depth
    rgb = np.asarray(load_image(tmp_path / "deep.png", "RGB"))
    assert rgb.shape == (64, 64, 3) and abs(rgb.mean() - 127.5) < 1  # not 99% white
    floats = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    floats.save(tmp_path / "f.tiff")
    assert np.asarray(load_image(tmp_path / "f.tiff", "L")).max() == 128


@pytest.fixture
def bomb_limit(monkeypatch):
    """PIL's decompression-bomb limit at 60k pixels (above predict's 224 x 224 crop): 250 x 250 warns (over the
    limit), 400 x 400 errors (over twice the limit)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)


def test_decompression_bombs_are_bad_images(tmp_path, bomb_limit):
    for size in (250, 400):
        Image.new("L", (size, size)).save(tmp_path / f"bomb{size}.png")
        with pytest.raises(BadImageError, match=f"bomb{size}.png.*exceeds limit"):
            load_image(tmp_path / f"bomb{size}.png")


def test_predict_reports_a_bomb_and_goes_on(tmp_path, bomb_limit, capsys):
    model = timm.create_model("fcvit_tiny", num_classes=3, **TINY_KWARGS)
    save_checkpoint(model.state_dict(), tmp_path / "bare.pth")
    Image.new("RGB", (250, 250)).save(tmp_path / "bomb.png")
    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "ok.png")
    args = ["predict", "--model", "fcvit_tiny", "--model-kwargs", json.dumps(TINY_KWARGS), "--json"]
    assert main(
        [*args, "--checkpoint", str(tmp_path / "bare.pth"), str(tmp_path / "bomb.png"), str(tmp_path / "ok.png")]
    )
    out = capsys.readouterr()
    assert "bomb.png" in out.err and "exceeds limit" in out.err and "Traceback" not in out.err
    assert [r["image"] for r in json.loads(out.out)] == [str(tmp_path / "ok.png")]


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_image_in_a_loader_is_one_line_or_counted(tmp_path, bomb_limit, workers):
    root = make_image_folder(tmp_path / "data", per_class=2, classes=2)
    Image.new("RGB", (400, 400)).save(root / "val" / "class_1" / "bomb.png")
    dataset = ImageFolderDataset(root / "val")
    data_config = {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    from fcvit.data.transforms import create_eval_transform

    transform = create_eval_transform({**data_config, "crop_pct": 1.0})
    strict = DatasetLoader(dataset, transform, batch_size=8, train=False, workers=workers)
    with pytest.raises(BadImageError) as info:
        list(strict.batches(0))
    message = str(info.value)
    assert "bomb.png" in message and "exceeds limit" in message and "\n" not in message  # no worker traceback
    lenient = DatasetLoader(dataset, transform, batch_size=8, train=False, workers=workers, skip_bad=True)
    ((images, targets, skipped),) = list(lenient.batches(0))
    assert (len(targets), skipped) == (4, 1)


# --- 5. every user mistake: one line on stderr, non-zero exit ---------------------------------------------------


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--model", "fcvit_tinny"], "unknown model 'fcvit_tinny'; closest: fcvit_tiny"),
        (["--model-kwargs", '{"dept": [1, 1, 1, 1]}'], "it accepts: in_chans, num_classes, depths"),
        (["--epochs", "0"], "--epochs (command line): 0 is out of range: must be >= 1"),
        (["--img-size", "0"], "--img-size (command line): 0 is out of range: must be >= 1"),
        (["--in-chans", "-1"], "--in-chans (command line): -1 is out of range: must be >= 1"),
        (["--train-limit", "0"], "--train-limit (command line): 0 is out of range: must be >= 1"),
        (["--batch-size", "0"], "--batch-size (command line): 0 is out of range: must be >= 1"),
        (["--dist-timeout", "0"], "--dist-timeout (command line): 0 is out of range: must be > 0"),
        (["--device", "tpu"], "--device (command line): 'tpu' is not a device"),
    ],
)
def test_train_mistakes_are_one_line(fm_root, tmp_path, capsys, flags, expected):
    args = _train(fm_root, tmp_path, "--experiment", "x")
    if flags[0] == "--model":
        args = [a for a in args if a not in TINY] + flags
    else:
        args += flags
    assert main(args) == 1
    assert expected in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


def test_malformed_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlr: [0.1\nmixup: 0\n")
    assert main(["train", "--config", str(bad)]) == 1
    assert f"{bad}, line 3: malformed YAML" in _one_line_error(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "two"],
        ["predict", "--checkpoint", "x.pth", "--topk", "0", "a.png"],
        ["validate", "--checkpoint", "x.pth", "--limit", "-5"],
        ["export", "--model", "fcvit_tiny", "--format", "onnx", "--output", "m.onnx", "--img-size", "0"],
    ],
)
def test_bad_flag_values_are_one_line_exit_1(argv, capsys):
    """argparse's checks (predict, validate, export) and the declared options' (train) end the same way."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"fcvit {argv[0]}: error: ") and ("argument " in err or "(command line)" in err)


def test_full_disk_is_one_line_and_keeps_the_old_checkpoint(tmp_path, monkeypatch, fm_root, capsys):
    path = tmp_path / "checkpoint-last.pth"
    save_checkpoint({"step": 1}, path)

    def no_space(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(DiskFullError, match=f"no space left on {tmp_path}"):
        save_checkpoint({"step": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pth"]
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    monkeypatch.setattr(torch, "save", no_space)
    assert main(_train(fm_root, tmp_path, "--experiment", "full")) == 1
    assert f"no space left on {tmp_path / 'full'}" in _one_line_error(capsys)


STALLING_RANK = """
import os, sys, time
import torch
from fcvit.errors import report_error
from fcvit.errors import RankLostError
from fcvit.engine.distributed import all_reduce_sum, init_distributed, peer_failures
info = init_distributed("cpu", timeout_s=8)  # over the two processes' start-up skew on a busy machine
if info.rank == 1:
    time.sleep(60)  # hangs; torchrun stops it once rank 0 has failed
    sys.exit(0)
try:
    with peer_failures(8):
        all_reduce_sum({"x": 1.0})
except RankLostError as e:
    sys.exit(report_error("train", e))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo tested on Linux")
def test_a_rank_that_times_out_is_one_line(tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(STALLING_RANK)
    proc = run_cli([str(script)], cwd=tmp_path, prefix=TORCHRUN, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("fcvit train [rank 0]: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "another rank stopped answering (Timed out waiting 8000ms" in lines[0] and "--dist-timeout 8 s" in lines[0]
