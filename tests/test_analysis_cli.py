"""``fcvit analyze ...``: every command writes valid PNG and JSON files; bad input gives a clear error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from fcvit.analysis.inputs import demo_images
from fcvit.cli import main
from fcvit.hub import create

VIT = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "{depth: 2, embed_dim: 64, num_heads: 2}"]
FCVIT = ["--model", "fcvit_tiny", "--model-kwargs", "{depths: [1, 1, 1, 1], dims: [16, 32, 32, 64]}"]
SMALL = ["--img-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """val/{a,b}/ with three 48 px photographs."""
    root = tmp_path_factory.mktemp("images")
    for i, (name, img) in enumerate(demo_images()[:3]):
        folder = root / "val" / "ab"[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        img.resize((48, 48)).save(folder / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def vit_checkpoints(tmp_path_factory) -> list[str]:
    """Two differently initialised tiny ViTs."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create("vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=64, num_heads=2)
        paths.append(str(root / f"seed{seed}.pth"))
        torch.save(model.state_dict(), paths[-1])
    return paths


def read_outputs(folder: Path, json_name: str) -> dict:
    """The JSON record; every PNG in ``folder`` must decode."""
    pngs = sorted(folder.glob("*.png"))
    assert pngs, f"no PNG in {folder}"
    for png in pngs:
        with Image.open(png) as img:
            img.verify()
        with Image.open(png) as img:
            assert img.format == "PNG" and min(img.size) > 100
    return json.loads((folder / json_name).read_text())


