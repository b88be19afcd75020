"""What ``fcvit train --resume`` lets a run change, and how the optimizer takes the new values.

A resumed run takes its configuration from the checkpoint; flags (or ``--config``) given with ``--resume``
override it. Those that only steer the rest of the run take effect: the schedule (``--lr``, ``--epochs``,
``--warmup-epochs``, ``--min-lr`` ...) is rebuilt from the config at the resumed step, the optimizer keeps its
moments but takes the new hyperparameters, augmentation and runtime settings simply apply. Those that would
make it another run (model, data, batch size, seed, optimizer kind, run directory ...) are refused with a
message, so that the banner and ``config.yaml`` never claim a value the run does not use.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import TrainConfig

__all__ = ["FIXED_ON_RESUME", "check_optimizer_state", "check_resume_config", "restore_optimizer"]

# field: why it cannot change on resume
FIXED_ON_RESUME = {
    "model": "the checkpoint holds this model's weights",
    "model_kwargs": "the checkpoint holds this model's weights",
    "in_chans": "the checkpoint holds this model's weights",
    "pretrained": "the weights come from the checkpoint",
    "initial_checkpoint": "the weights come from the checkpoint",
    "data": "batches resume at a position in this data set",
    "train_split": "batches resume at a position in this data set",
    "val_split": "best and last scores are measured on this split",
    "train_limit": "batches resume at a position in this data set",
    "val_limit": "best and last scores are measured on this split",
    "batch_size": "the checkpoint's step and batch count batches of this size",
    "seed": "the epoch permutations and augmentation come from this seed",
    "img_size": "the checkpoint's eval transform is of this size",
    "crop_pct": "the checkpoint's eval transform uses it",
    "interpolation": "the checkpoint's eval transform uses it",
    "mean": "the checkpoint's eval transform uses it",
    "std": "the checkpoint's eval transform uses it",
    "opt": "the optimizer state is of this optimizer",
    "model_ema": "the EMA weights are kept, or not, from the start",
    "lr_base": "the run's --lr is resolved already; give --lr",
    "lr_base_size": "the run's --lr is resolved already; give --lr",
    "output": "a resumed run continues in the checkpoint's directory",
    "experiment": "a resumed run continues in the checkpoint's directory",
}


def check_resume_config(ckpt: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The changes ``cfg`` makes to the config of checkpoint ``ckpt``, as ``"name old -> new"``.

    Raises ``ValueError`` for a change of a field in :data:`FIXED_ON_RESUME`, or fewer epochs than trained.
    """
    saved = ckpt["config"]
    if cfg.epochs < ckpt["epoch"]:
        raise ValueError(f"--epochs {cfg.epochs}: {cfg.resume} has trained {ckpt['epoch']} epochs already")
    changes, refused = [], []
    for name, new in cfg.to_dict().items():
        old = saved.get(name)
        if name == "resume" or new == old:
            continue
        if name in FIXED_ON_RESUME:
            refused.append(f"--{name.replace('_', '-')} ({FIXED_ON_RESUME[name]})")
        else:
            changes.append(f"{name} {old} -> {new}")
    if refused:
        raise ValueError(f"--resume cannot change {'; '.join(refused)}; start a new run for that")
    return changes


def check_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], names: dict[torch.Tensor, str], path: str
) -> None:
    """Refuse, naming the first parameter, an optimizer state whose per-parameter tensors (moments) do not have
    their parameter's shape: torch's ``load_state_dict`` matches parameters by position only, and wrong-shaped
    moments then crash the process or silently train on garbage."""
    saved_groups = state.get("param_groups", [])
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the optimizer state in {path} has {len(saved_groups)} parameter groups, this run's optimizer "
            f"{len(optimizer.param_groups)}: it is another run's"
        )
    for saved, group in zip(saved_groups, optimizer.param_groups):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"the optimizer state in {path} holds {len(saved['params'])} parameters in a group where this run "
                f"has {len(group['params'])}: it is another run's"
            )
        for index, param in zip(saved["params"], group["params"]):
            for key, value in state.get("state", {}).get(index, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != param.shape:
                    raise ValueError(
                        f"the optimizer state in {path} does not fit the model: its {key!r} of parameter "
                        f"{names.get(param, index)!r} has shape {list(value.shape)}, the parameter "
                        f"{list(param.shape)}"
                    )


def restore_optimizer(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], path: str, names: dict[torch.Tensor, str]
) -> None:
    """Load ``state``'s per-parameter state (moments, step counts), checked against the parameters
    (:func:`check_optimizer_state`; ``names``: parameter -> its name in the model), and keep ``optimizer``'s
    hyperparameters."""
    check_optimizer_state(optimizer, state, names, path)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except ValueError as e:
        raise ValueError(f"the optimizer state in {path} does not fit this run ({e})") from None
    for group, values in zip(optimizer.param_groups, hyper):
        group.update(values)
