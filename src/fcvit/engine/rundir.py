"""Run directories of ``fcvit train`` and ``fcvit det|seg train``: new ones never land on an old run.

A run directory is ``--output/--experiment``, or ``--output/STEM-TIMESTAMP-XXXXXX`` by default, where the six
hex digits are random: two runs started in the same second on one machine still get two directories. Under
torchrun rank 0 chooses the name and every rank takes it. A directory that already holds a run (a checkpoint,
a config, metrics or a summary) is refused: continue it with ``--resume`` or name another.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from .distributed import broadcast_object, is_main_process

__all__ = ["RUN_FILES", "clean_orphans", "new_run_dir"]

# what a run writes into its directory; any of them means the directory holds a run
RUN_FILES = ("checkpoint-last.pth", "checkpoint-best.pth", "config.yaml", "metrics.csv", "summary.json")


def new_run_dir(output: str, experiment: str, stem: str) -> Path:
    """``output/experiment`` (default ``output/STEM-TIMESTAMP-XXXXXX``), the same on every rank.

    Raises ``FileExistsError`` naming the directory if it already holds a run.
    """
    name = experiment or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    run_dir = Path(output) / broadcast_object(name)
    held = [f for f in RUN_FILES if (run_dir / f).exists()] if is_main_process() else []
    held = broadcast_object(held)
    if held:
        last = run_dir / RUN_FILES[0]
        hint = f"--resume {last}" if last.exists() else "remove it"
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(held)}); {hint} to continue it, or choose another --experiment"
        )
    return run_dir


def clean_orphans(run_dir: Path) -> list[Path]:
    """Remove the temporary files of checkpoint saves that a kill interrupted (``.checkpoint-*``); rank 0 only.

    :func:`fcvit.engine.atomic.atomic_write` writes ``.NAME.RANDOM.pth`` beside ``NAME`` and renames it into place; a
    process killed in between leaves that file behind. Call when a run starts or resumes in ``run_dir``, before
    its first save (no save of this run can be under way).
    """
    if not is_main_process() or not run_dir.is_dir():
        return []
    orphans = sorted(p for p in run_dir.glob(".checkpoint-*") if p.is_file())
    for p in orphans:
        p.unlink(missing_ok=True)
    return orphans
