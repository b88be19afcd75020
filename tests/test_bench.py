"""``fcvit bench``: interleaved timing, a valid Markdown table and JSON, peak memory, bad input."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from fcvit.accel import is_optimized
from fcvit.bench.memory import peak_rss_mb_in_subprocess
from fcvit.bench.speed import BenchConfig, backend_of, build_workload, model_of_spec, run_benchmark
from fcvit.bench.timing import interleaved_times, round_ratios, summarize
from fcvit.cli import main


def test_interleaved_times_runs_workloads_in_rounds():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert summarize([1.0, 2.0, 3.0, 4.0, 100.0])["median"] == 3.0
    assert round_ratios([2.0, 4.0, 6.0], [1.0, 1.0, 2.0]) == [2.0, 4.0, 3.0]
    assert summarize(round_ratios([2.0, 4.0, 6.0], [1.0, 1.0, 2.0]))["median"] == 3.0


def test_bench_two_models_writes_table_and_json(tmp_path, capsys):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", "fcvit_tiny", "test_convnext", "--plain", "--img-size", "32", "--batch-size", "2"]
    args += ["--rounds", "2", "--warmup", "1", "--threads", "1", "--no-memory"]
    assert main([*args, "--json", str(out_json), "--markdown", str(out_md)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["reference"] == "test_convnext"
    assert [r["model"] for r in result["rows"]] == ["fcvit_tiny", "test_convnext", "fcvit_tiny:plain"]
    for row in result["rows"]:
        for mode in ("infer", "train"):
            stats = row[f"{mode}_img_s"]
            assert 0 < stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
        assert row["params_m"] > 0 and row["gmacs"] > 0
    ref = next(r for r in result["rows"] if r["model"] == "test_convnext")
    assert ref["infer_vs_ref"] == ref["train_vs_ref"] == 1.0 and ref["infer_vs_ref_iqr"] == [1.0, 1.0]
    fast = result["rows"][0]
    assert fast["infer_vs_ref_iqr"][0] <= fast["infer_vs_ref"] <= fast["infer_vs_ref_iqr"][1]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "fcvit_tiny:plain" in out_md.read_text() and result["machine"]["torch"]


def test_profile_writes_the_operators_of_every_model_and_mode(tmp_path):
    """--profile: an operator table per model and mode, sorted by self time, the convolutions among them."""
    cfg = BenchConfig(img_size=32, batch_size=2, rounds=1, warmup=0, memory=False, threads=1, profile=str(tmp_path))
    result = run_benchmark(["test_convnext", "test_resnet"], cfg)
    expected = ["test_convnext-infer.txt", "test_convnext-train.txt", "test_resnet-infer.txt", "test_resnet-train.txt"]
    assert sorted(result["profiles"]) == expected == sorted(p.name for p in tmp_path.iterdir())
    table = (tmp_path / "test_resnet-train.txt").read_text()
    assert table.startswith("test_resnet, train, cpu") and "Self CPU" in table and "aten::convolution" in table
    assert "aten::convolution_backward" in table


def test_peak_rss_is_measured_in_a_fresh_process():
    cfg = BenchConfig(img_size=32, batch_size=2, modes=("train",), warmup=0, threads=1)
    small = peak_rss_mb_in_subprocess("test_convnext", "train", asdict(cfg))
    assert 0 < small < 1000


def test_bench_onnxruntime_column():
    cfg = BenchConfig(img_size=32, batch_size=2, modes=("infer",), rounds=1, warmup=0, memory=False, onnx=True)
    row = run_benchmark(["test_resnet"], cfg)["rows"][0]
    assert row["onnx_img_s"]["median"] > 0 and row["onnx_vs_ref"] == 1.0


def test_bad_input_is_reported():
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        run_benchmark(["no_such_net"], BenchConfig(memory=False))
    with pytest.raises(ValueError, match="fcvit.optimize changes nothing in test_resnet"):
        run_benchmark(["test_resnet:plain"], BenchConfig(img_size=32, batch_size=1, memory=False))
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        run_benchmark(["fcvit_tiny:fast"], BenchConfig(img_size=32, batch_size=1, memory=False))
    with pytest.raises(ValueError, match="CUDA channels_last maps only"):
        run_benchmark(["fcvit_tiny:triton"], BenchConfig(img_size=32, batch_size=1, memory=False))
    with pytest.raises(ValueError, match="dtype must be one of"):
        BenchConfig(dtype="fp8")
    with pytest.raises(ValueError, match="CUDA is not available|onnxruntime"):
        BenchConfig(device="cuda", onnx=True)


def test_variants_choose_the_backend():
    """A plain name runs optimised (``--no-optimize``: plain), ``NAME:plain`` plain, ``NAME:triton`` with the Triton
    depth-wise convs; the built model is plain in every case (the workload applies the backend)."""
    cfg = BenchConfig(img_size=32, batch_size=1, memory=False)
    assert not is_optimized(model_of_spec("fcvit_tiny", 32))
    assert [backend_of(s, cfg) for s in ("fcvit_tiny", "fcvit_tiny:plain", "fcvit_tiny:triton")] == [
        "auto",
        None,
        "triton",
    ]
    assert backend_of("fcvit_tiny", BenchConfig(optimize=False)) is None
    work = build_workload("fcvit_tiny", BenchConfig(img_size=32, batch_size=1, modes=("infer",), memory=False))
    assert work.gmacs > 0
