"""Atomic checkpoints, safe loading, config round-trip, weight-decay groups."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import yaml
from train_utils import REPO, TINY_KWARGS

from fcvit.engine.checkpoint import load_checkpoint, save_checkpoint
from fcvit.engine.config import save_config
from fcvit.engine.rng import get_rng_state, set_rng_state
from fcvit.errors import CheckpointError
from fcvit.train.config import TrainConfig, add_config_arguments, config_from_args, load_config


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-last.pth"
    save_checkpoint({"step": 1, "w": torch.arange(5.0)}, path)

    def torch_save_dies_mid_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", torch_save_dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "w": torch.zeros(5)}, path)
    monkeypatch.undo()
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.arange(5.0))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pth"]  # no temp file left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    bad = tmp_path / "truncated.pth"
    save_checkpoint({"w": torch.ones(1000)}, bad)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_checkpoint(bad)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"args": argparse.Namespace(lr=1)}, unsafe)
    with pytest.raises(CheckpointError, match="unsafe.pth"):
        load_checkpoint(unsafe)


def test_rng_state_round_trips_through_weights_only(tmp_path):
    import random

    import numpy as np

    np.random.normal()  # leave a cached Gaussian in NumPy's state
    save_checkpoint({"rng": get_rng_state()}, tmp_path / "rng.pth")
    expected = (random.random(), np.random.rand(), np.random.normal(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(3)
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    got = (random.random(), np.random.rand(), np.random.normal(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return p.parse_args(argv)


def test_config_layers_and_yaml_round_trip(tmp_path):
    assert config_from_args(_parse([])) == TrainConfig()
    (tmp_path / "a.yaml").write_text("epochs: 7\nlr: 1\nmixup: 0.8\nmodel-kwargs: {depths: [1, 1, 1, 1]}\n")
    cfg = config_from_args(
        _parse(["--config", str(tmp_path / "a.yaml"), "--epochs", "2", "--no-model-ema", "--aa", "none"])
    )
    assert (cfg.epochs, cfg.lr, cfg.mixup, cfg.model_ema) == (2, 1.0, 0.8, False)  # CLI > YAML > defaults
    assert cfg.model_kwargs == {"depths": [1, 1, 1, 1]} and isinstance(cfg.lr, float)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert config_from_args(_parse(["--config", str(tmp_path / "config.yaml")])) == cfg
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'epoch'"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="--model-ema .command line.: bad value .yes."):
        load_config(overrides={"model_ema": "yes"})


def test_paper_recipe_file():
    cfg = load_config(REPO / "configs" / "imagenet_paper.yaml")
    assert (cfg.opt, cfg.lr, cfg.lr_base, cfg.lr_base_size, cfg.weight_decay) == ("adamw", None, 1e-3, 1024, 0.05)
    assert (cfg.sched, cfg.epochs, cfg.smoothing, cfg.mixup, cfg.cutmix) == ("cosine", 310, 0.1, 0.8, 1.0)
    assert (cfg.aa, cfg.reprob, cfg.model_ema, cfg.drop_path) == ("rand-m9-mstd0.5", 0.25, True, 0.1)
    assert set(yaml.safe_load((REPO / "configs" / "imagenet_paper.yaml").read_text())) <= set(TrainConfig().to_dict())


def test_no_weight_decay_on_norms_biases_layer_scales_rescale():
    from timm.optim import create_optimizer_v2

    model = timm.create_model("fcvit_tiny", num_classes=10, **TINY_KWARGS)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(decay_of) == len(names)
    no_decay = {n for n, p in names.items() if decay_of[id(p)] == 0.0}
    for n in names:
        expected_free = n.endswith((".bias", "gamma", "rescale_weight", "rescale_bias")) or ".norm" in n or "norm." in n
        assert (n in no_decay) == expected_free, n
    assert any(n.endswith("ls1.gamma") for n in no_decay) and any(n.endswith("rescale_weight") for n in no_decay)
    assert names["head.weight"] is not None and "head.weight" not in no_decay


def test_timm_flag_names():
    flags = "--model --lr --epochs --batch-size --img-size --mixup --cutmix --smoothing --aa --reprob --warmup-epochs"
    flags += " --drop-path --model-ema --no-model-ema --clip-grad --workers --output --resume --data --config"
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    known = {s for a in p._actions for s in a.option_strings}
    assert set(flags.split()) <= known, set(flags.split()) - known
    off = ["--aa", "none", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--smoothing", "0"]
    cfg = config_from_args(_parse(off))
    assert (cfg.aa, cfg.mixup, cfg.cutmix, cfg.reprob, cfg.smoothing) == ("none", 0.0, 0.0, 0.0, 0.0)
