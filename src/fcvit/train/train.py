"""``fcvit train``: the training loop, top to bottom.

Set-up (process group, data, model, optimiser, schedule, EMA, resume), then one loop over epochs and
batches: forward, loss, NaN check, backward, clip, step, EMA, schedule, checkpoint every N steps; at
each epoch end validate (model and EMA), log, save ``checkpoint-last.pth`` and, on a new best,
``checkpoint-best.pth``. Everything is timm's: transforms, Mixup/CutMix, losses, optimiser factory
(no weight decay on 1-D parameters: norms, biases, layer scales, FCViT's rescale parameters),
scheduler factory, ModelEmaV3.

A run is never lost: checkpoints are atomic, and one saved at step N of an epoch resumes at batch N
of the same epoch permutation with every RNG restored, so a killed and resumed run ends with the
weights of an uninterrupted one (CPU, same thread count).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..models.complexity import count_params
from .build import create_loaders, is_fashion_mnist, open_dataset, resolve_data_config
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, save_config
from .distributed import (
    all_reduce_sum,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    init_distributed,
)
from .logger import Progress, RunLogger, format_duration
from .utils import NonFiniteLossError, evaluate, get_rng_state, read_weights, seed_everything, set_rng_state

__all__ = ["train"]

try:  # timm >= 1.0.? ; ModelEmaV2 on older releases (no decay warm-up)
    from timm.utils import ModelEmaV3 as _ModelEma
except ImportError:  # pragma: no cover
    from timm.utils import ModelEmaV2 as _ModelEma


def _create_ema(model: nn.Module, cfg: TrainConfig, device: torch.device) -> nn.Module:
    if _ModelEma.__name__ == "ModelEmaV3":
        return _ModelEma(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup, device=device)
    return _ModelEma(model, decay=cfg.model_ema_decay, device=device)


def _resolve(cfg: TrainConfig, data_config: dict, world_size: int) -> TrainConfig:
    """Fill the config's automatic values (what the run directory's config.yaml records)."""
    _, size, _ = data_config["input_size"]
    lr = cfg.lr if cfg.lr is not None else cfg.lr_base * cfg.batch_size * world_size / cfg.lr_base_size
    return dataclasses.replace(
        cfg,
        img_size=size,
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config["crop_pct"],
        interpolation=data_config["interpolation"],
        crop_mode=cfg.crop_mode or ("pad" if is_fashion_mnist(cfg.data) else "rrc"),
        lr=lr,
    )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the summary also written to ``summary.json``. Raises on failure."""
    t0 = time.perf_counter()
    dist = init_distributed(cfg.device, cfg.dist_timeout)
    device, main, world = dist.device, dist.is_main, dist.world_size
    say = print if main else (lambda *a, **k: None)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.deterministic

    # ---- resume: the checkpoint's config is the run's config; flags given now override it
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None

    # ---- data
    cfg = dataclasses.replace(cfg, in_chans=cfg.in_chans or (1 if is_fashion_mnist(cfg.data) else 3))
    train_set, class_names = open_dataset(cfg.data, cfg.train_split, cfg.in_chans, cfg.data_dir, cfg.train_limit)
    val_set, val_classes = open_dataset(cfg.data, cfg.val_split, cfg.in_chans, cfg.data_dir, cfg.val_limit)
    if val_classes != class_names:
        raise ValueError(f"--data {cfg.data}: {cfg.val_split}/ classes {val_classes} differ from {class_names}")

    # ---- model (same initial weights on every rank), EMA, optimiser, schedule, loss
    torch.manual_seed(cfg.seed)
    model = timm.create_model(
        cfg.model,
        pretrained=cfg.pretrained,
        num_classes=len(class_names),
        in_chans=cfg.in_chans,
        drop_rate=cfg.drop,
        drop_path_rate=cfg.drop_path,
        **cfg.model_kwargs,
    )
    if cfg.initial_checkpoint:
        model.load_state_dict(read_weights(cfg.initial_checkpoint)[0])
    data_config = resolve_data_config(cfg, model)
    cfg = _resolve(cfg, data_config, world)
    train_loader, val_loader = create_loaders(
        cfg, data_config, train_set, val_set, dist.rank, world, pin_memory=device.type == "cuda"
    )
    if cfg.sync_bn and world > 1:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    ema = _create_ema(model, cfg, device) if cfg.model_ema else None
    seed_everything(cfg.seed + dist.rank)

    opt_kwargs = {} if cfg.opt_eps is None else {"eps": cfg.opt_eps}
    if cfg.opt.lower() in ("adam", "adamw"):  # timm hands these to torch.optim, whose fused kernel (CPU and CUDA)
        opt_kwargs["fused"] = True  # updates every tensor in one call: ~5x faster than its per-tensor loop on CPU
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **opt_kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        step_on_epochs=False,
        updates_per_epoch=len(train_loader),
    )
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.amp_dtype]
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if use_amp else nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mixup_prob,
            switch_prob=cfg.mixup_switch_prob,
            mode=cfg.mixup_mode,
            label_smoothing=cfg.smoothing,
            num_classes=len(class_names),
        )
        loss_fn = SoftTargetCrossEntropy()  # mixup already smooths the targets
    elif cfg.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()

    # ---- state to resume from
    start_epoch, start_batch, step, elapsed_before = 0, 0, 0, 0.0
    best = {"top1": -1.0, "epoch": -1}
    epoch_sums = {"loss": 0.0, "n": 0.0, "skipped": 0.0}
    last_metrics: dict[str, float] = {}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("model_ema") is not None:
            ema.module.load_state_dict(ckpt["model_ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_batch, step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
        best, last_metrics, elapsed_before = ckpt["best"], ckpt["metrics"], ckpt["elapsed_s"]
        rng, sums = ckpt["rng"], ckpt["epoch_sums"]  # one entry per rank of the saving run
        same_layout = len(rng) == world
        set_rng_state(rng[dist.rank] if same_layout else rng[0])
        if same_layout:
            epoch_sums = sums[dist.rank]
        elif main:  # another number of processes: rank 0 carries the whole partial epoch
            epoch_sums = {k: sum(s[k] for s in sums) for k in epoch_sums}
    ddp_model = model
    if world > 1:
        # gradients as views of DDP's buckets: no copy, and no stride mismatch with channels-last weights
        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)

    # ---- run directory
    if cfg.resume:  # a resumed run continues where its checkpoint lies
        run_dir = Path(cfg.resume).parent
    else:
        name = cfg.experiment or f"{cfg.model}-{Path(cfg.data).name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg.output) / broadcast_object(name)
    last_path, best_path = run_dir / "checkpoint-last.pth", run_dir / "checkpoint-best.pth"
    logger = RunLogger(
        run_dir,
        enabled=main,
        resume_epoch=start_epoch + 1 if ckpt is not None else None,  # CSV epochs count from 1
        purge_step=step if ckpt is not None else None,
    )
    if main:
        save_config(cfg, run_dir / "config.yaml")
    say(
        f"fcvit train: {cfg.model} ({count_params(model) / 1e6:.2f}M params, in_chans {cfg.in_chans}, "
        f"{data_config['input_size'][-1]} px) on {cfg.data}: {len(train_set)} train / {len(val_set)} val images, "
        f"{len(class_names)} classes; {world} process(es) on {device}, global batch {cfg.batch_size * world}, "
        f"lr {cfg.lr:.3g}; run dir {run_dir}"
        + (f"; resumed at epoch {start_epoch + 1} batch {start_batch}" if ckpt else ""),
        flush=True,
    )

    def save(path: Path, epoch: int, batch: int) -> None:
        """Checkpoint for resuming at ``batch`` of ``epoch`` (collective: every rank adds its RNG and sums)."""
        rng, sums = gather_objects(get_rng_state()), gather_objects(dict(epoch_sums))
        broadcast_buffers(model)
        if ema is not None:
            broadcast_buffers(ema.module)
        if not main:
            return
        state = {
            "model": model.state_dict(),
            "model_ema": ema.module.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "batch": batch,
            "step": step,
            "best": best,
            "epoch_sums": sums,
            "metrics": last_metrics,
            "elapsed_s": elapsed_before + time.perf_counter() - t0,
            "rng": rng,
            "config": cfg.to_dict(),
            "model_name": cfg.model,
            "model_kwargs": cfg.model_kwargs,
            "num_classes": len(class_names),
            "class_names": class_names,
            "data_config": data_config,
        }
        save_checkpoint(state, path)

    # ---- the loop
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        model.train()
        progress = Progress(
            len(train_loader), f"epoch {epoch + 1}/{cfg.epochs}", main, cfg.log_interval, initial=start_batch
        )
        for batch, (images, targets, skipped) in enumerate(train_loader.batches(epoch, start_batch), start_batch):
            epoch_sums["skipped"] += skipped
            if len(targets) == 0:
                continue
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            if mixup is not None:
                if len(targets) % 2:  # mixup pairs images: drop one left odd by skipped images
                    images, targets = images[:-1], targets[:-1]
                images, targets = mixup(images, targets)
            with autocast():
                loss = loss_fn(ddp_model(images), targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss is {loss_value} at epoch {epoch + 1}, batch {batch + 1} (step {step + 1}): training "
                    f"stopped before this step changed the weights. The last good checkpoint, {last_path}, is "
                    "untouched; resume from it with a lower --lr, --clip-grad or --no-amp."
                )
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if ema is not None:
                ema.update(model, step=step)
            scheduler.step_update(num_updates=step)

            lr = optimizer.param_groups[0]["lr"]
            epoch_sums["loss"] += loss_value * len(targets)
            epoch_sums["n"] += len(targets)
            progress.update(len(targets) * world, loss=loss_value, lr=lr)
            if step % cfg.log_interval == 0:
                logger.log_scalars(step, {"train/loss": loss_value, "train/lr": lr})
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and batch + 1 < len(train_loader):
                save(last_path, epoch, batch + 1)
        progress.close()
        start_batch = 0

        # ---- end of epoch: validate, log, checkpoint
        broadcast_buffers(model)
        train_sums = all_reduce_sum(epoch_sums, device)
        metrics = evaluate(model, val_loader, device, autocast if use_amp else None, cfg.channels_last)
        row = {"train_loss": train_sums["loss"] / max(train_sums["n"], 1), "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"val_{k}": metrics[k] for k in ("loss", "top1", "top5")})
        score = metrics["top1"]
        if ema is not None:
            broadcast_buffers(ema.module)
            ema_metrics = evaluate(ema.module, val_loader, device, autocast if use_amp else None, cfg.channels_last)
            row.update({f"val_{k}_ema": ema_metrics[k] for k in ("loss", "top1", "top5")})
            score = ema_metrics["top1"]  # as timm: with EMA on, the EMA weights are the ones selected
        row.update(
            skipped_images=int(train_sums["skipped"] + metrics["skipped"]), epoch_time_s=time.perf_counter() - t_epoch
        )
        last_metrics = row
        is_best = score > best["top1"]
        if is_best:
            best = {"top1": score, "epoch": epoch + 1}
        logger.log_epoch(epoch + 1, row, step)
        say(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"top-1 {row['val_top1']:.2f}%, top-5 {row['val_top5']:.2f}%"
            + (f", EMA top-1 {row['val_top1_ema']:.2f}%" if ema is not None else "")
            + (f", {row['skipped_images']} unreadable images skipped" if row["skipped_images"] else "")
            + f" ({format_duration(row['epoch_time_s'])})",
            flush=True,
        )
        epoch_sums = {"loss": 0.0, "n": 0.0, "skipped": 0.0}
        save(last_path, epoch + 1, 0)
        if is_best:
            save(best_path, epoch + 1, 0)

    # ---- summary
    summary = {
        "model": cfg.model,
        "data": cfg.data,
        "top1": last_metrics.get("val_top1"),
        "top5": last_metrics.get("val_top5"),
        "loss": last_metrics.get("val_loss"),
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "epochs": cfg.epochs,
        "steps": step,
        "world_size": world,
        "params_m": round(count_params(model) / 1e6, 3),
        "wall_time_s": round(elapsed_before + time.perf_counter() - t0, 1),
        "run_dir": str(run_dir),
    }
    if ema is not None:
        summary.update(top1_ema=last_metrics.get("val_top1_ema"), top5_ema=last_metrics.get("val_top5_ema"))
    logger.finish(
        summary,
        panels={
            "loss": ["train_loss", "val_loss", "val_loss_ema"],
            "top-1 accuracy (%)": ["val_top1", "val_top1_ema"],
        },
    )
    say(
        f"done in {format_duration(summary['wall_time_s'])}: top-1 {summary['top1']:.2f}%"
        + (f" (EMA {summary['top1_ema']:.2f}%)" if ema is not None else "")
        + f", best {summary['best_top1']:.2f}% at epoch {summary['best_epoch']}; {run_dir}",
        flush=True,
    )
    cleanup_distributed()
    return summary
