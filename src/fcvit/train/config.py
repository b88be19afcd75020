"""Training configuration as data: one dataclass of defaults, YAML files over it, command-line flags over those.

The defaults are the quick Fashion-MNIST recipe (``fcvit train`` with no arguments); the paper's ImageNet
recipe is ``configs/imagenet_paper.yaml``. Flag names follow timm's ``train.py`` (``--batch-size``,
``--drop-path``, ``--model-ema/--no-model-ema`` ...): each field ``foo_bar`` is the flag ``--foo-bar``.
The resolved configuration (automatic values filled in) is saved as ``config.yaml`` in the run
directory, and ``--config RUN/config.yaml`` reproduces it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..engine.atomic import atomic_write_text
from ..engine.distributed import DEFAULT_TIMEOUT_S

__all__ = [
    "TrainConfig",
    "add_config_arguments",
    "check_config",
    "config_from_args",
    "load_config",
    "read_yaml_mapping",
    "save_config",
]

FASHION_MNIST = "fashion-mnist"


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its command-line help next to the default."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "chosen from the data or the model"."""

    # model
    model: str = _f("fcvit_tiny", "timm model name (any registered model, FCViT or not)")
    model_kwargs: dict = _f(
        {}, "extra keyword arguments of timm.create_model, as JSON (e.g. '{\"depths\": [1,1,1,1]}')"
    )
    pretrained: bool = _f(False, "start from the model's pretrained weights (timm)")
    initial_checkpoint: str = _f("", "start from the weights of this checkpoint (fcvit, timm or official FCViT)")
    in_chans: int | None = _f(
        None, "input channels: 1 keeps grey images grey, 3 makes them RGB (auto: 1 for Fashion-MNIST)"
    )
    drop_path: float = _f(0.0, "stochastic depth rate (paper: 0.1, 0.2 for b48)")
    drop: float = _f(0.0, "dropout rate before the classifier")

    # data
    data: str = _f(FASHION_MNIST, "'fashion-mnist' or an ImageFolder root holding train/ and val/")
    data_dir: str | None = _f(None, "torchvision-style root holding Fashion-MNIST (default: Debian's system copy)")
    train_split: str = _f("train", "sub-folder (or Fashion-MNIST split) to train on")
    val_split: str = _f("val", "sub-folder (or Fashion-MNIST split) to validate on ('val' is Fashion-MNIST's test set)")
    train_limit: int | None = _f(None, "train on the first N images only (quick runs)")
    val_limit: int | None = _f(None, "validate on the first N images only (quick runs; leave unset for real figures)")
    img_size: int | None = _f(28, "square input size (auto: the model's pretrained_cfg)")
    crop_pct: float | None = _f(None, "eval centre-crop fraction (auto: 1.0 for Fashion-MNIST, else pretrained_cfg)")
    interpolation: str | None = _f(None, "resize interpolation (auto: pretrained_cfg, 'bicubic' for FCViT)")
    mean: list | None = _f(None, "normalisation mean, one value per channel (auto: dataset or pretrained_cfg)")
    std: list | None = _f(None, "normalisation std, one value per channel (auto: dataset or pretrained_cfg)")
    workers: int = _f(2, "DataLoader worker processes per rank (the in-memory Fashion-MNIST path needs none)")
    skip_bad_images: bool = _f(False, "skip unreadable images (counted in the log) instead of stopping")

    # augmentation (all off-switchable: --aa none --reprob 0 --mixup 0 --cutmix 0 --hflip 0 --crop-pad 0)
    crop_mode: str | None = _f(
        None, "train crop: 'rrc' (RandomResizedCrop) or 'pad' (zero-pad + random crop; auto: 'pad' for Fashion-MNIST)"
    )
    crop_pad: int = _f(0, "padding of the 'pad' crop mode, pixels (0: no crop, e.g. 2 for CIFAR-style shifts)")
    scale: list = _f([0.08, 1.0], "RandomResizedCrop scale range ('rrc' crop mode)")
    hflip: float = _f(0.5, "horizontal flip probability")
    color_jitter: float = _f(0.0, "colour jitter strength (timm; ignored when --aa is set)")
    aa: str = _f("none", "timm auto-augment policy, e.g. 'rand-m9-mstd0.5' (RandAugment); 'none' for off")
    reprob: float = _f(0.0, "random erasing probability")
    remode: str = _f("pixel", "random erasing mode")
    mixup: float = _f(0.0, "mixup alpha (0: off)")
    cutmix: float = _f(0.0, "cutmix alpha (0: off)")
    mixup_prob: float = _f(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_mode: str = _f("batch", "mixup/cutmix per 'batch', 'pair' or 'elem'")
    smoothing: float = _f(0.1, "label smoothing")

    # optimisation
    opt: str = _f("adamw", "timm optimizer name")
    lr: float | None = _f(3e-3, "peak learning rate (auto: lr_base x global batch / lr_base_size)")
    lr_base: float = _f(1e-3, "learning rate at a global batch of lr_base_size (paper: 1e-3 at 1024)")
    lr_base_size: int = _f(1024, "global batch size lr_base is given for")
    weight_decay: float = _f(0.05, "weight decay (not on norms, biases, layer scales or rescale parameters)")
    opt_eps: float | None = _f(None, "optimizer epsilon (timm default)")
    clip_grad: float | None = _f(None, "gradient clipping value (off when unset)")
    clip_mode: str = _f("norm", "gradient clipping mode: 'norm', 'value' or 'agc'")
    sched: str = _f("cosine", "timm scheduler name")
    epochs: int = _f(2, "epochs")
    warmup_epochs: float = _f(0.2, "linear warm-up, epochs (may be fractional: the schedule steps per update)")
    warmup_lr: float = _f(1e-6, "learning rate at the start of warm-up")
    min_lr: float = _f(1e-5, "learning rate at the end of the cosine")
    batch_size: int = _f(64, "batch size per process (global batch = batch size x processes)")

    # distillation (DeiT): a teacher's predictions as the targets of the student's distillation token
    teacher: str = _f("", "teacher checkpoint (fcvit train, timm or official FCViT); needs --distill hard|soft")
    teacher_model: str = _f("", "timm model name of the teacher (default: the one recorded in its checkpoint)")
    teacher_ema: bool = _f(False, "use the teacher checkpoint's EMA weights")
    distill: str = _f("none", "DeiT distillation: 'none', 'hard' (teacher's argmax) or 'soft' (KL at --distill-tau)")
    distill_alpha: float = _f(0.5, "weight of the distillation loss; the class token's loss gets 1 - alpha (DeiT)")
    distill_tau: float = _f(1.0, "temperature of soft distillation (DeiT)")

    # weight EMA
    model_ema: bool = _f(True, "keep an exponential moving average of the weights (validated as well)")
    model_ema_decay: float = _f(0.999, "EMA decay (paper recipe: 0.9998)")
    model_ema_warmup: bool = _f(True, "ramp the EMA decay up over the first steps (timm ModelEmaV3)")

    # runtime
    device: str = _f("auto", "'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1'")
    amp: bool = _f(True, "mixed precision on CUDA (no effect on CPU)")
    amp_dtype: str = _f("bfloat16", "AMP dtype: 'bfloat16' or 'float16' (with a gradient scaler)")
    channels_last: bool = _f(True, "channels-last memory format (faster convolutions on CPU and GPU)")
    compile: bool = _f(False, "torch.compile the model")
    optimize: bool = _f(True, "swap in fcvit.optimize's exact faster modules (--no-optimize: the plain model)")
    sync_bn: bool = _f(False, "SyncBatchNorm across ranks (CUDA only)")
    seed: int = _f(42, "random seed (each rank adds its rank)")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms (and no cuDNN benchmark)")
    dist_timeout: float = _f(
        DEFAULT_TIMEOUT_S, "seconds a rank waits in a collective for the others before the run fails"
    )

    # run directory
    output: str = _f("runs", "parent directory of run directories")
    experiment: str = _f(
        "", "run directory name (default: MODEL-DATA-TIMESTAMP-RANDOM; --resume continues in the checkpoint's)"
    )
    resume: str = _f("", "resume from this checkpoint (model, EMA, optimizer, scheduler, scaler, step, RNG)")
    checkpoint_every: int = _f(500, "also save checkpoint-last.pth every N optimizer steps (0: only per epoch)")
    log_interval: int = _f(50, "steps between log lines when stdout is not a terminal")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _base_type(name: str) -> type:
    """``int | None`` -> int; ``list`` -> list."""
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _coerce(name: str, value: Any) -> Any:
    """Check and convert one YAML/CLI value for field ``name``, with an error naming the field."""
    kind = _base_type(name)
    if value is None:
        return None
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError("expected true or false")
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            return float(value)
        if kind is list:
            return [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if kind is dict:
            value = json.loads(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                raise TypeError("expected a mapping")
            return value
        if kind is int and isinstance(value, str):
            return int(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value
    except (TypeError, ValueError) as e:
        raise ValueError(f"config field {name!r}: bad value {value!r} ({e})") from None


def _from_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ValueError(f"{source}: unknown config key {key!r} (known: {', '.join(sorted(_FIELDS))})")
        out[name] = _coerce(name, value)
    return out


# lowest accepted value of numeric fields (None: unset, automatic); sizes, counts and limits start at 1
_AT_LEAST = {
    "img_size": 1,
    "in_chans": 1,
    "train_limit": 1,
    "val_limit": 1,
    "epochs": 1,
    "batch_size": 1,
    "lr_base_size": 1,
    "log_interval": 1,
    "workers": 0,
    "crop_pad": 0,
    "checkpoint_every": 0,
    "warmup_epochs": 0,
    "weight_decay": 0,
    "drop_path": 0,
    "drop": 0,
    "mixup": 0,
    "cutmix": 0,
    "reprob": 0,
    "smoothing": 0,
    "hflip": 0,
}
_POSITIVE = ("lr", "lr_base", "dist_timeout", "model_ema_decay")


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse values that cannot be meant (``--epochs 0``, ``--img-size 0``, ``--in-chans -1`` ...), naming the flag."""
    for name, low in _AT_LEAST.items():
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    for name in _POSITIVE:
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    return cfg


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (empty file: ``{}``); errors name the file and, for bad YAML, the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}{where}: malformed YAML ({problem})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a config file must be a mapping of keys to values")
    return loaded


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    source: str = "command line",
) -> TrainConfig:
    """Defaults, then ``base`` (a resumed checkpoint's config), then the YAML file at ``path``, then ``overrides``
    (``source`` names where they come from in errors)."""
    values: dict[str, Any] = _from_mapping(base or {}, "checkpoint config")
    if path:
        values.update(_from_mapping(read_yaml_mapping(path), str(path)))
    values.update(_from_mapping(overrides or {}, source))
    return check_config(TrainConfig(**values))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (keys in field order), atomically; :func:`load_config` reads it back equal."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field (``--foo-bar``; booleans get ``--no-foo-bar``), defaulting to "not given"."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config values (flags override it)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help = f"{f.metadata['help']} [default: {default}]"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif kind is list:
            parser.add_argument(flag, nargs="+", type=float, metavar="X", **kw)
        elif kind is dict:
            parser.add_argument(flag, type=str, metavar="JSON", **kw)
        else:
            parser.add_argument(flag, type=kind, metavar=f.name.upper(), **kw)


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> TrainConfig:
    """The config of parsed command-line ``args``: defaults < ``base`` < ``--config`` file < flags given."""
    given = {name: getattr(args, name) for name in _FIELDS if hasattr(args, name)}
    return load_config(getattr(args, "config", None), given, base)
