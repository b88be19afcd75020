"""fcvit study: a two-arm, two-seed study runs, is killed, resumes to the same results and reports; runs planned
seed by seed; a run killed before its first checkpoint restarts; one `study run` of a study at a time; SIGTERM
stops the runs and a rerun completes them; failures keep their reason; study-file errors; DeiT distillation
(token, loss, averaged heads at eval). The report's statistics: test_study_stats.py."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from train_utils import REPO, TINY_KWARGS, make_fashion_root

import fcvit.study
import fcvit.train.train as train_module
from fcvit.cli import main
from fcvit.engine.checkpoint import load_checkpoint
from fcvit.hub import load
from fcvit.study import StudyError, load_study
from fcvit.study.report import copy_attention_grids, report_study
from fcvit.study.runner import ExecutorOptions, plan_runs, run_study, study_lock
from fcvit.train.distill import DistillationLoss

needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("submitit") is None, reason="fcvit study runs through submitit (pip install submitit)"
)
pytestmark = pytest.mark.usefixtures("torch_one_thread")

RESULT_KEYS = ("top1", "top5", "loss", "best_top1", "best_epoch", "steps", "epochs")


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    return make_fashion_root(tmp_path_factory.mktemp("fm"), n_train=128, n_test=64)


def _study_file(path, fm_root, arms=None, **extra):
    common = dict(model="fcvit_tiny", model_kwargs=TINY_KWARGS, data_dir=str(fm_root), epochs=2, batch_size=32)
    common.update(checkpoint_every=2, model_ema=False, lr=5e-3, log_interval=100)
    study = dict(
        seeds=2, reference="a", train=common, arms=arms or [dict(name="a"), dict(name="b", train=dict(lr=2e-3))]
    )
    path.write_text(yaml.safe_dump({**study, **extra}))
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
    assert rows["a"]["verdict"] == "reference" and rows["b"]["verdict"] in ("higher", "lower", "undecided")
    assert float(rows["b"]["ci_low"]) <= float(rows["b"]["top1_diff"]) <= float(rows["b"]["ci_high"])
    assert "Welch" in (tmp_path / "report" / "results.md").read_text()
    with open(tmp_path / "report" / "runs.csv", newline="") as f:
        assert [float(r["top1"]) for r in csv.DictReader(f) if r["arm"] == "a"] == tops
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


def test_runs_are_planned_seed_by_seed_with_each_arms_count(fm_root, tmp_path):
    arms = [dict(name="a", seeds=3), dict(name="b"), dict(name="c", seeds=1)]  # b: the study's 2
    study = load_study(_study_file(tmp_path / "plan.yaml", fm_root, arms=arms))
    assert [study.seeds_of(a) for a in study.arms] == [3, 2, 1]
    runs = plan_runs(study, tmp_path / "root")
    assert [r.label for r in runs] == ["a/seed0", "b/seed0", "c/seed0", "a/seed1", "b/seed1", "a/seed2"]
    assert all(r.train_argv[r.train_argv.index("--seed") + 1] == str(r.seed) for r in runs)
    # --seeds N: N seeds for every chosen arm, whatever the arm declares; --arms: in the order given
    runs = plan_runs(study, tmp_path / "root", arms=["c", "a"], seeds=2)
    assert [r.label for r in runs] == ["c/seed0", "a/seed0", "c/seed1", "a/seed1"]


def test_a_run_killed_before_its_first_checkpoint_trains_again_from_scratch(fm_root, tmp_path, monkeypatch, capsys):
    arms = [dict(name="a", train=dict(checkpoint_every=0))]  # its first checkpoint: after epoch 1 is logged
    study = load_study(_study_file(tmp_path / "tiny.yaml", fm_root, seeds=1, arms=arms))
    root = tmp_path / "root"
    (run,) = plan_runs(study, root)

    def die_before_saving(obj, path):
        raise Killed

    monkeypatch.setattr(train_module, "save_checkpoint", die_before_saving)
    with pytest.raises(Killed):
        main(list(run.train_argv))
    monkeypatch.undo()
    left = sorted(p.name for p in run.run_dir.iterdir())
    assert left == ["config.yaml", "metrics.csv", "tb"] and run.status() == "restart"
    (run.run_dir / "notes.txt").write_text("mine")  # not a run file: stays
    assert main(list(run.train_argv)) == 1  # what `fcvit train` alone does with it
    assert "already holds a run (config.yaml, metrics.csv)" in capsys.readouterr().err

    assert run_study(study, root, options=ExecutorOptions(kind="debug")) == []
    out = capsys.readouterr().out
    assert "tiny/a/seed0: killed before its first checkpoint: its run files go, it trains from scratch" in out
    assert "tiny/a/seed0: restarted from scratch (killed before its first checkpoint) and trained: top-1" in out
    assert run.status() == "done" and (run.run_dir / "notes.txt").read_text() == "mine"
    with open(run.run_dir / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]  # the killed attempt's row is gone


def test_a_second_study_run_of_the_same_study_is_refused(fm_root, tmp_path, capsys):
    path = _study_file(tmp_path / "tiny.yaml", fm_root)
    with study_lock(tmp_path / "root" / "tiny"):
        assert main(["study", "run", str(path), "--root", str(tmp_path / "root")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"study tiny is being run by process {os.getpid()}" in err
    assert not (tmp_path / "root" / "tiny" / "a").exists()  # refused before planning anything


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@needs_submitit
def test_sigterm_stops_the_runs_in_one_line_and_a_rerun_completes_them(fm_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    arms = [dict(name="bad", train=dict(data_dir=str(tmp_path / "missing"))), dict(name="a", train=dict(epochs=3))]
    path = _study_file(tmp_path / "sig.yaml", fm_root, seeds=1, arms=arms, reference="a")
    root, seen = tmp_path / "root", {}
    config = root / "sig" / "a" / "seed0" / "config.yaml"

    def stop_once_training() -> None:  # SIGTERM to this process, as `kill PID` gives it, once a/seed0 trains
        deadline = time.monotonic() + 600
        while not config.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["pids"] = _descendants(os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    late = signal.signal(signal.SIGTERM, lambda *args: seen.setdefault("late", True))  # if it came after the end
    try:
        threading.Thread(target=stop_once_training, daemon=True).start()
        code = main(["study", "run", str(path), "--root", str(root), "--threads", "1", "--parallel", "1"])
    finally:
        signal.signal(signal.SIGTERM, late)
    out, err = capsys.readouterr()
    assert code == 143 and "late" not in seen, out + err
    # the failed run's reason: the last line of its job's log, also in its failed.json for `study report`
    assert "sig/bad/seed0: FAILED: FileNotFoundError: " in out
    failed = json.loads((root / "sig" / "bad" / "seed0" / "failed.json").read_text())
    assert failed["reason"].startswith("FileNotFoundError: ") and failed["log"].endswith("_log.err")
    lines = [line for line in err.splitlines() if "stopped by" in line]
    assert lines == [
        f"fcvit study run: stopped by SIGTERM with 1 job(s) running, now stopped: rerun `fcvit study run {path}` "
        "to resume"
    ]
    assert "Traceback" not in err
    assert seen["pids"] and not [p for p in seen["pids"] if _running(p)]  # the job's controller and training

    study = load_study(path)
    (run,) = [r for r in plan_runs(study, root) if r.arm == "a"]
    assert run.status() in ("resume", "restart")
    assert run_study(study, root, arms=["a"], options=ExecutorOptions(kind="debug")) == []  # the lock was released
    assert run.status() == "done"
    table = report_study(root / "sig")["table"]
    assert f"- `bad/seed0`: failed: {failed['reason']}" in table


def test_the_study_package_never_imports_the_cli():
    package = Path(fcvit.study.__file__).parent
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = "fcvit.study".split(".")[: 2 - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                imported |= {module} | {f"{module}.{a.name}" for a in node.names}
    assert "fcvit.train.cli" in imported and "fcvit.analysis.cli" in imported  # the commands, called directly
    assert "fcvit.cli" not in imported


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
        (dict(arms=[dict(name="a", seeds=0)]), "'seeds' must be an integer from 1 to 1000, got 0"),
        (dict(arms=[dict(name="a")], seeds=100000000000), "'seeds' must be an integer from 1 to 1000"),
        (dict(arms=[dict(name="a")], comparisons=[dict(arm="z")]), "arm 'z' is not an arm"),
        (
            dict(arms=[dict(name="a"), dict(name="b")], comparisons=[dict(arm="b", against="a", claim="big")]),
            "'claim' must be a number",
        ),  # fmt: skip
        (dict(arms=[dict(name="a")], comparisons=[dict(arm="a")]), "compares arm 'a' with itself"),
        (
            dict(arms=[dict(name="a"), dict(name="b")], comparisons=[dict(arm="b"), dict(arm="b", against="a")]),
            "b against a is declared twice",
        ),  # fmt: skip
        (dict(arms=[dict(name="a"), dict(name="b")], comparisons=[dict(arm="b", clam=1)]), "unknown key(s) ['clam']"),
    ],
)
def test_study_file_errors_name_the_file(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(change))
    with pytest.raises(StudyError, match=r"bad\.yaml") as e:
        load_study(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_committed_studies_load_with_the_papers_claims():
    studies = {p.stem: load_study(p) for p in sorted((REPO / "configs" / "studies").glob("*.yaml"))}
    assert {"mixers", "fcvit-ablation", "softmax-replacements"} <= set(studies)
    claims = {name: {(c.arm, c.against): c.claim for c in s.comparisons} for name, s in studies.items()}
    steps = {("gc_static", "gc_none"): 0.2, ("gc_dynamic", "gc_static"): 0.5, ("full", "gc_dynamic"): 0.2}
    assert steps.items() <= claims["fcvit-ablation"].items()  # Table 3, step by step
    assert claims["softmax-replacements"][("attn_ln_relu", "attn_softmax")] == -0.32  # 80.64 - 80.96
    assert claims["mixers"][("pool", "fcvit")] == -3.7  # PoolFormer-S12 77.2 vs FCViT-B12 80.9


STUDENT = ["--model", "deit_test_attn_softmax", "--model-kwargs"]
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

    model = timm.create_model("deit_test_attn_softmax", distilled=True).eval()
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
