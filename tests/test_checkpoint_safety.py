"""A checkpoint that cannot be meant is refused in one line by every command that loads it (issue 28, item 2):
another run's optimizer moments, non-finite weights, a record naming an unknown model or impossible values, a
directory given as a file; and JSON output never holds NaN."""

from __future__ import annotations

import json

import pytest
import torch
from train_utils import TINY, make_fashion_root

from fcvit.cli import main
from fcvit.engine.checkpoint import load_checkpoint, save_checkpoint
from fcvit.engine.jsonio import dumps

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished one-epoch runs of models with the same tensor count and other shapes."""
    root = tmp_path_factory.mktemp("runs")
    data = make_fashion_root(root / "fm", n_train=64, n_test=32)
    common = ["--data-dir", str(data), "--output", str(root), "--batch-size", "32", "--epochs", "1"]
    assert main(["train", *TINY, *common, "--experiment", "a"]) == 0
    wider = ["--model", "fcvit_tiny", "--model-kwargs", '{"depths": [1, 1, 1, 1], "dims": [16, 16, 24, 32]}']
    assert main(["train", *wider, *common, "--experiment", "b"]) == 0
    return root


def _error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"fcvit {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_another_runs_optimizer_state_is_refused_naming_the_tensor(runs, tmp_path, capsys):
    ckpt = load_checkpoint(runs / "b" / "checkpoint-last.pth")
    ckpt["optimizer"] = load_checkpoint(runs / "a" / "checkpoint-last.pth")["optimizer"]
    ckpt["epoch"], ckpt["config"]["epochs"] = 0, 2
    save_checkpoint(ckpt, tmp_path / "checkpoint-last.pth")
    assert main(["train", "--resume", str(tmp_path / "checkpoint-last.pth"), "--epochs", "2"]) == 1
    line = _error(capsys, "train")
    assert "the optimizer state in" in line and "does not fit the model" in line
    assert "'stem.0.weight'" in line or "parameter '" in line


@pytest.mark.parametrize("command", ["validate", "predict", "analyze"])
def test_non_finite_weights_are_refused_by_every_command(runs, tmp_path, capsys, command):
    ckpt = load_checkpoint(runs / "a" / "checkpoint-best.pth")
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key].view(-1)[0] = float("nan")
    bad = tmp_path / "nan.pth"
    save_checkpoint(ckpt, bad)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    argv = {
        "validate": ["validate", "--checkpoint", str(bad), "--data-dir", str(runs / "fm")],
        "predict": ["predict", "--checkpoint", str(bad), str(image)],
        "analyze": ["analyze", "similarity", "--checkpoint", str(bad), str(image), "--output", str(tmp_path / "o")],
    }[command]
    assert main(argv) == 1
    line = _error(capsys, "analyze similarity" if command == "analyze" else command)
    assert f"tensor {key!r} holds 1 non-finite value(s)" in line


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(model_name="fcvit_huge"), "model_name is unusable (unknown model 'fcvit_huge'"),
        (dict(model_name=7), "model_name is unusable (a model name is a string"),
        (dict(num_classes=-3), "num_classes is -3, not a positive integer"),
        (dict(class_names=["a", "b"]), "class_names has 2 names for 10 classes"),
        (dict(data_config={"input_size": [1, 28, 28], "mean": [0.1, 0.2], "std": [0.3]}), "data_config mean"),
        (dict(data_config={"input_size": [1, 28, 28], "mean": [0.1], "std": [0.0]}), "must be positive"),
    ],
)
def test_impossible_records_are_one_line(runs, tmp_path, capsys, change, words):
    ckpt = load_checkpoint(runs / "a" / "checkpoint-best.pth")
    ckpt.update(change)
    bad = tmp_path / "bad.pth"
    save_checkpoint(ckpt, bad)
    assert main(["validate", "--checkpoint", str(bad), "--data-dir", str(runs / "fm")]) == 1
    assert words in _error(capsys, "validate")


def test_empty_dict_and_directory_are_named(runs, tmp_path, capsys):
    torch.save({}, tmp_path / "empty.pth")
    assert main(["predict", "--checkpoint", str(tmp_path / "empty.pth"), "x.png"]) == 1
    assert "holds no tensors" in _error(capsys, "predict")
    assert main(["predict", "--checkpoint", str(runs / "a"), "x.png"]) == 1
    line = _error(capsys, "predict")
    assert "is a directory, not a checkpoint file" in line and "checkpoint-best.pth" in line


def test_validate_reads_the_run_and_json_holds_no_nan(runs, capsys):
    """`validate` on a run's checkpoint needs no data flag (the run's record gives it); its JSON is JSON."""
    assert main(["validate", "--checkpoint", str(runs / "a" / "checkpoint-best.pth"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert out["n"] == 32 and out["split"] == "val"
    assert json.loads(dumps({"a": float("nan"), "b": [float("inf"), 1.0]})) == {"a": None, "b": [None, 1.0]}
