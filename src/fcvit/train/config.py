"""Training configuration as data: one dataclass of defaults, YAML files over it, command-line flags over those.

The defaults are the quick Fashion-MNIST recipe (``fcvit train`` with no arguments); the paper's ImageNet
recipe is ``configs/imagenet_paper.yaml``. Flag names follow timm's ``train.py`` (``--batch-size``,
``--drop-path``, ``--model-ema/--no-model-ema`` ...): each field ``foo_bar`` is the flag ``--foo-bar``.
Each field declares its type, range and allowed names once (:func:`fcvit.engine.config.option`), checked for
every source of values before any work starts. The resolved configuration (automatic values filled in) is
saved as ``config.yaml`` in the run directory, and ``--config RUN/config.yaml`` reproduces it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import config as declared
from ..engine.config import check_model_name, option
from ..errors import DEFAULT_TIMEOUT_S, device_argument

__all__ = ["DISTILL_KINDS", "TrainConfig", "add_config_arguments", "config_from_args", "load_config"]

DISTILL_KINDS = ("none", "hard", "soft")
# timm's resize interpolations (timm.data.transforms.str_to_interp_mode) and its per-image random choice
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")
# timm's schedulers that step per update without a validation metric (create_scheduler_v2's names)
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly")


def _optimizer_names() -> list[str]:
    from timm.optim import list_optimizers

    return list_optimizers()


def _check_auto_augment(policy: str) -> None:
    """A timm auto-augment policy string is one timm can build (``rand-m9-mstd0.5``, ``augmix-m5``, ...)."""
    if policy in ("", "none"):
        return
    from timm.data import create_transform

    try:
        create_transform(32, is_training=True, auto_augment=policy)
    except Exception as e:  # timm raises AssertionError / KeyError / ValueError for a policy it cannot parse
        raise ValueError(
            f"{policy!r} is not a timm auto-augment policy such as 'rand-m9-mstd0.5' or 'augmix-m5' ({e!r})"
        ) from None


def check_device(device: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (``torch.device``'s spelling; whether it exists is checked at start-up)."""
    try:
        device_argument(device)
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "chosen from the data or the model"."""

    # model
    model: str = option("fcvit_tiny", "timm model name (any registered model, FCViT or not)", check=check_model_name)
    model_kwargs: dict = option(
        {}, "extra keyword arguments of timm.create_model: JSON or a YAML mapping, e.g. '{depths: [1, 1, 1, 1]}'"
    )
    pretrained: bool = option(False, "start from the model's pretrained weights (timm)")
    initial_checkpoint: str = option(
        "", "start from the weights of this checkpoint as they are (strict: shapes must fit; timm's flag)"
    )
    pretrained_path: str = option(
        "",
        "start from this file as the model's pretrained weights, adapted: a classifier of another class count is "
        "re-initialised, the stem adapted to --in-chans, position tables resampled to --img-size (timm's flag)",
    )
    in_chans: int | None = option(
        None, "input channels: 1 keeps grey images grey, 3 makes them RGB", low=1, auto="1 for Fashion-MNIST, else 3"
    )
    drop_path: float = option(0.0, "stochastic depth rate (paper: 0.1, 0.2 for b48)", low=0, below=1)
    drop: float = option(0.0, "dropout rate before the classifier", low=0, below=1)

    # data
    data: str = option("fashion-mnist", "'fashion-mnist' or an ImageFolder root holding train/ and val/")
    data_dir: str | None = option(None, "torchvision-style root holding Fashion-MNIST", auto="Debian's system copy")
    train_split: str = option("train", "sub-folder (or Fashion-MNIST split) to train on")
    val_split: str = option(
        "val", "sub-folder (or Fashion-MNIST split) to validate on ('val' is Fashion-MNIST's test set)"
    )
    train_limit: int | None = option(None, "train on the first N images only (quick runs)", low=1, auto="every image")
    val_limit: int | None = option(
        None,
        "validate on the first N images only (quick runs; leave unset for real figures)",
        low=1,
        auto="every image",
    )
    img_size: int | None = option(28, "square input size", low=1, auto="the model's pretrained_cfg")
    crop_pct: float | None = option(
        None,
        "eval centre-crop fraction",
        above=0,
        high=1,
        auto="1.0 for Fashion-MNIST, else the model's pretrained_cfg",
    )
    interpolation: str | None = option(
        None, "resize interpolation", choices=INTERPOLATIONS, auto="the model's pretrained_cfg"
    )
    mean: list | None = option(
        None, "normalisation mean, one value per channel", auto="the dataset's, else the model's pretrained_cfg"
    )
    std: list | None = option(
        None, "normalisation std, one value per channel", above=0, auto="the dataset's, else the model's pretrained_cfg"
    )
    workers: int = option(
        2, "DataLoader worker processes per rank (the in-memory Fashion-MNIST path needs none)", low=0
    )
    skip_bad_images: bool = option(False, "skip unreadable images (counted in the log) instead of stopping")

    # augmentation (all off-switchable: --aa none --reprob 0 --mixup 0 --cutmix 0 --hflip 0 --crop-pad 0)
    crop_mode: str | None = option(
        None,
        "train crop: 'rrc' (RandomResizedCrop) or 'pad' (zero-pad + random crop; auto: 'pad' for Fashion-MNIST)",
        choices=("rrc", "pad"),
        auto="pad for Fashion-MNIST, else rrc",
    )
    crop_pad: int = option(
        0, "padding of the 'pad' crop mode, pixels (0: no crop, e.g. 2 for CIFAR-style shifts)", low=0
    )
    scale: list = option([0.08, 1.0], "RandomResizedCrop scale range ('rrc' crop mode)", above=0, high=1)
    hflip: float = option(0.5, "horizontal flip probability", low=0, high=1)
    color_jitter: float = option(0.0, "colour jitter strength (timm; ignored when --aa is set)", low=0)
    aa: str = option(
        "none",
        "timm auto-augment policy, e.g. 'rand-m9-mstd0.5' (RandAugment); 'none' for off",
        check=_check_auto_augment,
    )
    reprob: float = option(0.0, "random erasing probability", low=0, high=1)
    remode: str = option("pixel", "random erasing mode", choices=("pixel", "rand", "const"))
    mixup: float = option(0.0, "mixup alpha (0: off)", low=0)
    cutmix: float = option(0.0, "cutmix alpha (0: off)", low=0)
    mixup_prob: float = option(1.0, "probability of applying mixup or cutmix to a batch", low=0, high=1)
    mixup_switch_prob: float = option(0.5, "probability of cutmix instead of mixup when both are on", low=0, high=1)
    mixup_mode: str = option("batch", "mixup/cutmix per 'batch', 'pair' or 'elem'", choices=("batch", "pair", "elem"))
    smoothing: float = option(0.1, "label smoothing", low=0, below=1)

    # optimisation
    opt: str = option("adamw", "timm optimizer name", choices=_optimizer_names)
    lr: float | None = option(3e-3, "peak learning rate", above=0, auto="lr_base x global batch / lr_base_size")
    lr_base: float = option(1e-3, "learning rate at a global batch of lr_base_size (paper: 1e-3 at 1024)", above=0)
    lr_base_size: int = option(1024, "global batch size lr_base is given for", low=1)
    weight_decay: float = option(0.05, "weight decay (not on norms, biases, layer scales or rescale parameters)", low=0)
    opt_eps: float | None = option(None, "optimizer epsilon (timm default)", above=0, auto="the optimizer's")
    clip_grad: float | None = option(None, "gradient clipping value (off when unset)", above=0, auto="off")
    clip_mode: str = option(
        "norm", "gradient clipping mode: 'norm', 'value' or 'agc'", choices=("norm", "value", "agc")
    )
    sched: str = option("cosine", "timm scheduler name", choices=SCHEDULERS)
    epochs: int = option(2, "epochs", low=1)
    warmup_epochs: float = option(
        0.2, "linear warm-up, epochs (may be fractional: the schedule steps per update)", low=0
    )
    warmup_lr: float = option(1e-6, "learning rate at the start of warm-up", low=0)
    min_lr: float = option(1e-5, "learning rate at the end of the cosine", low=0)
    batch_size: int = option(64, "batch size per process (global batch = batch size x processes)", low=1)

    # distillation (DeiT): a teacher's predictions as the targets of the student's distillation token
    teacher: str = option("", "teacher checkpoint (fcvit train, timm or official FCViT); needs --distill hard|soft")
    teacher_model: str = option("", "timm model name of the teacher", auto="the one recorded in its checkpoint")
    teacher_ema: bool = option(False, "use the teacher checkpoint's EMA weights")
    distill: str = option(
        "none",
        "DeiT distillation: 'none', 'hard' (teacher's argmax) or 'soft' (KL at --distill-tau)",
        choices=DISTILL_KINDS,
    )
    distill_alpha: float = option(
        0.5, "weight of the distillation loss; the class token's loss gets 1 - alpha (DeiT)", low=0, high=1
    )
    distill_tau: float = option(1.0, "temperature of soft distillation (DeiT)", above=0)

    # weight EMA
    model_ema: bool = option(True, "keep an exponential moving average of the weights (validated as well)")
    model_ema_decay: float = option(0.999, "EMA decay (paper recipe: 0.9998)", above=0, below=1)
    model_ema_warmup: bool = option(True, "ramp the EMA decay up over the first steps (timm ModelEmaV3)")

    # runtime
    device: str = option("auto", "'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1'", check=check_device)
    amp: bool = option(True, "mixed precision on CUDA (no effect on CPU)")
    amp_dtype: str = option(
        "bfloat16", "AMP dtype: 'bfloat16' or 'float16' (with a gradient scaler)", choices=("bfloat16", "float16")
    )
    channels_last: bool = option(True, "channels-last memory format (faster convolutions on CPU and GPU)")
    compile: bool = option(False, "torch.compile the model")
    optimize: bool = option(True, "swap in fcvit.optimize's exact faster modules (--no-optimize: the plain model)")
    sync_bn: bool = option(False, "SyncBatchNorm across ranks (CUDA only)")
    seed: int = option(42, "random seed (each rank adds its rank)", low=0)
    deterministic: bool = option(False, "torch.use_deterministic_algorithms (and no cuDNN benchmark)")
    dist_timeout: float = option(
        DEFAULT_TIMEOUT_S, "seconds a rank waits in a collective for the others before the run fails", above=0
    )

    # run directory
    output: str = option("runs", "parent directory of run directories")
    experiment: str = option(
        "", "run directory name (--resume continues in the checkpoint's)", auto="MODEL-DATA-TIMESTAMP-RANDOM"
    )
    resume: str = option("", "resume from this checkpoint (model, EMA, optimizer, scheduler, scaler, step, RNG)")
    checkpoint_every: int = option(
        500, "also save checkpoint-last.pth every N optimizer steps (0: only per epoch)", low=0
    )
    log_interval: int = option(50, "steps between log lines when stdout is not a terminal", low=1)

    def check(self) -> None:
        """The relations between fields (each field's own range is checked when it is read)."""
        if self.teacher and self.distill == "none":
            raise ValueError("--teacher is given without --distill hard|soft: say how to distil, or drop --teacher")
        if self.distill != "none" and not self.teacher:
            raise ValueError(f"--distill {self.distill} needs --teacher CHECKPOINT")
        starts = [f for f in ("pretrained", "initial_checkpoint", "pretrained_path") if getattr(self, f)]
        if len(starts) > 1:
            flags = " and ".join("--" + f.replace("_", "-") for f in starts)
            raise ValueError(f"{flags}: give one source of starting weights")
        if len(self.scale) != 2 or self.scale[0] > self.scale[1]:
            raise ValueError(f"--scale takes two fractions MIN MAX with MIN <= MAX, got {self.scale}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and self.in_chans and len(values) not in (1, self.in_chans):
                raise ValueError(f"--{name} has {len(values)} values for {self.in_chans} input channel(s)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    source: str = declared.COMMAND_LINE,
) -> TrainConfig:
    """Defaults, then ``base`` (a resumed checkpoint's config), then the YAML file at ``path``, then ``overrides``
    (``source`` names where they come from in errors); every value checked against its declaration."""
    layers = [("checkpoint config", base)]
    if path:
        layers.append((str(path), declared.read_yaml_mapping(path)))
    layers.append((source, overrides))
    return declared.build(TrainConfig, *layers)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.yaml`` and one flag per field, defaulting to "not given"."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (flags override it)")
    declared.add_arguments(parser, TrainConfig)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainConfig:
    """The config of parsed command-line ``args``: defaults < ``base`` < ``--config`` file < flags given."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return load_config(getattr(args, "config", None), given, base)
