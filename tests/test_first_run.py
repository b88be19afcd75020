"""What a first user meets: the run's ETA, usage of the command typed, an empty model filter, readable detection
captions, the segmentation curves' x-axis, run directories named after the model built, and gradients in their
parameters' layout (no DDP stride warning)."""

from __future__ import annotations

import pytest
import timm
import torch

import fcvit
from fcvit.cli import main
from fcvit.engine import logger
from fcvit.engine.logger import Progress, plot_curves, remaining_time

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_remaining_time_arithmetic():
    # 5 steps took 10 s: 2 s a step, for the 15 left of this pass and 100 of later passes, plus 30 s of validation
    assert remaining_time(10.0, 5, 15, steps_after=100, seconds_after=30.0) == 2.0 * 115 + 30.0
    assert remaining_time(10.0, 5, 15) == 30.0
    assert remaining_time(0.0, 0, 20, steps_after=40, seconds_after=12.0) == 12.0  # no pace yet: what is known


def test_progress_lines_show_the_runs_eta(capsys, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(logger.time, "perf_counter", lambda: now[0])
    p = Progress(4, "epoch 1/3", log_interval=2, tty=False, steps_after=8, seconds_after=5.0)
    for step in range(1, 5):
        now[0] = 2.0 * step  # 2 s a step
        p.update(64, loss=0.5)
    lines = capsys.readouterr().err.splitlines()
    # step 2: 2 steps of this pass left (4 s), then 8 steps of the later passes (16 s) and 5 s of validation
    assert lines[0] == "epoch 1/3 [2/4] loss 0.5000 img/s 32 eta 0:00:04 run eta 0:00:25"
    assert lines[1] == "epoch 1/3 [4/4] loss 0.5000 img/s 32 eta 0:00:00 run eta 0:00:21"


def test_unknown_flag_shows_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--bogus-flag"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("usage: fcvit train")
    assert "fcvit train: error: unrecognized arguments: --bogus-flag" in err
    with pytest.raises(SystemExit):
        main(["analyze", "stats", "--model", "m", "--data", "d", "--output", "o", "--bogus"])
    assert capsys.readouterr().err.startswith("usage: fcvit analyze stats")


def test_models_filter_without_match_says_so(capsys):
    assert main(["models", "--filter", "no_such_model*"]) == 1
    assert "no registered model matches --filter 'no_such_model*'" in capsys.readouterr().err


def test_captions_stay_inside_and_apart():
    from fcvit.dense.detection import draw_detections, place_captions

    boxes = [[10, 10, 50, 50], [10, 10, 50, 50], [92, 0, 99, 20], [5, 97, 20, 99]]
    sizes = [(30, 10)] * 4
    corners = place_captions(boxes, sizes, (100, 100))
    assert corners[0] == (10, 0)  # above its box
    assert corners[1] == (10, 10)  # the same box again: below the first caption, not over it
    assert corners[2] == (70, 0)  # at the right edge: moved left, inside its box at the top edge
    assert corners[3] == (5, 87)  # box at the bottom: caption above it
    rects = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners, sizes)]
    assert all(0 <= x1 and 0 <= y1 and x2 <= 100 and y2 <= 100 for x1, y1, x2, y2 in rects)
    assert not any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for a, b in zip(rects, rects[1:2]))

    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    output = dict(boxes=torch.tensor([[40.0, 2, 63, 30]]), labels=torch.tensor([1]), scores=torch.tensor([0.9]))
    drawn = draw_detections(image, output, ["background", "a-long-class-name"], 0.5)
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert drawn[:, :, :40].any()  # the caption was moved left of the box to fit: it is drawn, not cut off


def test_curves_x_axis_follows_the_task(tmp_path, monkeypatch):
    import matplotlib.figure

    from fcvit.dense.detection import DetectionTask
    from fcvit.dense.segmentation import SegmentationTask

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    rows = [dict(epoch=1, iter=100, mIoU=10.0), dict(epoch=2, iter=200, mIoU=20.0)]
    plot_curves(rows, tmp_path / "c.png", {"mIoU": ["mIoU"]}, *SegmentationTask.x_axis)
    (ax,) = figures[0].axes
    assert ax.get_xlabel() == "iteration" and list(ax.lines[0].get_xdata()) == [100.0, 200.0]
    assert DetectionTask.x_axis == ("epoch", "epoch")


def test_run_directory_names_the_model_built():
    from fcvit.dense.cli import model_label

    assert model_label("fcvit_b12", {}) == "fcvit_b12"
    tiny = {"dims": [16, 32, 64, 128], "depths": (1, 1, 1, 1)}
    assert model_label("fcvit_b12", tiny) == "fcvit_b12-depths1-1-1-1-dims16-32-64-128"


def test_gradients_have_their_parameters_strides():
    """DDP warns "Grad strides do not match bucket view strides" when they differ (cropped depth-wise kernels and
    the depth-wise backward once built their weight gradients in NCHW); the values stay the plain model's."""
    torch.manual_seed(0)
    plain = timm.create_model("fcvit_tiny", num_classes=10, in_chans=1, depths=[1] * 4, dims=[8, 16, 24, 32])
    fast = fcvit.optimize(
        timm.create_model("fcvit_tiny", num_classes=10, in_chans=1, depths=[1] * 4, dims=[8, 16, 24, 32])
    )
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    for model in (plain, fast):
        model.to(memory_format=torch.channels_last)
        model(x).square().sum().backward()
    grads = dict(plain.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad.stride() == p.stride(), name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-5)
