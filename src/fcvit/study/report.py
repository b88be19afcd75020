"""``fcvit study report``: per arm mean ± std over seeds, the difference to the reference arm against the seed
spread (Welch's t-test), ``results.csv``, a Markdown table and plots.

Welch's t-test (:func:`scipy.stats.ttest_ind` with ``equal_var=False``) asks whether two arms' mean top-1 differ
by more than their seed-to-seed spread explains, without assuming equal spreads; a difference is called
significant at p < 0.05. With 3 seeds per arm the test has little power: "inside the noise" says that the seeds
do not separate the arms, not that the arms are equal.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .study import StudyError

__all__ = ["ALPHA", "ArmResult", "MEASURES", "compare", "mean_std", "report_study"]

ALPHA = 0.05
# summary.json key -> column name
MEASURES = {"top1": "top1", "best_epoch": "best_epoch", "wall_time_s": "wall_time_s", "train_img_per_s": "img_per_s"}


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n - 1; NaN for one value) and count of the finite ``values``."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs)


def compare(values: Sequence[float], reference: Sequence[float], alpha: float = ALPHA) -> dict[str, Any]:
    """Welch's t-test of ``values`` against ``reference``: the difference of means, t, p and the verdict
    (``higher``/``lower`` when p < alpha, ``inside the noise`` otherwise, ``n/a`` with fewer than 2 per side)."""
    from scipy.stats import ttest_ind

    diff = mean_std(values)[0] - mean_std(reference)[0]
    if len(values) < 2 or len(reference) < 2:
        return dict(diff=diff, t=math.nan, p=math.nan, verdict="n/a (needs 2 seeds per arm)")
    if statistics.pvariance(values) == 0 and statistics.pvariance(reference) == 0:
        p = 1.0 if diff == 0 else 0.0  # no spread at all: any difference is beyond it
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        t, p = (float(v) for v in ttest_ind(values, reference, equal_var=False))
    verdict = "inside the noise" if not p < alpha else ("higher" if diff > 0 else "lower")
    return dict(diff=diff, t=t, p=p, verdict=verdict)


@dataclass
class ArmResult:
    """One arm's runs: the summaries and metrics of its seeds and, for analysis studies, their statistics."""

    name: str
    seeds: list[str]
    summaries: list[dict[str, Any]]
    curves: list[list[dict[str, str]]]
    stats: list[list[dict[str, Any]]]  # per seed: the layers of analysis/stats/stats.json

    def values(self, key: str) -> list[float]:
        return [float(s[key]) for s in self.summaries if s.get(key) is not None]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _trained_dir(study: dict[str, Any], arm: dict[str, Any], study_dir: Path, seed_dir: Path) -> Path:
    if arm.get("source"):
        return study_dir.parent / arm["source"]["study"] / arm["source"]["arm"] / seed_dir.name
    return seed_dir


def collect(study_dir: Path) -> tuple[dict[str, Any], list[ArmResult]]:
    """The study description (``study.json``) and the finished runs of each arm under ``study_dir``."""
    study = _read_json(study_dir / "study.json")
    if study is None:
        raise StudyError(f"{study_dir} holds no study.json: not a study directory (fcvit study run writes it)")
    results = []
    for arm in study["arms"]:
        seeds, summaries, curves, stats = [], [], [], []
        for seed_dir in _seed_dirs(study_dir / arm["name"]):
            trained = _trained_dir(study, arm, study_dir, seed_dir)
            summary = _read_json(trained / "summary.json")
            if summary is None:
                continue
            seeds.append(seed_dir.name)
            summaries.append(summary)
            with open(trained / "metrics.csv", newline="") as f:
                curves.append(list(csv.DictReader(f)))
            layers = _read_json(seed_dir / "analysis" / "stats" / "stats.json")
            if layers is not None:
                stats.append(layers["layers"])
        results.append(ArmResult(arm["name"], seeds, summaries, curves, stats))
    return study, results


