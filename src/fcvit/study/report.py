"""``fcvit study report``: per arm mean ± std over seeds, each comparison's difference with its 95 % confidence
interval, the smallest difference the seeds could detect, and a verdict; the validation curve per epoch
likewise; ``results.csv``, ``runs.csv``, ``curves.csv``, Markdown tables and plots.

A comparison is an arm against the reference arm, or a pair declared in the study file (an ablation's
consecutive steps), optionally with the paper's claimed difference. With the two arms' final top-1 over seeds
(means m1, m2, sample variances s1², s2², counts n1, n2):

- difference d = m1 - m2, standard error SE = sqrt(s1²/n1 + s2²/n2) (Welch: the spreads may differ);
- Welch-Satterthwaite degrees of freedom df = SE⁴ / ((s1²/n1)² / (n1 - 1) + (s2²/n2)² / (n2 - 1));
- 95 % confidence interval d ± t(0.975, df) · SE, and Welch's two-sided p (:func:`scipy.stats.ttest_ind` with
  ``equal_var=False``, which gives t, p, df and the interval);
- minimum detectable difference at 80 % power, two-sided alpha 0.05: MDD = (t(0.975, df) + t(0.80, df)) · SE,
  t(q, df) being Student's t quantile (:data:`scipy.stats.t`): a true difference of MDD is found (the interval
  excludes 0) in 80 % of repetitions of the study;
- verdict: ``higher`` / ``lower`` when the interval excludes 0; ``equal within ±X`` when it lies inside
  ± |claim| (X: the larger end of the interval in absolute value, 2 decimals), so that the paper's effect is ruled
  out at this scale; otherwise ``undecided`` (the seeds neither separate the arms nor rule the claim out).

When neither arm has any spread (every seed the same top-1) SE is 0: the interval is the difference itself.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.atomic import atomic_write_text
from .runner import FAILED
from .study import StudyError

__all__ = ["ALPHA", "POWER", "ArmResult", "MEASURES", "compare", "mean_std", "report_study"]

ALPHA = 0.05  # two-sided: 95 % confidence intervals
POWER = 0.8  # of the minimum detectable difference
# summary.json key -> column name
MEASURES = {"top1": "top1", "best_epoch": "best_epoch", "wall_time_s": "wall_time_s", "train_img_per_s": "img_per_s"}
# summary.json key -> runs.csv column: one row per finished run, the record the tables are computed from
RUN_COLUMNS = {
    "top1": "top1",
    "best_top1": "best_top1",
    "best_epoch": "best_epoch",
    "wall_time_s": "wall_time_s",
    "train_img_per_s": "img_per_s",
}


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n - 1; NaN for one value) and count of the finite ``values``."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs)


def verdict(ci_low: float, ci_high: float, claim: float | None) -> str:
    """``higher``/``lower`` (the interval excludes 0), ``equal within ±X`` (it lies inside ± |claim|), else
    ``undecided``."""
    if ci_low > 0:
        return "higher"
    if ci_high < 0:
        return "lower"
    bound = max(abs(ci_low), abs(ci_high))
    if claim is not None and bound < abs(claim):
        return f"equal within ±{bound:.2f}"
    return "undecided"


def compare(
    values: Sequence[float], reference: Sequence[float], claim: float | None = None, alpha: float = ALPHA
) -> dict[str, Any]:
    """``values`` against ``reference`` (the module docstring has the formulas): the difference of means ``diff``,
    Welch's ``t``, ``p`` and ``df``, the interval ``ci_low``..``ci_high``, ``mdd`` and the ``verdict`` (``n/a``
    with fewer than 2 values on a side)."""
    from scipy.stats import t as student_t
    from scipy.stats import ttest_ind

    a, b = mean_std(values), mean_std(reference)
    diff = a[0] - b[0]
    result = dict(diff=diff, t=math.nan, p=math.nan, df=math.nan, ci_low=math.nan, ci_high=math.nan, mdd=math.nan)
    if a[2] < 2 or b[2] < 2:
        return dict(result, verdict="n/a (needs 2 seeds per arm)")
    se = math.sqrt(a[1] ** 2 / a[2] + b[1] ** 2 / b[2])
    if se == 0:  # no spread at all: any difference is beyond it
        result.update(p=float(diff == 0), t=0.0 if diff == 0 else math.copysign(math.inf, diff))
        result.update(ci_low=diff, ci_high=diff, mdd=0.0)
    else:
        test = ttest_ind(values, reference, equal_var=False)
        ci = test.confidence_interval(1 - alpha)
        df = float(test.df)
        mdd = (student_t.ppf(1 - alpha / 2, df) + student_t.ppf(POWER, df)) * se
        result.update(t=float(test.statistic), p=float(test.pvalue), df=df, mdd=float(mdd))
        result.update(ci_low=float(ci.low), ci_high=float(ci.high))
    return dict(result, verdict=verdict(result["ci_low"], result["ci_high"], claim))


@dataclass
class ArmResult:
    """One arm's runs: the summaries and metrics of its seeds and, for analysis studies, their statistics; and the
    seed directories that are not counted (or failed after training), each with why."""

    name: str
    seeds: list[str]
    summaries: list[dict[str, Any]]
    curves: list[list[dict[str, str]]]
    stats: list[list[dict[str, Any]]]  # per seed: the layers of analysis/stats/stats.json
    failed: dict[str, str] = field(default_factory=dict)  # seed -> the failure's reason (its job log's last line)
    unreadable: dict[str, str] = field(default_factory=dict)  # seed -> which file could not be read, and why
    unfinished: list[str] = field(default_factory=list)  # seeds without summary.json that did not fail

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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_run(
    trained: Path, seed_dir: Path, root: Path
) -> tuple[dict[str, Any], list[dict[str, str]], list | None] | str | None:
    """A finished run's summary, validation curve and attention statistics (``seed_dir``'s, None without);
    None when it has not finished (no ``summary.json``); a one-line reason, naming the file relative to ``root``,
    when a file of it cannot be read."""

    def unreadable(path: Path, why: str) -> str:
        return f"{path.relative_to(root) if path.is_relative_to(root) else path}: {why}"

    path = trained / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return unreadable(path, str(e))
    if not isinstance(summary, dict) or not _number(summary.get("top1")):
        return unreadable(path, "no numeric 'top1' (not a summary of `fcvit train`)")
    path = trained / "metrics.csv"
    try:
        with open(path, newline="") as f:
            curve = list(csv.DictReader(f))
        for row in curve:
            int(row["epoch"])
            if row.get("val_top1") not in (None, ""):
                float(row["val_top1"])
    except OSError as e:
        return unreadable(path, e.strerror or str(e))
    except (ValueError, KeyError, TypeError, csv.Error) as e:
        return unreadable(path, f"{type(e).__name__}: {e}")
    path = seed_dir / "analysis" / "stats" / "stats.json"
    if not path.is_file():
        return summary, curve, None
    layers = _read_json(path)
    if not isinstance(layers, dict) or not isinstance(layers.get("layers"), list):
        return unreadable(path, "not valid JSON with a 'layers' list")
    return summary, curve, layers["layers"]


def _failure(seed_dir: Path) -> str | None:
    """The reason recorded in ``seed_dir/failed.json`` by ``fcvit study run``, None if the run did not fail."""
    path = seed_dir / FAILED
    if not path.is_file():
        return None
    record = _read_json(path)
    return str(record.get("reason")) if isinstance(record, dict) else f"({path} unreadable)"


def collect(study_dir: Path, seeds: int | None = None) -> tuple[dict[str, Any], list[ArmResult]]:
    """The study description (``study.json``) and the runs of each arm under ``study_dir``: the finished ones and
    those that failed, could not be read or have not finished; with ``seeds``, only seed0..seed<seeds - 1>."""
    study = _read_json(study_dir / "study.json")
    if study is None:
        raise StudyError(f"{study_dir} holds no study.json: not a study directory (fcvit study run writes it)")
    results = []
    for arm in study["arms"]:
        result = ArmResult(arm["name"], [], [], [], [])
        for seed_dir in _seed_dirs(study_dir / arm["name"], seeds):
            failure = _failure(seed_dir)
            if failure is not None:
                result.failed[seed_dir.name] = failure
            run = read_run(_trained_dir(study, arm, study_dir, seed_dir), seed_dir, study_dir.parent)
            if isinstance(run, str):
                result.unreadable[seed_dir.name] = run
            elif run is None:
                if failure is None:
                    result.unfinished.append(seed_dir.name)
            else:
                summary, curve, layers = run
                result.seeds.append(seed_dir.name)
                result.summaries.append(summary)
                result.curves.append(curve)
                if layers is not None:
                    result.stats.append(layers)
        results.append(result)
    return study, results


def _seed_dirs(arm_dir: Path, seeds: int | None = None) -> list[Path]:
    """An arm's ``seed<k>`` run directories in seed order (seed10 after seed2); with ``seeds``, k < seeds only."""
    dirs = [p for p in arm_dir.glob("seed*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted((p for p in dirs if seeds is None or int(p.name[4:]) < seeds), key=lambda p: int(p.name[4:]))


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def comparisons(study: dict[str, Any], names: Sequence[str]) -> list[tuple[str, str, float | None]]:
    """(arm, against, claim) of every comparison of the report: each arm against the reference (with the claim
    declared for that pair), then the declared pairs of other arms, in the study file's order."""
    reference = study["reference"]
    declared: dict[tuple[str, str], float | None] = {}
    for c in study.get("comparisons", []):
        if c["arm"] not in names or c["against"] not in names:
            raise StudyError(f"study.json: comparison {c['arm']} against {c['against']} names an arm it does not hold")
        declared[(c["arm"], c["against"])] = c.get("claim")
    pairs = [(n, reference, declared.pop((n, reference), None)) for n in names if n != reference]
    return pairs + [(a, b, claim) for (a, b), claim in declared.items()]


def _arm_columns(r: ArmResult) -> dict[str, Any]:
    row: dict[str, Any] = {"arm": r.name, "n": len(r.summaries), "seeds": " ".join(r.seeds)}
    if r.summaries:
        row["model"] = r.summaries[0].get("model", "")
        row["params_m"] = r.summaries[0].get("params_m")
    for key, col in MEASURES.items():
        row[f"{col}_mean"], row[f"{col}_std"], _ = mean_std(r.values(key))
    return row


def _test_columns(test: dict[str, Any], against: str, claim: float | None) -> dict[str, Any]:
    return dict(
        top1_diff=test["diff"],
        welch_t=test["t"],
        welch_p=test["p"],
        verdict=test["verdict"],
        against=against,
        claim=claim,
        ci_low=test["ci_low"],
        ci_high=test["ci_high"],
        mdd=test["mdd"],
        welch_df=test["df"],
    )


def _rows(study: dict[str, Any], results: list[ArmResult]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per arm (against the reference) and one per declared pair of two other arms; each with the arm's
    columns (mean ± std over seeds), the comparison's and the seeds that failed or could not be read."""
    by_name = {r.name: r for r in results}
    reference = study["reference"]
    untested = dict(diff=0.0, t=math.nan, p=math.nan, df=math.nan, ci_low=math.nan, ci_high=math.nan, mdd=math.nan)
    tested = {
        (arm, against): (claim, compare(by_name[arm].values("top1"), by_name[against].values("top1"), claim))
        for arm, against, claim in comparisons(study, list(by_name))
    }

    def row(r: ArmResult, against: str) -> dict[str, Any]:
        claim, test = tested.get((r.name, against), (None, dict(untested, verdict="reference")))
        columns = {**_arm_columns(r), **_test_columns(test, "" if r.name == against else against, claim)}
        return dict(columns, failed=" ".join(r.failed), unreadable=" ".join(r.unreadable))

    arms = [row(r, reference) for r in results]
    steps = [row(by_name[arm], against) for arm, against in tested if against != reference]
    return arms, steps


def _signed(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.2f}"


def _test_cells(r: dict[str, Any]) -> list[str]:
    """Δ top-1, 95 % CI, MDD, p, claim and verdict of a row, as table cells."""
    ci = "-" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
    return [
        _signed(r["top1_diff"]),
        ci,
        "-" if math.isnan(r["mdd"]) else f"{r['mdd']:.2f}",
        "-" if math.isnan(r["welch_p"]) else f"{r['welch_p']:.3f}",
        _signed(r["claim"]),
        r["verdict"],
    ]


TEST_HEADER = "Δ top-1 | 95 % CI | MDD | p (Welch) | claim | verdict"


def markdown_table(
    study: dict[str, Any],
    rows: list[dict[str, Any]],
    steps: Sequence[dict[str, Any]] = (),
    results: Sequence[ArmResult] = (),
) -> str:
    """The results as Markdown: mean ± std over seeds per arm and each comparison (against the reference, then the
    declared pairs of other arms); then the runs that failed, could not be read or have not finished."""
    lines = [
        f"Study `{study['name']}`: mean ± std over seeds (n runs); top-1 of the final weights on the validation "
        f"split. Δ top-1: difference of mean top-1 to the reference arm `{study['reference']}` (or to `against`); "
        f"95 % CI: Welch's confidence interval of that difference; MDD: the smallest difference these seeds "
        f"detect with {POWER * 100:.0f} % power (two-sided alpha {ALPHA}); claim: the paper's difference. Verdict: "
        "higher/lower (the interval excludes 0), equal within ±X (the interval lies inside ± the claim), undecided.",
        "",
        f"| arm | n | params (M) | top-1 (%) | best epoch | wall time (s) | img/s | {TEST_HEADER} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
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
            *_test_cells(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if steps:
        n = {r["arm"]: r["n"] for r in rows}
        lines += [
            "",
            "Declared comparisons between other arms (e.g. an ablation's consecutive steps): `arm` against `against`.",
            "",
            f"| arm | against | n | {TEST_HEADER} |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in steps:
            cells = [f"`{r['arm']}`", f"`{r['against']}`", f"{n[r['arm']]} vs {n[r['against']]}", *_test_cells(r)]
            lines.append("| " + " | ".join(cells) + " |")
    missing = [
        f"- `{r.name}/{seed}`: {what}"
        for r in results
        for seed, what in sorted(
            [(s, f"failed: {why}") for s, why in r.failed.items()]
            + [(s, f"could not be read: {why}") for s, why in r.unreadable.items()]
            + [(s, "not finished (no summary.json)") for s in r.unfinished],
            key=lambda item: int(item[0][4:]),
        )
    ]
    if missing:
        lines += ["", "Runs that failed, could not be read or have not finished (not counted unless they trained):", ""]
        lines += missing
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


def epoch_values(r: ArmResult) -> dict[int, list[float]]:
    """Validation top-1 of each seed per epoch (from each run's ``metrics.csv``), epochs in order."""
    per_epoch: dict[int, list[float]] = {}
    for rows in r.curves:
        for row in rows:
            if row.get("val_top1") not in (None, ""):
                per_epoch.setdefault(int(row["epoch"]), []).append(float(row["val_top1"]))
    return dict(sorted(per_epoch.items()))


def curve_rows(study: dict[str, Any], results: list[ArmResult]) -> list[dict[str, Any]]:
    """Per arm and epoch: validation top-1, mean ± std over seeds, and its difference to the reference arm at the
    same epoch (:func:`compare`: 95 % CI, MDD, Welch's p, verdict): how a claim of faster convergence is read."""
    by_name = {r.name: epoch_values(r) for r in results}
    reference = by_name.get(study["reference"], {})
    rows = []
    for name, per_epoch in by_name.items():
        for epoch, values in per_epoch.items():
            mean, std, n = mean_std(values)
            row: dict[str, Any] = dict(arm=name, epoch=epoch, n=n, val_top1_mean=mean, val_top1_std=std)
            if name != study["reference"] and epoch in reference:
                row.update(_test_columns(compare(values, reference[epoch]), study["reference"], None))
            rows.append(row)
    return rows


def curves_table(study: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The per-epoch validation top-1 of :func:`curve_rows` as two Markdown tables, arms by epochs: mean ± std
    over seeds, then the difference to the reference with its 95 % CI."""
    epochs = sorted({r["epoch"] for r in rows})
    cell = {(r["arm"], r["epoch"]): r for r in rows}
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    head = "| arm | " + " | ".join(f"ep. {e}" for e in epochs) + " |\n|---|" + "---:|" * len(epochs)

    def line(arm: str, text: Callable[[dict[str, Any]], str]) -> str:
        return f"| `{arm}` | " + " | ".join(text(cell[arm, e]) if (arm, e) in cell else "-" for e in epochs) + " |"

    def diff(r: dict[str, Any]) -> str:
        if "ci_low" not in r or math.isnan(r["ci_low"]):
            return _signed(r.get("top1_diff"))
        return f"{r['top1_diff']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"

    lines = [
        "Validation top-1 (%) per epoch: mean ± std over seeds (each run's `metrics.csv`).",
        "",
        head,
        *(line(arm, lambda r: _fmt(r["val_top1_mean"], r["val_top1_std"], 1)) for arm in arms),
        "",
        f"Difference to `{study['reference']}` at the same epoch, points, with its 95 % CI (Welch).",
        "",
        head,
        *(line(arm, diff) for arm in arms if arm != study["reference"]),
    ]
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Validation top-1 against epoch per arm (:func:`curve_rows`): the mean over seeds, shaded ± std."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, arm in enumerate(dict.fromkeys(r["arm"] for r in rows)):
        mine = [r for r in rows if r["arm"] == arm]
        epochs = [r["epoch"] for r in mine]
        means = [r["val_top1_mean"] for r in mine]
        stds = [0.0 if math.isnan(r["val_top1_std"]) else r["val_top1_std"] for r in mine]
        ax.plot(epochs, means, marker="o", markersize=3, color=f"C{i}", label=arm)
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
    """``rows`` as CSV (columns: every key, in first-seen order), written atomically."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, text.getvalue())


def run_rows(results: list[ArmResult]) -> list[dict[str, Any]]:
    """One row per finished run (arm, seed and its summary's measures): what every table is computed from."""
    return [
        {"arm": r.name, "seed": int(seed[4:]), **{col: summary.get(key) for key, col in RUN_COLUMNS.items()}}
        for r in results
        for seed, summary in zip(r.seeds, r.summaries)
    ]


def report_study(study_dir: str | Path, output: str | Path | None = None, seeds: int | None = None) -> dict[str, Any]:
    """Write ``results.csv``, ``runs.csv``, ``results.md``, ``accuracy.png``, ``curves.csv``, ``curves.png`` (and for
    analysis studies ``depth.csv``, ``depth.png``, ``attention_<arm>.png``) and the runs' records (``runs/``,
    :func:`copy_run_records`) to ``output`` (default ``STUDY_DIR/report``); with ``seeds``, of the first ``seeds``
    seeds of every arm only (an 8-seed study's 3-seed table);
    returns the rows (``rows``: one per arm, ``steps``: the declared pairs of other arms, ``runs``, ``curves``: per
    arm and epoch) and paths."""
    study_dir = Path(study_dir)
    study, results = collect(study_dir, seeds)
    if not any(r.summaries for r in results):
        raise StudyError(f"{study_dir}: no finished run yet (no summary.json under its arms)")
    out = Path(output) if output else study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows, steps = _rows(study, results)
    runs = run_rows(results)
    _write_csv(rows + steps, out / "results.csv")
    _write_csv(runs, out / "runs.csv")
    table = markdown_table(study, rows, steps, results)
    if seeds is not None:
        table = f"The first {seeds} seeds of every arm only (`fcvit study report --seeds {seeds}`).\n\n" + table
    files = ["results.csv", "runs.csv", "results.md", "accuracy.png"]
    plot_accuracy(rows, results, out / "accuracy.png", f"{study['name']}: top-1 per arm (mean ± std, seeds)")
    curves = curve_rows(study, results)
    if curves:
        _write_csv(curves, out / "curves.csv")
        plot_curves(curves, out / "curves.png", f"{study['name']}: validation top-1")
        files += ["curves.csv", "curves.png"]
        table += "\n" + curves_table(study, curves)
    depth = depth_rows(results)
    if depth:
        _write_csv(depth, out / "depth.csv")
        plot_depth(depth, out / "depth.png", f"{study['name']}: attention statistics against depth")
        files += ["depth.csv", "depth.png"]
        table += "\n" + depth_table(depth)
    files += copy_attention_grids(study_dir, out, seeds)
    copy_run_records(study_dir, study, results, out / "runs")
    files.append("runs/")
    atomic_write_text(out / "results.md", table)
    return dict(
        rows=rows, steps=steps, runs=runs, curves=curves, depth=depth, table=table, output=str(out), files=files
    )


RECORD_FILES = ("summary.json", "metrics.csv", "config.yaml")  # a finished run's record, without its weights


def copy_run_records(study_dir: Path, study: dict[str, Any], results: list[ArmResult], out: Path) -> None:
    """Copy ``study.json`` and every finished run's record (:data:`RECORD_FILES` and its analyses' JSON) to
    ``out/ARM/seedK``: a study directory without weights, small enough to commit. ``fcvit study report OUT``
    computes the same tables from it; copied to ``ROOT/STUDY`` on another machine, ``fcvit study run`` counts those
    runs as done and trains only the missing ones (a study outlives the machine it ran on). Arms that analyse
    another study's runs (``source``) keep their analyses only: the trained runs are that study's records."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study_dir / "study.json", out / "study.json")
    for arm, result in zip(study["arms"], results):
        for seed in result.seeds:
            seed_dir, target = study_dir / arm["name"] / seed, out / arm["name"] / seed
            target.mkdir(parents=True, exist_ok=True)
            if not arm.get("source"):
                for name in RECORD_FILES:
                    if (seed_dir / name).is_file():
                        shutil.copyfile(seed_dir / name, target / name)
            for record in seed_dir.glob("analysis/*/*.json"):
                (target / record.parent.relative_to(seed_dir)).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(record, target / record.relative_to(seed_dir))


def copy_attention_grids(study_dir: Path, out: Path, seeds: int | None = None) -> list[str]:
    """Copy, per arm, the first test image's Fig. 2-style grid (``fcvit analyze attention``) of its first seed that
    has one to ``out/attention_<arm>.png``: the compact record of an analysis study; the others stay in the runs."""
    copied = []
    for arm_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
        grids = [g for seed in _seed_dirs(arm_dir, seeds) for g in seed.glob("analysis/attention/attention_00_*.png")]
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
