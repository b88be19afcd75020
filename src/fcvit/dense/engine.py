"""One training loop for both dense tasks, in rounds: ``round_iters`` optimiser steps, then evaluate, log, checkpoint.

Detection rounds are epochs (one pass over the data, the paper's 12); segmentation rounds are
``eval_interval`` iterations of an endless loader (the paper's 40k iterations, evaluated every 4k).
What differs between the tasks (model, data, loss, evaluation, lr schedule) comes from a task
object (:class:`~fcvit.dense.detection.DetectionTask`, :class:`~fcvit.dense.segmentation.SegmentationTask`).

Run directory, as ``fcvit train``'s: ``config.yaml`` (``--config`` reproduces the run),
``checkpoint-last.pth`` (every round; ``resume`` continues from it), ``checkpoint-best.pth``
(best ``task.main_metric``), ``metrics.csv`` (one row per round, round 0 = before training when
``eval_before``), TensorBoard ``tb/``, ``curves.png`` and ``summary.json`` (:class:`fcvit.engine.logger.RunLogger`).
Under torchrun every process takes ``batch_size / world_size`` images per step.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from ..accel import optimize
from ..engine.checkpoint import load_checkpoint, run_checkpoint, save_checkpoint
from ..engine.config import save_config
from ..engine.distributed import DistInfo, all_reduce_sum, broadcast_buffers, cleanup_distributed, init_distributed
from ..engine.logger import Progress, RunLogger
from ..engine.rng import preserved_rng, seed_everything
from ..errors import NonFiniteLossError, command_backend
from ..runtime import adapt_threads

__all__ = ["BEST", "LAST", "DenseTask", "eval_loader", "evaluate_split", "load_trained", "train"]

LAST, BEST = "checkpoint-last.pth", "checkpoint-best.pth"


class DenseTask(Protocol):
    """What the training loop needs to know about a task."""

    name: str  # "det" / "seg"
    main_metric: str  # metric that picks checkpoint-best.pth
    panels: dict[str, list[str]]  # curves.png panels: {title: [metrics.csv column, ...]}
    x_axis: tuple[str, str]  # curves.png's x: (metrics.csv column, label), e.g. ("iter", "iteration")
    cfg: Any  # the task's config dataclass
    class_names: list[str]

    def dataset(self, split: str, train: bool = False) -> Dataset: ...

    def build_model(self) -> nn.Module: ...

    def collate(self, batch: list) -> Any: ...

    def rounds(self, loader_len: int) -> tuple[int, int]: ...  # (iterations per round, number of rounds)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, round_iters: int) -> Any: ...

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, int]: ...

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]: ...

    def predict(self, model: nn.Module, files: list[Path], out_dir: Path, device: torch.device, **options) -> list: ...


def _autocast(cfg: Any, device: torch.device) -> torch.autocast:
    """bfloat16 autocast on CUDA when ``cfg.amp``; a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.amp) and device.type == "cuda")


def _shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Every ``world``-th sample from ``rank``: the evaluation set split over ranks without padding duplicates."""
    return dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))


def eval_loader(task: DenseTask, dataset: Dataset, rank: int, world: int) -> DataLoader:
    """One image at a time (sizes differ), this rank's shard of ``dataset``."""
    return DataLoader(_shard(dataset, rank, world), 1, num_workers=task.cfg.workers, collate_fn=task.collate)


def _endless(loader: DataLoader, first_pass: int) -> Iterator[Any]:
    """Batches of pass after pass over ``loader``, reshuffled per pass (``set_epoch``) under DDP."""
    n = first_pass
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(n)
        yield from loader
        n += 1


@dataclass
class DenseRun:
    """What a dense training run is made of, built by :func:`_set_up`, and where it stands."""

    task: DenseTask
    info: DistInfo
    model: nn.Module
    ddp: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    val_loader: DataLoader
    round_iters: int
    num_rounds: int
    logger: RunLogger
    amp: Any
    run_dir: Path
    start_round: int = 0
    step: int = 0
    best: float = float("-inf")
    metrics: dict[str, float] = field(default_factory=dict)
    eval_s: float = 0.0  # the last evaluation's seconds (for the run's ETA; 0 until one ran)