def _seed_dirs(arm_dir: Path) -> list[Path]:
    """An arm's ``seed<k>`` run directories in seed order (seed10 after seed2)."""
    return sorted(arm_dir.glob("seed*"), key=lambda p: int(p.name[4:] or 0))


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _rows(study: dict[str, Any], results: list[ArmResult]) -> list[dict[str, Any]]:
    reference = next(r for r in results if r.name == study["reference"])
    rows = []
    for r in results:
        row: dict[str, Any] = {"arm": r.name, "n": len(r.summaries), "seeds": " ".join(r.seeds)}
        if r.summaries:
            row["model"] = r.summaries[0].get("model", "")
            row["params_m"] = r.summaries[0].get("params_m")
        for key, col in MEASURES.items():
            row[f"{col}_mean"], row[f"{col}_std"], _ = mean_std(r.values(key))
        test = compare(r.values("top1"), reference.values("top1"))
        if r.name == reference.name:
            test = dict(diff=0.0, t=math.nan, p=math.nan, verdict="reference")
        row.update(top1_diff=test["diff"], welch_t=test["t"], welch_p=test["p"], verdict=test["verdict"])
        rows.append(row)
    return rows


def markdown_table(study: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table: mean ± std over seeds, and Welch's test against the reference arm."""
    lines = [
        f"Study `{study['name']}`: mean ± std over seeds (n runs); top-1 of the final weights on the validation "
        f"split. Last column: Welch's t-test of top-1 against the reference arm `{study['reference']}` "
        f"(p < {ALPHA}: the difference exceeds the seed spread).",
        "",
        "| arm | n | params (M) | top-1 (%) | best epoch | wall time (s) | img/s | Δ top-1 | p (Welch) | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        params = r.get("params_m")
        cells = [
            f"`{r['arm']}`",
            str(r["n"]),
            "-" if params is None else f"{params:.3f}",
            _fmt(r["top1_mean"], r["top1_std"], 2),
            _fmt(r["best_epoch_mean"], r["best_epoch_std"], 1),
            _fmt(r["wall_time_s_mean"], r["wall_time_s_std"], 0),
            _fmt(r["img_per_s_mean"], r["img_per_s_std"], 0),
            "-" if math.isnan(r["top1_diff"]) else f"{r['top1_diff']:+.2f}",
            "-" if math.isnan(r["welch_p"]) else f"{r['welch_p']:.3f}",
            r["verdict"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(rows: list[dict[str, Any]], results: list[ArmResult], path: Path, title: str) -> None:
    """Top-1 per arm: mean with a ± std error bar, every seed as a dot."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 3.8))
    for i, (row, r) in enumerate(zip(rows, results)):
        if r.summaries:
            std = 0.0 if math.isnan(row["top1_std"]) else row["top1_std"]
            ax.errorbar(i, row["top1_mean"], yerr=std, fmt="o", capsize=5, color="C0")
            ax.plot([i] * len(r.summaries), r.values("top1"), ".", color="C1", alpha=0.7)
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results: list[ArmResult], path: Path, title: str) -> None:
    """Validation top-1 against epoch per arm: the mean over seeds, shaded ± std (each run's metrics.csv)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, r in enumerate(results):
        per_epoch: dict[int, list[float]] = {}
        for rows in r.curves:
            for row in rows:
                if row.get("val_top1") not in (None, ""):
                    per_epoch.setdefault(int(row["epoch"]), []).append(float(row["val_top1"]))
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        stats = [mean_std(per_epoch[e]) for e in epochs]
        means = [m for m, _, _ in stats]
        stds = [0.0 if math.isnan(s) else s for _, s, _ in stats]
        ax.plot(epochs, means, marker="o", markersize=3, color=f"C{i}", label=r.name)
        ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=f"C{i}", alpha=0.15)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def depth_rows(results: list[ArmResult]) -> list[dict[str, Any]]:
    """Per arm, layer and statistic: mean and std over seeds of ``fcvit analyze stats``."""
    from ..analysis.stats import STAT_NAMES

    rows = []
    for r in results:
        if not r.stats:
            continue
        for i, layer in enumerate(r.stats[0]):
            row: dict[str, Any] = {"arm": r.name, "layer": i, "name": layer["name"], "n": len(r.stats)}
            for s in STAT_NAMES:
                row[f"{s}_mean"], row[f"{s}_std"], _ = mean_std([seed[i]["statistics"][s] for seed in r.stats])
            rows.append(row)
    return rows


def plot_depth(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Each statistic against depth, one line per arm (mean over seeds, ± std error bars)."""
    from ..analysis.stats import STAT_NAMES

    plt = _plt()
    fig, axes = plt.subplots(1, len(STAT_NAMES), figsize=(4 * len(STAT_NAMES), 3.4), squeeze=False)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for ax, s in zip(axes[0], STAT_NAMES):
        for i, arm in enumerate(arms):
            mine = [r for r in rows if r["arm"] == arm]
            stds = [0.0 if math.isnan(r[f"{s}_std"]) else r[f"{s}_std"] for r in mine]
            ax.errorbar([r["layer"] for r in mine], [r[f"{s}_mean"] for r in mine], yerr=stds, marker="o",
                        markersize=3, capsize=3, color=f"C{i}", label=arm)  # fmt: skip
        ax.set_title(s.replace("_", " "))
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def report_study(study_dir: str | Path, output: str | Path | None = None) -> dict[str, Any]:
    """Write ``results.csv``, ``results.md``, ``accuracy.png``, ``curves.png`` (and for analysis studies
    ``depth.csv``, ``depth.png``, ``attention_<arm>.png``) to ``output`` (default ``STUDY_DIR/report``); returns
    the rows and paths."""
    study_dir = Path(study_dir)
    study, results = collect(study_dir)
    if not any(r.summaries for r in results):
        raise StudyError(f"{study_dir}: no finished run yet (no summary.json under its arms)")
    out = Path(output) if output else study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(study, results)
    _write_csv(rows, out / "results.csv")
    table = markdown_table(study, rows)
    files = ["results.csv", "results.md", "accuracy.png", "curves.png"]
    plot_accuracy(rows, results, out / "accuracy.png", f"{study['name']}: top-1 per arm (mean ± std, seeds)")
    plot_curves(results, out / "curves.png", f"{study['name']}: validation top-1")
    depth = depth_rows(results)
    if depth:
        _write_csv(depth, out / "depth.csv")
        plot_depth(depth, out / "depth.png", f"{study['name']}: attention statistics against depth")
        files += ["depth.csv", "depth.png"]
        table += "\n" + depth_table(depth)
    files += copy_attention_grids(study_dir, out)
    (out / "results.md").write_text(table)
    return dict(rows=rows, depth=depth, table=table, output=str(out), files=files)


def copy_attention_grids(study_dir: Path, out: Path) -> list[str]:
    """Copy, per arm, the first test image's Fig. 2-style grid (``fcvit analyze attention``) of its first seed that
    has one to ``out/attention_<arm>.png``: the compact record of an analysis study; the others stay in the runs."""
    copied = []
    for arm_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        grids = [g for seed in _seed_dirs(arm_dir) for g in seed.glob("analysis/attention/attention_00_*.png")]
        if grids:
            shutil.copyfile(grids[0], out / f"attention_{arm_dir.name}.png")
            copied.append(f"attention_{arm_dir.name}.png")
    return copied


def depth_table(rows: list[dict[str, Any]]) -> str:
    """The attention statistics per arm and block as a Markdown table (mean ± std over seeds)."""
    from ..analysis.stats import STAT_NAMES

    lines = [
        "Attention statistics per block (`fcvit analyze stats` on the validation split; mean ± std over seeds).",
        "",
        "| arm | block | layer | n | " + " | ".join(s.replace("_", " ") for s in STAT_NAMES) + " |",
        "|---|---:|---|---:|" + "---:|" * len(STAT_NAMES),
    ]
    for r in rows:
        stats = [_fmt(r[f"{s}_mean"], r[f"{s}_std"], 3) for s in STAT_NAMES]
        lines.append(f"| `{r['arm']}` | {r['layer']} | {r['name']} | {r['n']} | " + " | ".join(stats) + " |")
    return "\n".join(lines) + "\n"