def test_attention(tmp_path, image_dir, capsys):
    image = str(next(image_dir.glob("val/a/*.png")))
    out = tmp_path / "att"
    rc = main(
        [
            "analyze",
            "attention",
            *VIT,
            *SMALL,
            "--heads",
            "0,1",
            "--points",
            "0.5,0.5;0.1,0.9",
            image,
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    record = read_outputs(out, "attention.json")
    assert record["layer"] == "blocks.1.attn" and record["block"] == 1 and record["num_blocks"] == 2
    assert record["attention_shape"] == [2, 5, 5]
    assert record["num_prefix_tokens"] == 1 and "dropped" in record["prefix_tokens"]
    assert "random" in record["weights"]
    assert set(record["statistics"]) == {"query_irrelevance", "head_irrelevance", "entropy", "top1pct_mass"}
    (entry,) = record["images"]
    assert (out / entry["figure"]).is_file()
    assert entry["query_cells"] == [[1, 1], [0, 1]]
    assert "query_irrelevance" in capsys.readouterr().out


def test_attention_on_window_attention_with_demo_images(tmp_path):
    out = tmp_path / "win"
    rc = main(
        ["analyze", "attention", "--model", "test_attn_softmax", "--img-size", "64", "--block", "0", "--demo"]
        + ["--output", str(out)]
    )
    assert rc == 0
    record = read_outputs(out, "attention.json")
    assert record["key_window"] == 7 and record["query_grid"] == [16, 16]
    assert len(list(out.glob("attention_*.png"))) == len(record["images"]) == 4


def test_attention_on_swin_windows_writes_statistics_without_figures(tmp_path, image_dir):
    images = [str(p) for p in sorted(image_dir.glob("val/*/*.png"))[:2]]
    swin = ["--model", "swin_tiny_patch4_window7_224", "--model-kwargs", "{depths: [1, 1, 1, 1], embed_dim: 16}"]
    out = tmp_path / "swin"
    assert main(["analyze", "attention", *swin, "--block", "0", *images, "--output", str(out)]) == 0
    record = json.loads((out / "attention.json").read_text())
    assert "cannot be drawn" in record["figures_skipped"] and not list(out.glob("*.png"))
    assert record["attention_shape"] == [3, 49, 49]  # 3 heads; 8x8 windows of 7x7 tokens per image on the batch axis
    per_image = [e["statistics"]["entropy"] for e in record["images"]]
    assert record["statistics"]["entropy"] == pytest.approx(sum(per_image) / 2)


def test_similarity_with_vit_compare(tmp_path, image_dir):
    images = [str(p) for p in sorted(image_dir.glob("val/*/*.png"))[:2]]
    out = tmp_path / "sim"
    rc = main(
        ["analyze", "similarity", *FCVIT, "--img-size", "64", "--compare", "deit_tiny_patch16_224"]
        + ["--compare-kwargs", "{depth: 2, embed_dim: 64, num_heads: 2}", *images, "--output", str(out)]
    )
    assert rc == 0
    record = read_outputs(out, "similarity.json")
    assert record["groups"] == 8 and record["map_size"] == [2, 2] and record["block"] == 3
    assert record["statistics"]["query_irrelevance"] is None  # one map per group, the same for every query
    assert 0 < record["statistics"]["head_irrelevance"] <= 1
    assert "softmax" in record["normalisation"]
    assert record["compare"]["layer"] == "blocks.1.attn" and record["compare"]["num_prefix_tokens"] == 1
    assert len(record["images"]) == 2 and all("compare_statistics" in e for e in record["images"])


def test_stats_on_image_folder(tmp_path, image_dir):
    out = tmp_path / "stats"
    rc = main(
        ["analyze", "stats", *VIT, *SMALL, "--data", str(image_dir), "--batch-size", "2", "--workers", "0"]
        + ["--output", str(out)]
    )
    assert rc == 0
    record = read_outputs(out, "stats.json")
    assert record["num_images"] == 3
    assert [layer["name"] for layer in record["layers"]] == ["blocks.0.attn", "blocks.1.attn"]
    for layer in record["layers"]:
        assert 0 < layer["statistics"]["entropy"] <= 1


def test_stats_of_a_single_position_are_undefined(tmp_path, image_dir, capsys):
    """The frame's last stage at 32 px is a 1x1 map: its statistics are "-" in the table, null in the JSON and
    absent from the plot (not the 1.0 that head irrelevance and top-1% mass would give)."""
    out = tmp_path / "one"
    args = ["analyze", "stats", "--model", "test_attn_softmax", *SMALL, "--data", str(image_dir), "--workers", "0"]
    assert main([*args, "--output", str(out)]) == 0
    last_row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 3 |")]
    assert last_row == ["| 3 | stages.3.blocks.0.token_mixer | attention | - | - | - | - |"]
    record = read_outputs(out, "stats.json")
    assert record["layers"][3]["shape"][1:] == [1, 1]
    assert set(record["layers"][3]["statistics"].values()) == {None}
    assert all(v is not None for v in record["layers"][2]["statistics"].values())


def test_stats_on_fashion_mnist(tmp_path):
    pytest.importorskip("fcvit.data.fashion_mnist")
    from fcvit.data.fashion_mnist import fashion_mnist_paths

    try:
        fashion_mnist_paths("test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path / "fm"
    rc = main(
        ["analyze", "stats", *FCVIT, "--img-size", "64", "--data", "fashion-mnist", "--limit", "4"]
        + ["--workers", "0", "--output", str(out)]
    )
    assert rc == 0
    record = read_outputs(out, "stats.json")
    assert record["num_images"] == 4 and len(record["layers"]) == 4
    assert all(layer["kind"] == "similarity" for layer in record["layers"])
    assert "similarity_normalisation" in record


def test_compare_two_checkpoints(tmp_path, image_dir, vit_checkpoints):
    out = tmp_path / "cmp"
    rc = main(
        ["analyze", "compare", *vit_checkpoints, *VIT, *SMALL, "--data", str(image_dir), "--workers", "0"]
        + ["--output", str(out)]
    )
    assert rc == 0
    record = read_outputs(out, "compare.json")
    assert record["checkpoints"] == {"seed0": vit_checkpoints[0], "seed1": vit_checkpoints[1]}
    assert "seed0" in (out / "compare.md").read_text()
    first = record["layers"][0]["statistics"]
    assert first["seed0"] != first["seed1"]  # different weights, different maps

    same = tmp_path / "same"
    args = [vit_checkpoints[0], vit_checkpoints[0], *VIT, *SMALL, "--data", str(image_dir), "--workers", "0"]
    assert main(["analyze", "compare", *args, "--output", str(same)]) == 0
    for layer in read_outputs(same, "compare.json")["layers"]:
        a, b = layer["statistics"].values()
        assert a == pytest.approx(b)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attention", *VIT, *SMALL, "missing.png"], "missing.png"),
        (["attention", *VIT, *SMALL], "no images"),
        (["attention", *VIT, *SMALL, "--demo", "--block", "5"], "block 5 is out of range"),
        (["attention", *FCVIT, "--demo"], "analyze similarity"),
        (["similarity", *VIT, *SMALL, "--demo"], "no FCViT blocks"),
        (["stats", *VIT, *SMALL, "--data", "no/such/folder"], "no/such/folder"),
    ],
)
def test_bad_input_is_named(tmp_path, capsys, argv, message):
    assert main(["analyze", *argv, "--output", str(tmp_path / "x")]) == 1
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x" / "attention.json")


def test_unreadable_image_is_named(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert main(["analyze", "attention", *VIT, *SMALL, str(bad), "--output", str(tmp_path / "x")]) == 1
    assert "broken.png" in capsys.readouterr().err