def train(
    task: DenseTask,
    run_dir: str | os.PathLike,
    resume: bool = False,
    device: str | None = None,
    eval_before: bool = False,
    log_interval: int = 20,
) -> dict[str, Any]:
    """Train ``task`` into ``run_dir`` (see the module doc); returns the summary (also ``summary.json``)."""
    run = _set_up(task, Path(run_dir), resume, device)
    if eval_before and not resume:
        run.logger.log_epoch(0, dict(iter=0, **_evaluate(run)), step=0)
    batches = _endless(run.train_loader, first_pass=run.step // len(run.train_loader))
    start = time.perf_counter()
    for round_ in range(run.start_round, run.num_rounds):
        train_loss = _train_round(run, round_, batches, log_interval)
        _end_round(run, round_, train_loss)
    summary = dict(
        task=task.name,
        run_dir=str(run.run_dir),
        steps=run.step,
        final=run.metrics,
        best={task.main_metric: run.best},
        train_seconds=round(time.perf_counter() - start, 1),
        world_size=run.info.world_size,
        device=str(run.info.device),
    )
    run.logger.finish(summary, task.panels, *task.x_axis)
    cleanup_distributed()  # on the success path only, as fcvit train (fcvit.train.train)
    return summary


def _set_up(task: DenseTask, run_dir: Path, resume: bool, device: str | None) -> DenseRun:
    """Model (optimised unless ``--no-optimize``), loaders, optimiser, schedule, logger; the resumed state."""
    cfg = task.cfg
    info = init_distributed(device)
    seed_everything(cfg.seed + info.rank)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    train_set, val_set = task.dataset("train", train=True), task.dataset("val")
    model = optimize(task.build_model(), command_backend(cfg.optimize)).to(info.device)
    if info.distributed and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # as mmdet/mmseg's SyncBN; 2-4 images per GPU
    sampler = (
        DistributedSampler(train_set, seed=cfg.seed, drop_last=True)
        if info.distributed
        else RandomSampler(train_set, generator=torch.Generator().manual_seed(cfg.seed))
    )
    per_process = cfg.batch_size // info.world_size
    loader_kw = dict(num_workers=cfg.workers, collate_fn=task.collate, persistent_workers=cfg.workers > 0)
    train_loader = DataLoader(train_set, per_process, sampler=sampler, drop_last=True, **loader_kw)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_set)} training samples make no batch of {per_process} per process")
    round_iters, num_rounds = task.rounds(len(train_loader))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = task.lr_scheduler(optimizer, round_iters)
    state: dict[str, Any] = {}
    if resume:
        ckpt = load_checkpoint(run_dir / LAST)
        if ckpt.get("task") != task.name:
            raise ValueError(f"{run_dir / LAST} is a {ckpt.get('task')!r} checkpoint, not {task.name!r}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = dict(start_round=ckpt["round"], step=ckpt["step"], best=ckpt["best"], metrics=ckpt["metrics"])
    scheduler.step_update(state.get("step", 0))
    logger = RunLogger(
        run_dir,
        enabled=info.is_main,
        resume_epoch=state["start_round"] + 1 if resume else None,
        purge_step=state.get("step") or None,
    )
    if info.is_main:
        save_config(cfg, run_dir / "config.yaml")
    return DenseRun(
        task=task,
        info=info,
        model=model,
        ddp=nn.parallel.DistributedDataParallel(model) if info.distributed else model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=train_loader,
        val_loader=eval_loader(task, val_set, info.rank, info.world_size),
        round_iters=round_iters,
        num_rounds=num_rounds,
        logger=logger,
        amp=_autocast(cfg, info.device),
        run_dir=run_dir,
        **state,
    )


def _evaluate(run: DenseRun) -> dict[str, float]:
    """The task's metrics on the validation set; the training's random streams are left as they were, so that
    evaluating (``--eval-before``, every round) never changes the trained weights."""
    broadcast_buffers(run.model)  # BatchNorm statistics: rank 0's on every rank, as the checkpoint holds them
    run.model.eval()
    with torch.no_grad(), run.amp, preserved_rng():
        return run.task.evaluate(run.model, run.val_loader, run.info.device)


def _train_round(run: DenseRun, round_: int, batches: Iterator[Any], log_interval: int) -> float:
    """``round_iters`` optimiser steps; returns the round's mean training loss over all ranks."""
    task, model, optimizer, info = run.task, run.model, run.optimizer, run.info
    model.train()
    progress = Progress(
        run.round_iters,
        f"{task.name} {round_ + 1}/{run.num_rounds}",
        info.is_main,
        log_interval,
        steps_after=(run.num_rounds - round_ - 1) * run.round_iters,
        seconds_after=(run.num_rounds - round_) * run.eval_s,
    )
    loss_sum = images = 0.0
    for _ in range(run.round_iters):
        batch = next(batches)
        with run.amp:
            loss, n = task.loss(run.ddp, batch, info.device)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"{task.name} training loss is {loss.item()} at step {run.step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if task.cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), task.cfg.grad_clip)
        optimizer.step()
        run.step += 1
        run.scheduler.step_update(run.step)
        lr = optimizer.param_groups[0]["lr"]
        loss_sum, images = loss_sum + loss.item() * n, images + n
        progress.update(n * info.world_size, loss=loss.item(), lr=lr)
        adapt_threads()  # re-fit torch's thread team to the cores other processes leave free (fcvit.runtime)
        if run.step % log_interval == 0:
            run.logger.log_scalars(run.step, dict(loss=loss.item(), lr=lr), prefix="train/")
    progress.close()
    totals = all_reduce_sum(dict(loss=loss_sum, images=images), info.device)
    return totals["loss"] / max(totals["images"], 1)


def _end_round(run: DenseRun, round_: int, train_loss: float) -> None:
    """Evaluate, log, save ``checkpoint-last.pth`` and, on a new best, ``checkpoint-best.pth``."""
    task = run.task
    t_eval = time.perf_counter()
    run.metrics = _evaluate(run)
    run.eval_s = time.perf_counter() - t_eval
    if run.info.is_main:  # on stderr with the progress lines: stdout holds the summary's JSON alone
        shown = ", ".join(f"{k} {v:.4g}" for k, v in run.metrics.items() if isinstance(v, float))
        print(f"{task.name} {round_ + 1}/{run.num_rounds} (iteration {run.step}): {shown}", file=sys.stderr, flush=True)
    lr = run.optimizer.param_groups[0]["lr"]
    run.logger.log_epoch(round_ + 1, dict(iter=run.step, train_loss=train_loss, lr=lr, **run.metrics), run.step)
    improved = run.metrics[task.main_metric] > run.best
    run.best = max(run.best, run.metrics[task.main_metric])
    if run.info.is_main:
        ckpt = run_checkpoint(
            task=task.name,
            model=run.model.state_dict(),
            optimizer=run.optimizer.state_dict(),
            config=asdict(task.cfg),
            model_name=task.cfg.model,
            model_kwargs=task.cfg.model_kwargs,
            class_names=task.class_names,
            step=run.step,
            best=run.best,
            metrics=run.metrics,
            round=round_ + 1,
        )
        save_checkpoint(ckpt, run.run_dir / LAST)
        if improved:
            save_checkpoint(ckpt, run.run_dir / BEST)


def evaluate_split(task: DenseTask, model: nn.Module, split: str, device: str | None = None) -> tuple[dict, int]:
    """``(metrics, number of images)`` of ``model`` on ``split``; under torchrun each rank scores its shard."""
    info = init_distributed(device)
    dataset = task.dataset(split)
    model.to(info.device).eval()
    with torch.no_grad(), _autocast(task.cfg, info.device):
        return task.evaluate(model, eval_loader(task, dataset, info.rank, info.world_size), info.device), len(dataset)


def load_trained(path: str | os.PathLike, task_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config dict, checkpoint)`` of a ``fcvit det|seg train`` checkpoint, or of a run directory's best one."""
    path = Path(path)
    if path.is_dir():
        path = path / BEST
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != task_name:
        if ckpt.get("task") in ("det", "seg"):
            what = f"a {ckpt['task']!r} checkpoint (fcvit {ckpt['task']} train)"
        elif ckpt.get("model_name"):
            what = f"a {ckpt['model_name']} classifier (fcvit train): use `fcvit predict|validate` with it"
        else:
            what = "no fcvit det|seg training run"
        raise ValueError(f"{path} holds {what}; `fcvit {task_name}` needs a {task_name!r} checkpoint")
    return ckpt["config"], ckpt
