"""What a person watching a run sees, and what stays in the run directory afterwards.

:class:`RunLogger` writes ``metrics.csv`` (one row per epoch), TensorBoard event files (``tb/``),
``curves.png`` (matplotlib, one panel per group of columns) and ``summary.json``. Only the main process
writes: other ranks get a logger whose methods do nothing. :class:`Progress` is a tqdm bar (loss, lr,
img/s, the pass's and the whole run's ETA) on a terminal and a plain log line every ``log_interval`` steps
otherwise (CI logs, files: no carriage returns), both on stderr like tqdm, so stdout keeps only results.
Nothing here knows about classification: the caller names the columns and the panels.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write
from .jsonio import write_json

__all__ = ["Progress", "RunLogger", "format_duration", "plot_curves", "remaining_time"]


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def remaining_time(elapsed: float, done: int, left: int, steps_after: int = 0, seconds_after: float = 0.0) -> float:
    """Seconds still to go: ``left`` steps of this pass and ``steps_after`` of the passes after it at this pass's
    pace so far (``elapsed`` seconds for ``done`` steps), plus ``seconds_after`` of known other work (validation).

    Before the first step the pace is unknown and only ``seconds_after`` is counted.
    """
    per_step = elapsed / done if done > 0 else 0.0
    return per_step * (left + steps_after) + seconds_after


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5) else f"{value:.4f}"
    return str(value)


def plot_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    panels: Mapping[str, Sequence[str]],
    x: str = "epoch",
    x_label: str = "epoch",
) -> None:
    """Save a figure with one panel per ``{title: [column, ...]}`` against the column ``x`` (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = {
        t: [c for c in cols if any(c in r and r[c] not in ("", None) for r in rows)] for t, cols in panels.items()
    }
    panels = {t: cols for t, cols in panels.items() if cols}
    if not rows or not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, cols) in zip(axes[0], panels.items()):
        for col in cols:
            pts = [(float(r[x]), float(r[col])) for r in rows if r.get(col) not in ("", None)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", markersize=3, label=col)
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class RunLogger:
    """Per-epoch metrics to CSV and TensorBoard, plus the end-of-run figure and summary.

    Args:
        run_dir: the run directory (created).
        enabled: False on non-main ranks: every method is then a no-op.
        resume_epoch: when resuming at this epoch, drop CSV rows of this epoch and later (they were
            logged by the interrupted run after its checkpoint) and purge later TensorBoard events.
        purge_step: TensorBoard step to purge from on resume.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        enabled: bool = True,
        resume_epoch: int | None = None,
        purge_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        if resume_epoch is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < resume_epoch]
            self._rewrite_csv()
        elif self.csv_path.exists():
            self.csv_path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge_step)

    def _rewrite_csv(self) -> None:
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.csv_path, write)

    def log_scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> None:
        """Scalars to TensorBoard at ``step`` (e.g. per-step training loss and lr)."""
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None and math.isfinite(float(v)):
                self.writer.add_scalar(prefix + k, float(v), step)

    def log_epoch(self, epoch: int, values: Mapping[str, Any], step: int | None = None) -> None:
        """One row of ``metrics.csv`` (``epoch`` first) and the same scalars to TensorBoard under ``epoch/``."""
        if not self.enabled:
            return
        row = {"epoch": epoch, **values}
        self.rows.append(row)
        self._rewrite_csv()
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log_scalars(epoch if step is None else step, numeric, prefix="epoch/")
        self.writer.flush()

    def finish(
        self, summary: Mapping[str, Any], panels: Mapping[str, Sequence[str]], x: str = "epoch", x_label: str = "epoch"
    ) -> None:
        """Write ``summary.json`` and ``curves.png`` (``panels``: ``{title: [csv column, ...]}`` against the column
        ``x``); close TensorBoard."""
        if not self.enabled:
            return
        write_json(self.run_dir / "summary.json", dict(summary))
        plot_curves(self.rows, self.run_dir / "curves.png", panels, x, x_label)
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Progress:
    """Progress of one pass over ``total`` steps on stderr: tqdm on a terminal, plain lines otherwise.

    ``update(images, **stats)`` after each step; stats (loss, lr, ...) show in the bar's postfix or
    the log line together with images/s and the ETA. When the pass is one of several (epochs, rounds), give
    the steps of the passes still to come after it (``steps_after``) and the seconds of other work known to
    follow (``seconds_after``, e.g. the validations): the bar and the lines then show the whole run's ETA too.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        log_interval: int = 50,
        initial: int = 0,
        tty: bool | None = None,
        steps_after: int | None = None,
        seconds_after: float = 0.0,
    ):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.steps_after, self.seconds_after = steps_after, seconds_after
        self.step = self.initial = initial
        self.log_interval = max(1, log_interval)
        self.images = 0
        self.start = time.perf_counter()
        self.bar = None
        tty = sys.stderr.isatty() if tty is None else tty
        if enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

    @property
    def images_per_s(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def update(self, images: int, **stats: Any) -> None:
        """One step of ``images``."""
        self.step += 1
        self.images += images
        if not self.enabled:
            return
        shown = {k: _fmt(v) for k, v in stats.items()}
        shown["img/s"] = f"{self.images_per_s:.0f}"
        elapsed, done, left = time.perf_counter() - self.start, self.step - self.initial, self.total - self.step
        etas = {"eta": format_duration(remaining_time(elapsed, done, left))}
        if self.steps_after is not None:
            etas["run eta"] = format_duration(remaining_time(elapsed, done, left, self.steps_after, self.seconds_after))
        if self.bar is not None:  # tqdm shows this pass's remaining time itself
            self.bar.set_postfix({**shown, **{k: v for k, v in etas.items() if k != "eta"}}, refresh=False)
            self.bar.update(1)
        elif self.step % self.log_interval == 0 or self.step == self.total:
            parts = " ".join(f"{k} {v}" for k, v in {**shown, **etas}.items())
            print(f"{self.desc} [{self.step}/{self.total}] {parts}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
