"""The README's fine-tuning example, run as written: released weights -> a folder of images -> every command
-> a deployable file, with no flag repeating what the run recorded (issue 27)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "fixtures" / "official_fcvit_tiny_random.pth"
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- finetune-example[^>]*-->\n```bash\n(.*?)```", text, re.S)
    assert match, "README.md lost its fine-tuning example"
    return match.group(1)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="needs ../shared/fixtures (the official fcvit_tiny layout)")
@pytest.mark.skipif(not FASHION.is_file(), reason="needs Debian's dataset-fashion-mnist (scripts/setup.sh)")
def test_the_readme_finetuning_example_runs_as_written(tmp_path):
    """In a scratch copy of the repository's layout: scripts/, .venv (this interpreter's) and ../shared."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "scripts").symlink_to(REPO / "scripts")
    (repo / ".venv").symlink_to(sys.prefix)  # the environment running the tests
    (tmp_path / "shared").symlink_to(WEIGHTS.parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_block()], cwd=repo, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "head re-initialised for 3 classes (was 1000); stem kept (3 channels)" in out
    assert re.search(r"runs/my_finetune/checkpoint-best.pth on runs/my_images val \(60 images\): top-1", out)
    predictions = [line for line in done.stdout.splitlines() if line.startswith("runs/my_images/val/Bag/")]
    assert len(predictions) == 3 and all(re.search(r"(Bag|Sneaker|Trouser) \d\.\d{3}$", p) for p in predictions)
    assert (repo / "runs" / "my_finetune" / "similarity" / "similarity.json").is_file()
    assert (repo / "runs" / "my_finetune.onnx").stat().st_size > 0
