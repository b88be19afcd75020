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
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..accel import optimize
from ..data.fingerprint import check_same_data, data_fingerprint
from ..data.sets import is_fashion_mnist, open_dataset
from ..engine.checkpoint import load_checkpoint, read_weights, run_checkpoint, save_checkpoint
from ..engine.config import save_config
from ..engine.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_buffers,
    cleanup_distributed,
    gather_objects,
    init_distributed,
    peer_failures,
)
from ..engine.logger import Progress, RunLogger, format_duration
from ..engine.rng import get_rng_state, preserved_rng, seed_everything, set_rng_state
from ..engine.rundir import clean_orphans, new_run_dir
from ..errors import NonFiniteLossError, command_backend
from ..hub import check_finite, create, create_pretrained
from ..models.complexity import count_params
from ..runtime import adapt_threads
from .build import check_memory, create_loaders, resolve_data_config
from .config import TrainConfig
from .distill import DistillationLoss, load_teacher
from .evaluate import evaluate
from .resume import check_resume_config, restore_optimizer

__all__ = ["train"]

LAST, BEST = "checkpoint-last.pth", "checkpoint-best.pth"
EPOCH_SUMS = ("loss", "n", "skipped", "train_s")

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


@dataclass
class Run:
    """What a training run is made of, built once by :func:`set_up`."""

    cfg: TrainConfig
    dist: DistInfo
    model: nn.Module
    ddp_model: nn.Module  # what the loop calls: the model, wrapped by DDP and/or torch.compile
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    mixup: Mixup | None
    autocast: Callable[[], Any]
    eval_autocast: Callable[[], Any] | None
    memory_format: torch.memory_format
    train_loader: Any
    val_loader: Any
    class_names: list[str]
    data_config: dict[str, Any]
    data_fingerprint: dict[str, Any]  # {'train': ..., 'val': ...}: checked on resume (fcvit.data.fingerprint)
    run_dir: Path
    logger: RunLogger


@dataclass
class State:
    """Where the run stands: what a checkpoint saves and a resumed run starts from."""

    epoch: int = 0
    batch: int = 0  # first batch of ``epoch`` still to train
    step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})
    # per rank: summed loss, images, skipped images and seconds in the training loop of the current epoch
    epoch_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(EPOCH_SUMS, 0.0))
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's row
    elapsed_before: float = 0.0  # seconds trained before this process (resumed runs)
    saved_step: int | None = None  # step of the checkpoint-last.pth on disk, None before the first
    validation_s: float = 0.0  # the last end-of-epoch validation's seconds (for the run's ETA; 0 until one ran)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the summary also written to ``summary.json``. Raises on failure."""
    t0 = time.perf_counter()
    with peer_failures(cfg.dist_timeout):
        run, state = set_up(cfg, init_distributed(cfg.device, cfg.dist_timeout))
        for epoch in range(state.epoch, run.cfg.epochs):
            t_epoch = time.perf_counter()
            train_one_epoch(run, state, epoch, t0)
            end_epoch(run, state, epoch, t0, t_epoch)
        summary = finish(run, state, t0)
    # On the success path only: after an error a rank exits non-zero at once, since the others may never reach
    # cleanup_distributed's barrier (they fail in their next collective instead).
    cleanup_distributed()
    return summary


