"""Run logger and progress display (generic: no classification assumptions)."""

from __future__ import annotations

import csv
import json

from fcvit.engine.logger import Progress, RunLogger


def test_run_logger_files_resume_and_disabled(tmp_path):
    log = RunLogger(tmp_path / "run")
    for epoch in (1, 2, 3):
        log.log_epoch(epoch, {"train_loss": 1.0 / epoch, "val_miou": 10.0 * epoch}, step=epoch * 10)
    log.close()
    # resuming at epoch 3: the row the interrupted run wrote after its last checkpoint goes
    log = RunLogger(tmp_path / "run", resume_epoch=3, purge_step=20)
    log.log_epoch(3, {"train_loss": 0.25, "val_miou": 31.0, "extra": 1})
    log.finish({"best": 31.0}, panels={"loss": ["train_loss"], "mIoU": ["val_miou"], "absent": ["nope"]})
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["val_miou"]) for r in rows] == [("1", "10.0"), ("2", "20.0"), ("3", "31.0")]
    assert rows[-1]["extra"] == "1" and rows[0]["extra"] == ""
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"best": 31.0}
    assert (tmp_path / "run" / "curves.png").stat().st_size > 5000
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 2
    other_rank = RunLogger(tmp_path / "rank1", enabled=False)
    other_rank.log_epoch(1, {"x": 1.0})
    other_rank.finish({"x": 1}, panels={"x": ["x"]})
    assert not (tmp_path / "rank1").exists()


def test_progress_plain_lines_on_stderr(capsys):
    p = Progress(5, "epoch 1/2", log_interval=2, initial=1, tty=False)
    for _ in range(4):
        p.update(32, loss=0.5, lr=2e-4)
    p.close()
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert [line.split("]")[0] for line in lines] == ["epoch 1/2 [2/5", "epoch 1/2 [4/5", "epoch 1/2 [5/5"]
    assert "loss 0.5000" in lines[0] and "lr 2.000e-04" in lines[0] and "img/s" in lines[0] and "eta" in lines[0]
    Progress(3, "quiet", enabled=False, tty=False).update(1)
    assert capsys.readouterr().err == ""
