"""fcvit study: a two-arm, two-seed study runs, is killed, resumes to the same results and reports; the report's
statistics on constructed numbers; study-file errors; DeiT distillation (token, loss, averaged heads at eval)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from train_utils import TINY_KWARGS, make_fashion_root

import fcvit.train.train as train_module
from fcvit.cli import main
from fcvit.engine.checkpoint import load_checkpoint
from fcvit.hub import load
from fcvit.study import StudyError, load_study
from fcvit.study.report import compare, copy_attention_grids, mean_std, report_study
from fcvit.study.runner import ExecutorOptions, plan_runs, run_study
from fcvit.train.distill import DistillationLoss

needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason="fcvit study runs through submitit (pip install submitit)"
)
pytestmark = pytest.mark.usefixtures("torch_one_thread")

RESULT_KEYS = ("top1", "top5", "loss", "best_top1", "best_epoch", "steps", "epochs")


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    return make_fashion_root(tmp_path_factory.mktemp("fm"), n_train=128, n_test=64)


def _study_file(path, fm_root, **extra):
    common = dict(model="fcvit_tiny", model_kwargs=TINY_KWARGS, data_dir=str(fm_root), epochs=2, batch_size=32)
    common.update(checkpoint_every=2, model_ema=False, lr=5e-3, log_interval=100)
    study = dict(
        seeds=2,
        reference="a",
        train=common,
        arms=[dict(name="a"), dict(name="b", train=dict(lr=2e-3))],
        **extra,
    )
    path.write_text(yaml.safe_dump(study))
    return path


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@needs_submitit
def test_study_killed_resumes_to_the_uninterrupted_results_and_reports(fm_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the local executor's subprocesses: one thread, as this process
    study_path = _study_file(tmp_path / "tiny.yaml", fm_root)
    study = load_study(study_path)
    assert study.name == "tiny" and [a.name for a in study.arms] == ["a", "b"]

    # uninterrupted, in this process (submitit's DebugExecutor)
    assert run_study(study, tmp_path / "straight", options=ExecutorOptions(kind="debug")) == []

    # interrupted: arm a alone (local executor: a subprocess per run), then b/seed1 killed at step 6 of 8
    root = tmp_path / "killed"
    assert main(["study", "run", str(study_path), "--root", str(root), "--arms", "a", "--threads", "1"]) == 0
    assert "a/seed1: trained: top-1" in capsys.readouterr().out
    b1 = next(r for r in plan_runs(study, root) if r.label == "b/seed1")
    save = train_module.save_checkpoint

    def save_then_die(obj, path):
        save(obj, path)
        if obj["step"] == 6:
            raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        main(list(b1.train_argv))
    monkeypatch.undo()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert b1.status() == "resume" and not (b1.run_dir / "summary.json").exists()

    assert main(["study", "run", str(study_path), "--root", str(root), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny/a/seed0: finished, skipped" in out and "tiny/a/seed1: finished, skipped" in out
    assert "tiny/b/seed1: resumed and trained: top-1" in out and "tiny/b/seed0: trained: top-1" in out
    assert "4 runs, 2 finished, 2 to run" in out
    for r in plan_runs(study, root):
        a = json.loads((tmp_path / "straight" / "tiny" / r.arm / f"seed{r.seed}" / "summary.json").read_text())
        b = json.loads((r.run_dir / "summary.json").read_text())
        assert {k: a[k] for k in RESULT_KEYS} == {k: b[k] for k in RESULT_KEYS}, r.label
        assert b["train_img_per_s"] > 0
        wa = load_checkpoint(tmp_path / "straight" / "tiny" / r.arm / f"seed{r.seed}" / "checkpoint-last.pth")["model"]
        wb = load_checkpoint(r.run_dir / "checkpoint-last.pth")["model"]
        assert max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa) < 1e-6, r.label
    seeds = [json.loads((root / "tiny" / "a" / f"seed{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert seeds[0]["top1"] != seeds[1]["top1"] or seeds[0]["loss"] != seeds[1]["loss"]  # the seeds differ

    # a finished study costs nothing to rerun
    assert main(["study", "run", str(study_path), "--root", str(root)]) == 0
    assert "4 runs, 4 finished, 0 to run" in capsys.readouterr().out

    assert main(["study", "report", str(root / "tiny"), "--output", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "results.csv", newline="") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    tops = [s["top1"] for s in seeds]
    assert int(rows["a"]["n"]) == 2 and float(rows["a"]["top1_mean"]) == pytest.approx(sum(tops) / 2)
    assert rows["a"]["verdict"] == "reference" and rows["b"]["verdict"] in ("higher", "lower", "inside the noise")
    assert "Welch" in (tmp_path / "report" / "results.md").read_text()
    for name in ("accuracy.png", "curves.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5000

    # an analysis study on the runs of another study's arm (no training): statistics against depth
    analysis = tmp_path / "depth.yaml"
    arms = [dict(name="a", source=dict(study="tiny", arm="a"))]
    analysis.write_text(yaml.safe_dump(dict(seeds=2, arms=arms, analysis=dict(stats=dict(limit=32, batch_size=16)))))
    assert run_study(load_study(analysis), tmp_path / "straight", options=ExecutorOptions(kind="debug")) == []
    assert (tmp_path / "straight" / "depth" / "a" / "seed1" / "analysis" / "stats" / "stats.json").is_file()
    result = report_study(tmp_path / "straight" / "depth")
    assert "depth.png" in result["files"] and len(result["depth"]) == 4  # one similarity site per FCViT block


def test_report_copies_each_arms_first_attention_grid(tmp_path):
    grids = [("a", 1, "00_val000"), ("a", 0, "00_val000"), ("a", 0, "01_val001"), ("b", 2, "00_val000")]
    for arm, seed, image in grids:
        grid = tmp_path / "study" / arm / f"seed{seed}" / "analysis" / "attention" / f"attention_{image}.png"
        grid.parent.mkdir(parents=True, exist_ok=True)
        grid.write_text(f"{arm} {seed} {image[3:]}")
    (tmp_path / "out").mkdir()
    assert copy_attention_grids(tmp_path / "study", tmp_path / "out") == ["attention_a.png", "attention_b.png"]
    assert (tmp_path / "out" / "attention_a.png").read_text() == "a 0 val000"  # first seed, first image
    assert (tmp_path / "out" / "attention_b.png").read_text() == "b 2 val000"


def test_welch_test_and_spread_on_constructed_numbers():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    m, s, n = mean_std([5.0])
    assert (m, n) == (5.0, 1) and math.isnan(s)
    a, b = [80.0, 81.0, 82.0], [70.0, 72.0, 71.5]
    t = (81.0 - 71.1666667) / math.sqrt(1.0 / 3 + mean_std(b)[1] ** 2 / 3)
    res = compare(a, b)
    assert res["t"] == pytest.approx(t, rel=1e-5) and res["p"] < 1e-3 and res["verdict"] == "higher"
    assert compare(b, a)["verdict"] == "lower"
    noisy = compare([80.0, 83.0, 81.0], [81.0, 79.0, 82.5])
    assert noisy["p"] > 0.5 and noisy["verdict"] == "inside the noise"
    assert compare([80.0, 80.0], [79.0, 79.0])["verdict"] == "higher"  # no spread at all: any gap exceeds it
    assert compare([80.0], [79.0, 78.0])["verdict"].startswith("n/a")


def test_report_on_constructed_runs(tmp_path):
    study_dir = tmp_path / "s"
    tops = {"ref": [70.0, 71.0, 72.0], "better": [80.0, 81.0, 82.0], "same": [70.5, 71.5, 70.0]}
    arms = [dict(name=k, train={}, teacher=None, source=None) for k in tops]
    study_dir.mkdir()
    (study_dir / "study.json").write_text(json.dumps(dict(name="s", reference="ref", arms=arms)))
    for arm, values in tops.items():
        for k, top1 in enumerate(values):
            d = study_dir / arm / f"seed{k}"
            d.mkdir(parents=True)
            summary = dict(model="m", params_m=1.0, top1=top1, best_top1=top1, best_epoch=k + 1, wall_time_s=10.0 * k)
            summary["train_img_per_s"] = 100.0
            (d / "summary.json").write_text(json.dumps(summary))
            (d / "metrics.csv").write_text(f"epoch,val_top1\n1,{top1 - 10}\n2,{top1}\n")
    result = report_study(study_dir)
    rows = {r["arm"]: r for r in result["rows"]}
    assert rows["better"]["top1_mean"] == pytest.approx(81.0) and rows["better"]["top1_std"] == pytest.approx(1.0)
    assert rows["better"]["best_epoch_mean"] == 2.0 and rows["better"]["wall_time_s_mean"] == 10.0
    assert rows["better"]["top1_diff"] == pytest.approx(10.0) and rows["better"]["verdict"] == "higher"
    assert rows["same"]["verdict"] == "inside the noise" and rows["ref"]["verdict"] == "reference"
    assert "| `better` | 3 | 1.000 | 81.00 ± 1.00 |" in result["table"]
    assert (study_dir / "report" / "results.csv").is_file() and (study_dir / "report" / "curves.png").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(arms=[dict(name="a", train=dict(epoch=3))]), "unknown config key 'epoch'"),
        (dict(arms=[dict(name="a/b")]), "folder-safe name"),
        (dict(arms=[dict(name="a", train=dict(distill="hard"))]), "needs a 'teacher"),
        (dict(arms=[dict(name="a", train=dict(seed=3))]), "set by `fcvit study run`"),
        (dict(arms=[dict(name="a")], reference="z"), "reference 'z' is not an arm"),
        (dict(arms=[dict(name="a", source=dict(study="s", arm="x"))]), "needs an 'analysis'"),
        (dict(arms=[dict(name="a")], analysis=dict(maps={})), "unknown key(s) ['maps']"),
        (dict(arms=[dict(name="a")], sedes=2), "unknown key(s) ['sedes']"),
    ],
)
def test_study_file_errors_name_the_file(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(change))
    with pytest.raises(StudyError, match=r"bad\.yaml") as e:
        load_study(path)
    assert message in str(e.value) and "\n" not in str(e.value)


STUDENT = ["--model", "test_deit_attn_softmax", "--model-kwargs"]
STUDENT_KWARGS = dict(img_size=28, patch_size=7, embed_dim=16, depth=1, num_heads=2, pos_embed="rel")


def test_distillation_token_loss_and_averaged_heads(fm_root, tmp_path):
    common = ["--data-dir", str(fm_root), "--output", str(tmp_path), "--epochs", "1", "--batch-size", "32"]
    common += ["--no-model-ema", "--train-limit", "64", "--val-limit", "32"]
    teacher_args = ["--model", "fcvit_tiny", "--model-kwargs", json.dumps(TINY_KWARGS)]
    assert main(["train", *teacher_args, *common, "--experiment", "teacher"]) == 0
    teacher = str(tmp_path / "teacher" / "checkpoint-last.pth")
    args = ["train", *STUDENT, json.dumps(STUDENT_KWARGS), *common, "--teacher", teacher]
    assert main([*args, "--distill", "hard", "--experiment", "student"]) == 0
    last = str(tmp_path / "student" / "checkpoint-last.pth")
    ckpt = load_checkpoint(last)
    assert ckpt["model_kwargs"]["distilled"] is True and "head_dist.weight" in ckpt["model"]
    assert "dist_token" in ckpt["model"] and "pos_embed" not in ckpt["model"]  # relative position: no embedding
    # resumed with the flags it started with, as `fcvit study run` resumes a killed run (no `distilled` in them)
    assert main([*args, "--distill", "hard", "--experiment", "student", "--epochs", "2", "--resume", last]) == 0
    assert load_checkpoint(last)["epoch"] == 2

    student = load(last).model
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        tokens = student.forward_features(x)
        heads = (student.head(tokens[:, 0]), student.head_dist(tokens[:, 1]))
        assert torch.allclose(student(x), (heads[0] + heads[1]) / 2, atol=1e-6)  # eval: DeiT's average
        student.train()
        student.distilled_training = True
        assert isinstance(student(x), tuple)  # training with distillation: one prediction per token

    # the loss, on constructed logits: DeiT's hard and soft targets, weighted by alpha
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]])

    cls, dist = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.1, 0.3]]), torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 2.0]])
    labels, inputs = torch.tensor([0, 2]), torch.zeros(2, 1)
    base = torch.nn.CrossEntropyLoss()
    hard = DistillationLoss(base, Fixed(), "hard", alpha=0.25)((cls, dist), labels, inputs)
    expected = 0.75 * F.cross_entropy(cls, labels) + 0.25 * F.cross_entropy(dist, torch.tensor([0, 1]))
    assert hard.item() == pytest.approx(expected.item())
    soft = DistillationLoss(base, Fixed(), "soft", alpha=1.0, tau=2.0)((cls, dist), labels, inputs)
    p = F.softmax(Fixed()(None) / 2, dim=1)
    kl = (p * (p.log() - F.log_softmax(dist / 2, dim=1))).sum() * 4 / dist.numel()
    assert soft.item() == pytest.approx(kl.item())
    with pytest.raises(ValueError, match="single prediction"):
        DistillationLoss(base, Fixed(), "hard")(cls, labels, inputs)

    # a teacher trained at another size sees the student's images resized to its own
    loss = DistillationLoss(base, Fixed(), "hard", teacher_size=(32, 32))
    seen = []
    loss.teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    loss((cls, dist), labels, torch.zeros(2, 1, 28, 28))
    assert seen == [torch.Size([2, 1, 32, 32])]

    # a teacher that reads other images (RGB), a model without a distillation token: one-line errors
    assert main(["train", *teacher_args, *common, "--in-chans", "3", "--experiment", "rgb"]) == 0
    bad = ["train", *STUDENT, json.dumps(STUDENT_KWARGS), *common, "--distill", "soft", "--experiment", "bad"]
    with pytest.raises(ValueError, match="input_size"):
        train_module.train(_cfg([*bad, "--teacher", str(tmp_path / "rgb" / "checkpoint-last.pth")]))
    with pytest.raises(ValueError, match="no distillation token"):
        train_module.train(_cfg(["train", *teacher_args, *common, "--distill", "hard", "--teacher", teacher]))


def _cfg(argv):
    from fcvit.cli import build_parser
    from fcvit.train.config import config_from_args

    return config_from_args(build_parser().parse_args(argv))


def test_distilled_deit_keeps_the_model_contract_and_pool_mixer():
    from timm.layers import create_feature_extractor

    from fcvit.layers import create_token_mixer

    model = timm.create_model("test_deit_attn_softmax", distilled=True).eval()
    assert model.num_prefix_tokens == 2 and model.pos_embed.shape[1] == 16 + 2  # class, distillation, patches
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        assert torch.allclose(torch.jit.script(model)(x), y, atol=1e-5)
        assert create_feature_extractor(model, return_nodes=["blocks.1"])(x)["blocks.1"].shape == (2, 18, 32)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.head_dist.out_features == 5
    with pytest.raises(ValueError, match="DeiT host"):
        timm.create_model("test_swin_attn_softmax", distilled=True)
    pool = create_token_mixer("pool", 8)
    m = torch.randn(1, 8, 5, 5)
    assert torch.allclose(pool(m), F.avg_pool2d(m, 3, 1, 1, count_include_pad=False) - m)
