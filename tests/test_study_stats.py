"""fcvit study report's statistics on constructed numbers (Welch's interval, degrees of freedom, minimum detectable
difference, the verdict words) and its files on constructed run directories (comparisons declared with the paper's
claims, runs.csv, the per-epoch curves, runs that failed or cannot be read)."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
from scipy import stats

from fcvit.study.report import compare, mean_std, report_study


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(difference, standard error, Welch-Satterthwaite df) from their closed forms."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return statistics.fmean(a) - statistics.fmean(b), se, df


def test_interval_degrees_of_freedom_and_detectable_difference_on_constructed_numbers():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    m, s, n = mean_std([5.0])
    assert (m, n) == (5.0, 1) and math.isnan(s)

    # unequal spreads and counts: 4 seeds (variance 0.067) against 6 with a wider spread (0.277)
    a, b = [87.1, 87.3, 86.9, 87.5], [86.2, 87.4, 86.8, 85.9, 87.0, 86.5]
    diff, se, df = _welch_by_hand(a, b)
    assert 3 < df < 8  # between min(n) - 1 and n1 + n2 - 2: Welch's df for unequal spreads
    t975, t80 = stats.t.ppf(0.975, df), stats.t.ppf(0.8, df)
    res = compare(a, b)
    assert res["diff"] == pytest.approx(diff) and res["df"] == pytest.approx(df)
    assert res["t"] == pytest.approx(diff / se)
    assert res["p"] == pytest.approx(2 * stats.t.sf(abs(diff / se), df))
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((diff - t975 * se, diff + t975 * se))
    assert res["mdd"] == pytest.approx((t975 + t80) * se)
    # the same spreads with 4x the seeds: the interval and the detectable difference shrink about 2x
    more = compare(a * 4, b * 4)
    assert more["mdd"] < 0.55 * res["mdd"] and more["ci_high"] - more["ci_low"] < 0.55 * (
        res["ci_high"] - res["ci_low"]
    )
    # equal spreads and counts: df is n1 + n2 - 2, the interval is the pooled t interval
    c, d = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    res = compare(c, d)
    assert res["df"] == pytest.approx(4.0)
    half = stats.t.ppf(0.975, 4) * math.sqrt(2 / 3)  # t(0.975, 4) * sqrt(1/3 + 1/3)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((-3 - half, -3 + half))


def test_every_verdict_word_is_reachable():
    a, b = [80.0, 81.0, 82.0], [70.0, 72.0, 71.5]
    assert compare(a, b)["verdict"] == "higher" and compare(b, a)["verdict"] == "lower"
    close, near = [80.0, 80.1, 79.9, 80.0], [80.05, 79.95, 80.0, 80.0]
    res = compare(close, near, claim=0.5)
    bound = max(abs(res["ci_low"]), abs(res["ci_high"]))
    assert bound < 0.5 and res["verdict"] == f"equal within ±{bound:.2f}"
    assert compare(close, near, claim=-0.5)["verdict"] == res["verdict"]  # the claim's size counts, not its sign
    assert compare(close, near, claim=0.05)["verdict"] == "undecided"  # the interval reaches past the claim
    assert compare(close, near)["verdict"] == "undecided"  # no claim: nothing to rule out
    wide = compare([80.0, 83.0, 81.0], [81.0, 79.0, 82.5], claim=0.5)
    assert wide["ci_low"] < 0 < wide["ci_high"] and wide["verdict"] == "undecided"
    assert compare([80.0, 80.0], [79.0, 79.0])["verdict"] == "higher"  # no spread at all: any gap exceeds it
    same = compare([80.0, 80.0], [80.0, 80.0], claim=0.2)
    assert (same["ci_low"], same["ci_high"], same["mdd"]) == (0.0, 0.0, 0.0) and same["verdict"] == "equal within ±0.00"
    assert compare([80.0], [79.0, 78.0])["verdict"].startswith("n/a")


def _write_run(d, top1, epochs=2, **extra):
    d.mkdir(parents=True)
    summary = dict(model="m", params_m=1.0, top1=top1, best_top1=top1 + 0.5, best_epoch=epochs, wall_time_s=10.0)
    summary.update(train_img_per_s=100.0, **extra)
    (d / "summary.json").write_text(json.dumps(summary))
    rows = "".join(f"{e},{top1 - (epochs - e)}\n" for e in range(1, epochs + 1))
    (d / "metrics.csv").write_text("epoch,val_top1\n" + rows)


def test_report_on_constructed_runs(tmp_path):
    study_dir = tmp_path / "s"
    tops = {
        "ref": [70.0, 71.0, 72.0],
        "better": [80.0, 81.0, 82.0],
        "same": [70.5, 71.5, 70.0],
        "step": [80.4, 80.6, 80.5],
    }
    arms = [dict(name=k, train={}, teacher=None, source=None, seeds=None) for k in tops]
    comparisons = [
        dict(arm="same", against="ref", claim=0.2),  # a claim for a pair with the reference
        dict(arm="step", against="better", claim=-0.5),  # a consecutive step between two other arms
    ]
    study_dir.mkdir()
    study = dict(name="s", reference="ref", arms=arms, comparisons=comparisons)
    (study_dir / "study.json").write_text(json.dumps(study))
    for arm, values in tops.items():
        for k, top1 in enumerate(values):
            _write_run(study_dir / arm / f"seed{k}", top1, epochs=2, wall_time_s=10.0 * k)
    # seeds that are not counted: failed (reason recorded by `fcvit study run`), unreadable, not finished
    (study_dir / "better" / "seed3").mkdir()
    (study_dir / "better" / "seed3" / "failed.json").write_text(json.dumps(dict(reason="ValueError: bad", log="x")))
    _write_run(study_dir / "same" / "seed3", 99.0)
    (study_dir / "same" / "seed3" / "summary.json").write_text('{"top1": 99.0')  # cut short
    _write_run(study_dir / "same" / "seed4", 99.0)
    (study_dir / "same" / "seed4" / "metrics.csv").write_text("epoch,val_top1\none,80\n")
    (study_dir / "ref" / "seed3").mkdir()  # killed or still running
    (study_dir / "ref" / "notes").mkdir()  # not a seed directory: ignored

    result = report_study(study_dir)
    rows = {r["arm"]: r for r in result["rows"]}
    assert list(rows) == list(tops) and rows["ref"]["verdict"] == "reference" and rows["ref"]["against"] == ""
    assert rows["better"]["top1_mean"] == pytest.approx(81.0) and rows["better"]["top1_std"] == pytest.approx(1.0)
    assert rows["better"]["best_epoch_mean"] == 2.0 and rows["better"]["wall_time_s_mean"] == 10.0
    assert rows["better"]["n"] == 3 and rows["same"]["n"] == 3  # the unreadable seeds are not counted
    test = compare(tops["better"], tops["ref"])
    assert rows["better"]["top1_diff"] == pytest.approx(10.0) and rows["better"]["verdict"] == "higher"
    assert (rows["better"]["ci_low"], rows["better"]["mdd"]) == (test["ci_low"], test["mdd"])
    assert rows["same"]["claim"] == 0.2 and rows["same"]["verdict"] == "undecided"
    assert rows["better"]["failed"] == "seed3" and rows["same"]["unreadable"] == "seed3 seed4"
    (step,) = result["steps"]
    assert (step["arm"], step["against"], step["claim"]) == ("step", "better", -0.5)
    assert step["top1_diff"] == pytest.approx(-0.5) and step["verdict"] == "undecided"
    assert step["ci_low"] == pytest.approx(compare(tops["step"], tops["better"])["ci_low"])

    out = study_dir / "report"
    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["arm"], r["against"]) for r in csv_rows] == [
        ("ref", ""), ("better", "ref"), ("same", "ref"), ("step", "ref"), ("step", "better")
    ]  # fmt: skip
    for column in ("top1_mean", "welch_p", "ci_low", "ci_high", "mdd", "verdict", "claim", "against"):
        assert column in csv_rows[0]
    with open(out / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 12 and runs[4] == dict(
        arm="better", seed="1", top1="81.0", best_top1="81.5", best_epoch="2", wall_time_s="10.0", img_per_s="100.0"
    )
    # the runs' records (no weights) reproduce the tables, and make a study directory `study run` goes on from
    records = out / "runs"
    assert sorted(p.name for p in (records / "better").iterdir()) == ["seed0", "seed1", "seed2"]

    def measured(rows):  # the failed / unreadable seeds are not records: only the finished runs travel
        return [{k: v for k, v in r.items() if k not in ("failed", "unreadable")} for r in rows]

    assert measured(report_study(records, tmp_path / "again")["rows"]) == measured(result["rows"])
    # the first two seeds only (an 8-seed study's 3-seed table): the other seeds are neither counted nor listed
    first = report_study(study_dir, tmp_path / "first2", seeds=2)
    two = {r["arm"]: r for r in first["rows"]}
    assert two["better"]["n"] == 2 and two["better"]["top1_mean"] == pytest.approx(80.5)
    assert two["better"]["top1_diff"] == pytest.approx(compare(tops["better"][:2], tops["ref"][:2])["diff"])
    assert two["better"]["failed"] == "" and two["same"]["unreadable"] == "" and len(first["runs"]) == 8
    assert "seed2" not in first["table"] and "--seeds 2" in first["table"]
    assert sorted(p.name for p in (tmp_path / "first2" / "runs" / "ref").iterdir()) == ["seed0", "seed1"]
    table = (out / "results.md").read_text()
    assert "| `better` | 3 | 1.000 | 81.00 ± 1.00 | 2.0 ± 0.0 |" in table
    assert f"| +10.00 | [{test['ci_low']:+.2f}, {test['ci_high']:+.2f}] | {test['mdd']:.2f} |" in table
    assert "| `step` | `better` | 3 vs 3 | -0.50 |" in table and "| -0.50 | undecided |" in table
    assert "- `better/seed3`: failed: ValueError: bad" in table
    assert "- `same/seed3`: could not be read: " in table and "summary.json" in table
    assert "- `same/seed4`: could not be read: " in table and "metrics.csv: ValueError" in table
    assert "- `ref/seed3`: not finished (no summary.json)" in table
    assert (out / "curves.png").is_file() and (out / "accuracy.png").is_file()

    # the validation curves per epoch (metrics.csv: top1 - 1 at epoch 1): mean ± std and Δ to the reference
    curves = {(r["arm"], r["epoch"]): r for r in result["curves"]}
    assert len(curves) == 8 and curves["ref", 1]["n"] == 3 and "top1_diff" not in curves["ref", 1]
    early = compare([t - 1 for t in tops["better"]], [t - 1 for t in tops["ref"]])
    assert curves["better", 1]["val_top1_mean"] == pytest.approx(80.0) and curves["better", 1]["val_top1_std"] == 1.0
    assert curves["better", 1]["top1_diff"] == pytest.approx(10.0) and curves["better", 1]["verdict"] == "higher"
    assert (curves["better", 1]["ci_low"], curves["better", 1]["mdd"]) == (early["ci_low"], early["mdd"])
    assert curves["same", 2]["n"] == 3  # the unreadable seeds' curves are not counted either
    with open(out / "curves.csv", newline="") as f:
        assert [(r["arm"], int(r["epoch"])) for r in csv.DictReader(f)] == list(curves)
    assert "| arm | ep. 1 | ep. 2 |" in table and "| `better` | 80.0 ± 1.0 | 81.0 ± 1.0 |" in table
    assert f"| `better` | +10.0 [{early['ci_low']:+.1f}, {early['ci_high']:+.1f}] | +10.0 [" in table
    assert {r["n"] for r in first["curves"]} == {2}
