"""Image folders are read once per real file: FIFOs and devices skipped unopened, symlinks followed without loops
or duplicates; a run refuses to resume on changed data and validate names other class names (issue 28, item 4)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import timm
from PIL import Image
from torchvision.datasets import ImageFolder
from train_utils import TINY, TINY_KWARGS, make_image_folder

from fcvit.cli import main
from fcvit.data import ImageFolderDataset
from fcvit.data.loaders import DatasetLoader
from fcvit.data.transforms import create_eval_transform
from fcvit.engine.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("torch_one_thread")

EVAL = {"input_size": [3, 16, 16], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}


@contextlib.contextmanager
def never_opened(fifo: Path):
    """Fail if anything opens ``fifo`` for reading inside the block, instead of hanging: a watcher opens it for
    writing whenever it can (only possible while a reader waits), which ends the reader's wait."""
    done, opened = threading.Event(), []

    def watch():
        while not done.wait(0.2):
            with contextlib.suppress(OSError):  # ENXIO: nobody is reading
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                opened.append(True)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
    assert not opened, f"{fifo} was opened"


def test_plain_tree_reads_as_torchvision_does(tmp_path):
    """Same samples in the same order as torchvision's ImageFolder (nested folders, names sorting around '/')."""
    root = make_image_folder(tmp_path / "data", per_class=3, classes=2) / "train"
    for sub in ("class_0/a", "class_0/a/x", "class_0/a-b", "class_1/z"):
        (root / sub).mkdir()
        Image.new("RGB", (8, 8)).save(root / sub / "n.png")
    ours = ImageFolderDataset(root)
    assert ours.samples == ImageFolder(str(root)).samples and len(ours) == 10 and ours.skipped == []


def test_symlink_loops_and_duplicates_count_once(tmp_path, capsys):
    """Links to parents, to a sibling class, to files already read and a class folder linked twice: each real
    image is one sample, labelled by the folder it really sits in; the links are named in one notice."""
    root = make_image_folder(tmp_path / "data", per_class=4, classes=2) / "train"
    (root / "class_0" / "loop").symlink_to("..")
    (root / "class_0" / "up").symlink_to(root)
    (root / "class_1" / "other").symlink_to("../class_0")
    (root / "class_1" / "again.png").symlink_to(next((root / "class_0").glob("img0.*")))
    (root / "class_0_link").symlink_to("class_0")
    (root / "class_1" / "self.png").symlink_to("self.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "extra.png")
    (root / "class_1" / "extra").symlink_to(outside)

    dataset = ImageFolderDataset(root)
    assert dataset.classes == ["class_0", "class_1"]
    real = [(Path(p).resolve(), dataset.classes[y]) for p, y in dataset.samples]
    assert len(dataset) == 9 and len({p for p, _ in real}) == 9  # 8 images and the one reached only by a link
    assert ((outside / "extra.png").resolve(), "class_1") in real
    inside = [(p.relative_to(root.resolve()).parts[0], label) for p, label in real if p.is_relative_to(root.resolve())]
    assert len(inside) == 8 and all(folder == label for folder, label in inside)  # labelled where they really sit
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"note: {root}: 6 entries skipped: ") and "\n" not in err
    assert any("class_0_link: a link to class folder class_0" in s for s in dataset.skipped)
    assert any("self.png: a broken or looping link" in s for s in dataset.skipped)


def test_fifo_in_a_class_folder_is_skipped_unopened(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=2, classes=2) / "val"
    fifo = root / "class_1" / "x.png"
    os.mkfifo(fifo)
    with never_opened(fifo):
        dataset = ImageFolderDataset(root)
        batches = list(DatasetLoader(dataset, create_eval_transform(EVAL), batch_size=8, train=False).batches(0))
    assert str(fifo) not in [p for p, _ in dataset.samples] and len(batches[0][1]) == 4
    assert capsys.readouterr().err.strip() == f"note: {root}: 1 entries skipped: {fifo}: a FIFO (named pipe)"