def set_up(cfg: TrainConfig, dist: DistInfo) -> tuple[Run, State]:
    """Data, model (same initial weights on every rank), EMA, optimiser, schedule, loss, run directory; the state
    of the checkpoint resumed from, if any (its config is the run's config; flags given now override it)."""
    device, world = dist.device, dist.world_size
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.deterministic
    if cfg.distill != "none":  # the student gets DeiT's distillation token (recorded with the model's kwargs)
        cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "distilled": True})
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    changes = check_resume_config(ckpt, cfg) if ckpt is not None else []
    run_dir = Path(cfg.resume).parent if ckpt is not None else new_run_dir(cfg.output, cfg.experiment, _stem(cfg))
    clean_orphans(run_dir)

    cfg = dataclasses.replace(cfg, in_chans=cfg.in_chans or (1 if is_fashion_mnist(cfg.data) else 3))
    train_set, class_names = open_dataset(cfg.data, cfg.train_split, cfg.in_chans, cfg.data_dir, cfg.train_limit)
    val_set, val_classes = open_dataset(cfg.data, cfg.val_split, cfg.in_chans, cfg.data_dir, cfg.val_limit)
    if val_classes != class_names:
        raise ValueError(f"--data {cfg.data}: {cfg.val_split}/ classes {val_classes} differ from {class_names}")
    fingerprint = {
        "train": data_fingerprint(train_set, class_names, cfg.train_split),
        "val": data_fingerprint(val_set, class_names, cfg.val_split),
    }
    if ckpt is not None:
        check_same_data(ckpt.get("data_fingerprint"), fingerprint, cfg.resume)
    check_memory(cfg, device)
    model, origin = _create_model(cfg, len(class_names))
    check_memory(cfg, device, model)
    data_config = resolve_data_config(cfg, model)
    cfg = _resolve(cfg, data_config, world)
    loaders = create_loaders(cfg, data_config, train_set, val_set, dist.rank, world, pin_memory=device.type == "cuda")
    if cfg.sync_bn and world > 1:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (torch's SyncBatchNorm does not run on CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    ema = _create_ema(model, cfg, device) if cfg.model_ema else None
    seed_everything(cfg.seed + dist.rank)
    optimizer, scheduler = _create_optimizer(cfg, model, len(loaders[0]))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.amp_dtype]
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if use_amp else nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)

    state = State() if ckpt is None else _resume(ckpt, cfg.resume, dist, model, ema, optimizer, scaler)
    scheduler.step_update(num_updates=state.step)  # the schedule of this config, at the step resumed from
    ddp_model = model
    if world > 1:
        # gradients as views of DDP's buckets: no copy, and no stride mismatch with channels-last weights
        ddp_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    logger = RunLogger(
        run_dir,
        enabled=dist.is_main,
        resume_epoch=state.epoch + 1 if ckpt is not None else None,  # CSV epochs count from 1
        purge_step=state.step if ckpt is not None else None,
    )
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    mixup, loss_fn = _mixup_and_loss(cfg, len(class_names))
    if cfg.distill != "none":
        teacher, size = load_teacher(cfg, data_config, len(class_names), device)
        loss_fn = DistillationLoss(loss_fn, teacher, cfg.distill, cfg.distill_alpha, cfg.distill_tau, size)
        model.distilled_training = True  # the class and distillation predictions apart in training
    run = Run(
        cfg=cfg,
        dist=dist,
        model=model,
        ddp_model=ddp_model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loss_fn=loss_fn,
        mixup=mixup,
        autocast=autocast,
        eval_autocast=autocast if use_amp else None,
        memory_format=memory_format,
        train_loader=loaders[0],
        val_loader=loaders[1],
        class_names=class_names,
        data_config=data_config,
        data_fingerprint=fingerprint,
        run_dir=run_dir,
        logger=logger,
    )
    _say(
        run,
        f"fcvit train: {cfg.model} ({count_params(model) / 1e6:.2f}M params, in_chans {cfg.in_chans}, "
        f"{data_config['input_size'][-1]} px) on {cfg.data}: {len(train_set)} train / {len(val_set)} val images, "
        f"{len(class_names)} classes; {world} process(es) on {device}, global batch {cfg.batch_size * world}, "
        f"lr {cfg.lr:.3g}; run dir {run_dir}"
        + (f"; resumed at epoch {state.epoch + 1} batch {state.batch}" if ckpt else f"; weights: {origin}")
        + (f"; changed on resume: {', '.join(changes)}" if changes else ""),
    )
    return run, state


def _create_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, str]:
    """The model, seeded so that every rank starts from the same weights, optimised unless ``--no-optimize``, and
    a line saying where its weights come from. ``--pretrained-path`` adapts the file to the model (classifier,
    stem, position tables: :func:`fcvit.hub.create_pretrained`); ``--initial-checkpoint`` loads it as it is."""
    torch.manual_seed(cfg.seed)
    kwargs = dict(num_classes=num_classes, in_chans=cfg.in_chans, drop_rate=cfg.drop, drop_path_rate=cfg.drop_path)
    kwargs = {"img_size": cfg.img_size, **kwargs, **cfg.model_kwargs}  # an img_size in --model-kwargs wins
    origin = "random initialisation"
    try:
        if cfg.pretrained_path:
            model, origin = create_pretrained(cfg.model, cfg.pretrained_path, **kwargs)
        else:
            model = create(cfg.model, pretrained=cfg.pretrained, **kwargs)
            origin = "timm's pretrained weights" if cfg.pretrained else origin
    except ValueError as e:
        if cfg.distill == "none" or "distilled" not in str(e):
            raise
        raise ValueError(f"--distill: {cfg.model} has no distillation token (the DeiT hosts have one)") from None
    if cfg.initial_checkpoint:
        weights = read_weights(cfg.initial_checkpoint)[0]
        check_finite(weights, cfg.initial_checkpoint)
        model.load_state_dict(weights)
        origin = f"loaded {len(weights)} tensors from {cfg.initial_checkpoint} as they are"
    return optimize(model, command_backend(cfg.optimize)), origin


