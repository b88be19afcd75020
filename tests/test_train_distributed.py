"""torchrun: 2 CPU processes (gloo, DDP) match 1 process; a failing rank takes every rank down, nothing hangs."""

from __future__ import annotations

import json

import pytest
from train_utils import TINY, TORCHRUN, make_fashion_root, run_cli

from fcvit.cli import main
from fcvit.engine.checkpoint import load_checkpoint

# BatchNorm-free (LayerNorm) model: without SyncBatchNorm (CUDA only) each rank normalises its half batch,
# so a BatchNorm model legitimately drifts from the 1-process run; LayerNorm isolates the DDP machinery.
CONVNEXT = ["--model", "convnext_atto", "--model-kwargs", json.dumps({"depths": [1] * 4, "dims": [8, 16, 24, 32]})]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    return make_fashion_root(tmp_path_factory.mktemp("fm"), n_train=512, n_test=1000, size=32)


def _args(root, out, name, batch, model=CONVNEXT):
    return ["train", *model, "--data-dir", str(root), "--img-size", "32", "--output", str(out)] + [
        "--experiment", name, "--batch-size", str(batch), "--epochs", "2", "--drop-path", "0", "--lr", "4e-3",
        "--no-model-ema",
    ]  # fmt: skip


def test_two_processes_match_one_at_same_global_batch(fm_root, tmp_path):
    ddp = run_cli(_args(fm_root, tmp_path, "ddp", 32), cwd=tmp_path, prefix=[*TORCHRUN, "-m", "fcvit.cli"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert main(_args(fm_root, tmp_path, "single", 64)) == 0
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert (two["world_size"], one["world_size"], two["steps"], one["steps"]) == (2, 1, 16, 16)
    assert two["top1"] > 40 and one["top1"] > 40  # both learnt (chance: 10%)
    assert abs(two["top1"] - one["top1"]) <= 0.5, (two["top1"], one["top1"])
    # same samples per global step, gradients averaged: the same weights up to summation order
    a = load_checkpoint(tmp_path / "ddp" / "checkpoint-last.pth")["model"]
    b = load_checkpoint(tmp_path / "single" / "checkpoint-last.pth")["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert (tmp_path / "ddp" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs: rank 0 wrote alone
    assert ddp.stdout.count("epoch 2/2: train loss") == 1


DRIVER = """
import os, sys
from fcvit.engine import logger
from fcvit.cli import main
from fcvit.engine.checkpoint import load_checkpoint
update = logger.Progress.update
def update_or_fail(self, *args, **kwargs):
    update(self, *args, **kwargs)
    if os.environ["RANK"] == "1" and self.step == 2:
        raise ValueError("injected failure on rank 1")
logger.Progress.update = update_or_fail
sys.exit(main(sys.argv[1:]))
"""


def test_failing_rank_stops_all_ranks(fm_root, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = [*_args(fm_root, tmp_path, "fail", 32, model=TINY), "--dist-timeout", "60"]  # FCViT, BatchNorm and all
    result = run_cli(args, cwd=tmp_path, prefix=[*TORCHRUN, str(driver)], timeout=240)
    assert result.returncode != 0
    assert "fcvit train [rank 1]: error: injected failure on rank 1" in result.stderr
    # channels_last FCViT with cropped depth-wise kernels: each gradient in its parameter's (and bucket's) strides
    assert "Grad strides do not match bucket view strides" not in result.stderr
    assert not (tmp_path / "fail" / "summary.json").exists()


def test_cleanup_waits_for_every_rank_before_leaving_the_group(monkeypatch):
    """The barrier that keeps PyTorch 2.11's gloo teardown from deadlocking (``cleanup_distributed``'s doc) comes
    before the group is destroyed; without a group, cleanup calls neither."""
    from torch import distributed as dist

    from fcvit.engine import distributed

    calls = []
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    distributed.cleanup_distributed()
    assert calls == []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    distributed.cleanup_distributed()
    assert calls == ["barrier", "destroy"]