def test_fifo_given_to_predict_is_one_line_for_that_file(tmp_path, capsys):
    model = timm.create_model("fcvit_tiny", num_classes=3, **TINY_KWARGS)
    save_checkpoint(model.state_dict(), tmp_path / "bare.pth")
    fifo, ok = tmp_path / "x.png", tmp_path / "ok.png"
    os.mkfifo(fifo)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(ok)
    args = ["predict", "--model", "fcvit_tiny", "--model-kwargs", json.dumps(TINY_KWARGS), "--json"]
    with never_opened(fifo):
        code = main([*args, "--checkpoint", str(tmp_path / "bare.pth"), str(fifo), str(ok)])
    out = capsys.readouterr()
    assert code == 1 and [r["image"] for r in json.loads(out.out)] == [str(ok)]
    assert out.err == f"fcvit predict: error: cannot read image {fifo}: it is a FIFO (named pipe), not a regular file\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on a 3-class folder (4 images a class, batch 4) whose train/class_1 holds a FIFO named x.png:
    (data root, run directory, the run's stderr)."""
    tmp = tmp_path_factory.mktemp("run")
    root = make_image_folder(tmp / "data", per_class=4)
    fifo = root / "train" / "class_1" / "x.png"
    os.mkfifo(fifo)
    args = ["train", *TINY, "--data", str(root), "--output", str(tmp), "--experiment", "run", "--img-size", "16"]
    err = io.StringIO()
    with never_opened(fifo), contextlib.redirect_stderr(err):
        assert main([*args, "--batch-size", "4", "--epochs", "1", "--workers", "0"]) == 0
    return root, tmp / "run", err.getvalue()


def test_train_skips_a_fifo_with_a_notice(trained):
    root, run_dir, err = trained
    assert f"note: {root / 'train'}: 1 entries skipped: {root / 'train' / 'class_1' / 'x.png'}: a FIFO" in err
    fingerprint = load_checkpoint(run_dir / "checkpoint-last.pth")["data_fingerprint"]
    assert fingerprint["train"]["counts"] == [4, 4, 4] and fingerprint["val"]["split"] == "val"


def test_resume_refuses_changed_data_and_takes_the_same(trained, capsys):
    root, run_dir, _ = trained
    resume = ["train", "--resume", str(run_dir / "checkpoint-last.pth"), "--epochs", "2"]
    removed = next((root / "train" / "class_2").glob("img1.*"))
    hidden = root / removed.name
    removed.rename(hidden)
    try:
        capsys.readouterr()
        assert main(resume) == 1
    finally:
        hidden.rename(removed)
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"fcvit train: error: --resume: the data differs from what {run_dir / 'checkpoint-last.pth'} was trained on "
        "(1 image removed from train/class_2); resume on the same data, or start a new run"
    )
    assert main(resume) == 0  # the same data again: the run goes on
    assert load_checkpoint(run_dir / "checkpoint-last.pth")["epoch"] == 2


def test_validate_names_other_class_names(trained, tmp_path, capsys):
    """Renamed class folders, same count: validated by position, with a one-line notice; same names: none."""
    root, run_dir, _ = trained
    renamed = tmp_path / "renamed"
    shutil.copytree(root / "val", renamed / "val")
    (renamed / "val" / "class_2").rename(renamed / "val" / "shoe")  # keeps its place in sorted order
    args = ["validate", "--checkpoint", str(run_dir / "checkpoint-last.pth"), "--workers", "0", "--json"]
    for data, notice in ((root, None), (renamed, "1 of 3 differ; label: data vs checkpoint 2: 'shoe' vs 'class_2'")):
        capsys.readouterr()
        assert main([*args, "--data", str(data)]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["n"] == 12
        notes = [line for line in out.err.splitlines() if line.startswith("note:")]
        if notice is None:
            assert notes == []
        else:  # the --data override of the run's record is named, then the class names that differ
            assert len(notes) == 2 and notes[0].startswith(f"note: --data {data} (the checkpoint was trained")
            assert notice in notes[1] and "labels are matched by position" in notes[1]