def _create_optimizer(cfg: TrainConfig, model: nn.Module, updates_per_epoch: int) -> tuple[torch.optim.Optimizer, Any]:
    """timm's optimiser (no weight decay on 1-D parameters) and its per-step scheduler."""
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
        updates_per_epoch=updates_per_epoch,
    )
    return optimizer, scheduler


def _stem(cfg: TrainConfig) -> str:
    """The start of a default run directory name: ``MODEL-DATA``."""
    return f"{cfg.model}-{Path(cfg.data).name}"


def _mixup_and_loss(cfg: TrainConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """timm's Mixup/CutMix (if asked) and the loss that goes with it."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            prob=cfg.mixup_prob,
            switch_prob=cfg.mixup_switch_prob,
            mode=cfg.mixup_mode,
            label_smoothing=cfg.smoothing,
            num_classes=num_classes,
        )
        return mixup, SoftTargetCrossEntropy()  # mixup already smooths the targets
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def _resume(ckpt: dict, path: str, dist: DistInfo, model, ema, optimizer, scaler) -> State:
    """Load every piece of the run from ``ckpt``; each rank takes back its own RNG state and partial-epoch sums.

    The optimizer keeps its per-parameter state and takes its hyperparameters (lr, weight decay ...) from the
    config; the schedule is rebuilt from the config at the resumed step, so flags given with ``--resume`` hold.
    """
    check_finite(ckpt["model"], path)
    model.load_state_dict(ckpt["model"])
    if ema is not None and ckpt.get("model_ema") is not None:
        ema.module.load_state_dict(ckpt["model_ema"])
    restore_optimizer(optimizer, ckpt["optimizer"], path, {p: n for n, p in model.named_parameters()})
    scaler.load_state_dict(ckpt["scaler"])
    state = State(ckpt["epoch"], ckpt["batch"], ckpt["step"], ckpt["best"], metrics=ckpt["metrics"])
    state.saved_step = ckpt["step"] if Path(path).name == LAST else None
    state.elapsed_before = ckpt["elapsed_s"]
    rng, sums = ckpt["rng"], ckpt["epoch_sums"]  # one entry per rank of the saving run
    same_layout = len(rng) == dist.world_size
    set_rng_state(rng[dist.rank] if same_layout else rng[0])
    if same_layout:
        state.epoch_sums = {**state.epoch_sums, **sums[dist.rank]}
    elif dist.is_main:  # another number of processes: rank 0 carries the whole partial epoch
        state.epoch_sums = {k: sum(s.get(k, 0.0) for s in sums) for k in state.epoch_sums}
    return state


def _say(run: Run, text: str) -> None:
    if run.dist.is_main:
        print(text, flush=True)


def train_one_epoch(run: Run, state: State, epoch: int, t0: float) -> None:
    """Forward, loss, NaN check, backward, clip, step, EMA, schedule per batch; a checkpoint every N steps."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    device, world = run.dist.device, run.dist.world_size
    model.train()
    progress = Progress(
        len(run.train_loader),
        f"epoch {epoch + 1}/{cfg.epochs}",
        run.dist.is_main,
        cfg.log_interval,
        initial=state.batch,
        steps_after=(cfg.epochs - epoch - 1) * len(run.train_loader),
        seconds_after=(cfg.epochs - epoch) * state.validation_s,
    )
    t_step = time.perf_counter()
    for batch, (images, targets, skipped) in enumerate(run.train_loader.batches(epoch, state.batch), state.batch):
        state.epoch_sums["skipped"] += skipped
        if len(targets) == 0:
            continue
        images = images.to(device, non_blocking=True).contiguous(memory_format=run.memory_format)
        targets = targets.to(device, non_blocking=True)
        if run.mixup is not None:
            if len(targets) % 2:  # mixup pairs images: drop one left odd by skipped images
                images, targets = images[:-1], targets[:-1]
            images, targets = run.mixup(images, targets)
        with run.autocast():
            outputs = run.ddp_model(images)
            if isinstance(run.loss_fn, DistillationLoss):
                loss = run.loss_fn(outputs, targets, images)
            else:
                loss = run.loss_fn(outputs, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"loss is {loss_value} at epoch {epoch + 1}, batch {batch + 1} (step {state.step + 1}): training "
                f"stopped before this step changed the weights. {_last_good(run, state)}"
            )
        run.scaler.scale(loss).backward()
        if cfg.clip_grad:
            run.scaler.unscale_(optimizer)
            dispatch_clip_grad(model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if run.ema is not None:
            run.ema.update(model, step=state.step)
        run.scheduler.step_update(num_updates=state.step)

        lr = optimizer.param_groups[0]["lr"]
        state.epoch_sums["loss"] += loss_value * len(targets)
        state.epoch_sums["n"] += len(targets)
        state.epoch_sums["train_s"] += time.perf_counter() - t_step
        t_step = time.perf_counter()
        progress.update(len(targets) * world, loss=loss_value, lr=lr)
        adapt_threads()  # re-fit torch's thread team to the cores other processes leave free (fcvit.runtime)
        if state.step % cfg.log_interval == 0:
            run.logger.log_scalars(state.step, {"train/loss": loss_value, "train/lr": lr})
        if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and batch + 1 < len(run.train_loader):
            state.epoch, state.batch = epoch, batch + 1
            save(run, state, run.run_dir / LAST, t0)
    progress.close()
    state.batch = 0


def end_epoch(run: Run, state: State, epoch: int, t0: float, t_epoch: float) -> None:
    """Validate (model and EMA), log, save ``checkpoint-last.pth`` and, on a new best, ``checkpoint-best.pth``."""
    broadcast_buffers(run.model)
    train_sums = all_reduce_sum(state.epoch_sums, run.dist.device)

    def evaluate_on(model: nn.Module, desc: str = "validate") -> dict[str, float]:
        with preserved_rng():  # validation draws nothing from the training's random streams (same weights without it)
            return evaluate(model, run.val_loader, run.dist.device, run.eval_autocast, run.cfg.channels_last, desc)

    t_val = time.perf_counter()
    metrics = evaluate_on(run.model)
    row = {"train_loss": train_sums["loss"] / max(train_sums["n"], 1), "lr": run.optimizer.param_groups[0]["lr"]}
    # images per second of the training loop (data, forward, backward, step), all ranks together
    row["train_img_per_s"] = train_sums["n"] / max(train_sums["train_s"] / run.dist.world_size, 1e-9)
    row.update({f"val_{k}": metrics[k] for k in ("loss", "top1", "top5")})
    score = metrics["top1"]
    if run.ema is not None:
        broadcast_buffers(run.ema.module)
        ema_metrics = evaluate_on(run.ema.module, desc="validate EMA")
        row.update({f"val_{k}_ema": ema_metrics[k] for k in ("loss", "top1", "top5")})
        score = ema_metrics["top1"]  # as timm: with EMA on, the EMA weights are the ones selected
    state.validation_s = time.perf_counter() - t_val
    row.update(
        skipped_images=int(train_sums["skipped"] + metrics["skipped"]), epoch_time_s=time.perf_counter() - t_epoch
    )
    state.metrics = row
    is_best = score > state.best["top1"]
    if is_best:
        state.best = {"top1": score, "epoch": epoch + 1}
    run.logger.log_epoch(epoch + 1, row, state.step)
    _say(
        run,
        f"epoch {epoch + 1}/{run.cfg.epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
        f"top-1 {row['val_top1']:.2f}%, top-5 {row['val_top5']:.2f}%"
        + (f", EMA top-1 {row['val_top1_ema']:.2f}%" if run.ema is not None else "")
        + (f", {row['skipped_images']} unreadable images skipped" if row["skipped_images"] else "")
        + f" ({format_duration(row['epoch_time_s'])})",
    )
    state.epoch_sums = State().epoch_sums
    state.epoch, state.batch = epoch + 1, 0
    save(run, state, run.run_dir / LAST, t0)
    if is_best:
        save(run, state, run.run_dir / BEST, t0)


def _last_good(run: Run, state: State) -> str:
    """What the NaN stop says about the checkpoint to resume from."""
    path, advice = run.run_dir / LAST, "resume from it with a lower --lr, --clip-grad or --no-amp."
    if state.saved_step is not None:
        return f"The last good checkpoint, {path} (step {state.saved_step}), is untouched; {advice}"
    if path.exists():  # resumed from another file (e.g. checkpoint-best.pth) and not saved since
        return f"{path}, written before this process started, is untouched; {advice}"
    return f"No checkpoint was written yet ({path} does not exist); start again with a lower --lr or --clip-grad."


def save(run: Run, state: State, path: Path, t0: float) -> None:
    """Checkpoint for resuming at ``state.batch`` of ``state.epoch`` (collective: every rank adds its RNG state
    and partial-epoch sums). Weights that are no longer finite are not saved: the run stops as for a NaN loss,
    and the checkpoint on disk keeps the last finite state."""
    if not bool(torch.stack([p.isfinite().all() for p in run.model.parameters()]).all()):
        raise NonFiniteLossError(
            f"the weights are no longer finite at step {state.step} (the loss was finite): training stopped "
            f"without saving. {_last_good(run, state)}"
        )
    rng, sums = gather_objects(get_rng_state()), gather_objects(dict(state.epoch_sums))
    broadcast_buffers(run.model)
    if run.ema is not None:
        broadcast_buffers(run.ema.module)
    if not run.dist.is_main:
        return
    cfg = run.cfg
    checkpoint = run_checkpoint(
        task="classify",
        model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(),
        config=cfg.to_dict(),
        model_name=cfg.model,
        model_kwargs=cfg.model_kwargs,
        class_names=run.class_names,
        step=state.step,
        best=state.best,
        metrics=state.metrics,
        model_ema=run.ema.module.state_dict() if run.ema is not None else None,
        scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(),
        epoch=state.epoch,
        batch=state.batch,
        epoch_sums=sums,
        elapsed_s=state.elapsed_before + time.perf_counter() - t0,
        rng=rng,
        data_config=run.data_config,
        data_fingerprint=run.data_fingerprint,
    )
    save_checkpoint(checkpoint, path)
    if path.name == LAST:
        state.saved_step = state.step


def _median_rate(rows: list[dict[str, Any]]) -> float | None:
    """The median over epochs of the training throughput in ``metrics.csv``'s rows (None on non-main ranks)."""
    rates = [float(r["train_img_per_s"]) for r in rows if r.get("train_img_per_s") not in (None, "")]
    return round(statistics.median(rates), 1) if rates else None


def finish(run: Run, state: State, t0: float) -> dict[str, Any]:
    """The summary (``summary.json``), the curves, and the closing line."""
    cfg, last = run.cfg, state.metrics
    summary = {
        "model": cfg.model,
        "data": cfg.data,
        "top1": last.get("val_top1"),
        "top5": last.get("val_top5"),
        "loss": last.get("val_loss"),
        "best_top1": state.best["top1"],
        "best_epoch": state.best["epoch"],
        "epochs": cfg.epochs,
        "steps": state.step,
        "world_size": run.dist.world_size,
        "params_m": round(count_params(run.model) / 1e6, 3),
        "wall_time_s": round(state.elapsed_before + time.perf_counter() - t0, 1),
        "train_img_per_s": _median_rate(run.logger.rows),
        "run_dir": str(run.run_dir),
    }
    if run.ema is not None:
        summary.update(top1_ema=last.get("val_top1_ema"), top5_ema=last.get("val_top5_ema"))
    run.logger.finish(
        summary,
        panels={
            "loss": ["train_loss", "val_loss", "val_loss_ema"],
            "top-1 accuracy (%)": ["val_top1", "val_top1_ema"],
        },
    )
    _say(
        run,
        f"done in {format_duration(summary['wall_time_s'])}: top-1 {summary['top1']:.2f}%"
        + (f" (EMA {summary['top1_ema']:.2f}%)" if run.ema is not None else "")
        + f", best {summary['best_top1']:.2f}% at epoch {summary['best_epoch']}; {run.run_dir}",
    )
    return summary
