"""``fcvit export``: a model (optionally with a checkpoint, official layout accepted) to ONNX, a
``torch.export`` program, or safetensors, each carrying the record a deployment needs.

* ONNX: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter, the default since torch
  2.9, which needs ``onnxscript``), opset 18 by default, a dynamic batch axis, weights inside the file.
* exported-program: ``torch.export.export`` with a dynamic batch axis, saved with ``torch.export.save``.
* safetensors: the state dict in this project's key layout, so that :func:`load_safetensors`, ``fcvit validate``,
  ``predict`` and ``analyze`` rebuild the model from the file alone.

The record (:func:`export_record`, read back by :func:`read_record`) is the same string map in every format:
the ONNX ``metadata_props``, the ``torch.export.save`` extra files, the safetensors header metadata. It holds the
model name and creation arguments, the class count and names, timm's eval data config (input size, mean/std,
interpolation, crop; ``timm.data.create_transform(**json.loads(record["data_config"]))`` is the preprocessing)
and the fcvit version.

Nothing half-done reaches the target: weights holding NaN/Inf are refused before any work (the front door's
:func:`~fcvit.hub.check_finite`); every file is written to a temporary name beside the target, checked there
(ONNX: onnxruntime against PyTorch; a program: the ``torch.export.load``-ed program against PyTorch), and only
then moved over the target (``os.replace``). A failed export leaves an existing file as it was and no temporary
file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the module imports torch and timm only when it works: `fcvit --help` stays fast
    import torch
    from torch import nn

    from .hub import LoadedModel

from .engine.atomic import atomic_write
from .errors import positive_float, positive_int

FORMATS = ("onnx", "exported-program", "safetensors")
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
RECORD_KEYS = ("model", "model_kwargs", "num_classes", "class_names", "data_config", "fcvit_version")
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")  # timm's eval config
CHECK_BATCHES = (1, 3)  # batch sizes the exported file is checked on (the example has 2: a dynamic axis)


def load_model(
    name: str | None, checkpoint: str | None = None, num_classes: int | None = None, in_chans: int | None = None
) -> nn.Module:
    """Create timm model ``name`` in eval mode, loading ``checkpoint`` (ours, official, or safetensors) if given."""
    return load_model_and_config(name, checkpoint, num_classes, in_chans).model


def load_model_and_config(
    name: str | None,
    checkpoint: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
) -> LoadedModel:
    """The :class:`~fcvit.hub.LoadedModel` of ``checkpoint`` (its record gives the model, classes, input size,
    mean/std and class names), or of a new model ``name``; ``img_size`` replaces the recorded input size."""
    from .hub import load

    if not (name or checkpoint):
        raise ValueError("give --model, --checkpoint or both")
    model = name if checkpoint else None
    return load(checkpoint or name, model=model, num_classes=num_classes, in_chans=in_chans, img_size=img_size)


def export_record(
    model_name: str,
    model_kwargs: dict[str, Any],
    num_classes: int,
    class_names: Sequence[str],
    data_config: dict[str, Any],
) -> dict[str, str]:
    """The record every export carries: :data:`RECORD_KEYS` to strings (JSON for the lists and dicts).

    ``data_config`` is timm's eval data config (:data:`DATA_CONFIG_KEYS`; ``input_size`` is ``[in_chans, H, W]``).
    """
    missing = [k for k in DATA_CONFIG_KEYS if k not in data_config]
    if missing:
        raise ValueError(f"the data config of {model_name} lacks {', '.join(missing)}")
    return {
        "model": model_name,
        "model_kwargs": json.dumps(model_kwargs, sort_keys=True),
        "num_classes": str(num_classes),
        "class_names": json.dumps(list(class_names)),
        "data_config": json.dumps({k: data_config[k] for k in DATA_CONFIG_KEYS}),
        "fcvit_version": importlib.metadata.version("fcvit"),  # the installed distribution's
    }


def read_record(path: str | os.PathLike, fmt: str | None = None) -> dict[str, str]:
    """The record (:func:`export_record`) of an exported file; ``fmt`` (one of :data:`FORMATS`) defaults to the
    one its suffix names (``.onnx``, ``.pt2``, ``.safetensors``).

    A program's record is read with ``torch.export.load``, which unpickles the program's weights: read only
    programs you trust (as for loading them).
    """
    from .engine.checkpoint import describe_load_error
    from .errors import CheckpointError

    path = Path(path)
    suffixes = {".onnx": "onnx", ".pt2": "exported-program", ".safetensors": "safetensors"}
    fmt = fmt or suffixes.get(path.suffix)
    if fmt not in FORMATS:
        raise ValueError(f"{path}: name the format ({', '.join(FORMATS)}); the suffix {path.suffix!r} does not")
    if not path.is_file():
        raise FileNotFoundError(f"{path} {'is a directory' if path.is_dir() else 'does not exist'}")
    try:
        if fmt == "onnx":
            import onnx

            found = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        elif fmt == "exported-program":
            import torch

            found = dict.fromkeys(RECORD_KEYS, "")  # torch.export.load fills in the extra files it finds
            torch.export.load(str(path), extra_files=found)
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                found = f.metadata() or {}
    except Exception as e:  # each reader has its own error types for a truncated or corrupt file
        raise CheckpointError(describe_load_error(path, e)) from None
    missing = [k for k in RECORD_KEYS if not found.get(k)]
    if missing:
        raise ValueError(
            f"{path} carries no fcvit export record (missing {', '.join(missing)}); was it written by fcvit export?"
        )
    return {k: found[k] for k in RECORD_KEYS}


def _checked(model: nn.Module) -> nn.Module:
    """``model`` in eval mode; weights holding NaN or Inf are refused in one line naming the first such tensor (the
    front door's check: they would export, and the file's runtime would agree with PyTorch on meaningless output)."""
    from .hub import check_finite

    check_finite(model.state_dict(), "the model to export")
    return model.eval()


def _example(model: nn.Module, size: tuple[int, int], batch: int = 2, in_chans: int | None = None) -> torch.Tensor:
    import torch

    in_chans = in_chans or getattr(model, "in_chans", 3)
    return torch.randn(batch, in_chans, *size, generator=torch.Generator().manual_seed(0))


def _batch_dynamic() -> tuple[dict[int, object]]:
    import torch

    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def max_difference(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    img_size: int | tuple[int, int],
    in_chans: int | None = None,
    batch_sizes: Sequence[int] = CHECK_BATCHES,
) -> float:
    """Largest absolute difference between ``forward(x)`` (an exported file's runtime) and ``model(x)`` over
    ``batch_sizes``; NaN or Inf when either side gives a non-finite output where the other does not, or both do."""
    import torch
    from timm.layers import to_2tuple

    differences = []
    for b in batch_sizes:
        x = _example(model, to_2tuple(img_size), b, in_chans)
        with torch.no_grad():
            differences.append((forward(x) - model.eval()(x)).abs().max())
    return torch.stack(differences).max().item()  # torch's max keeps a NaN (Python's max may drop it)


def _write_verified(
    path: str | os.PathLike,
    save: Callable[[str], None],
    runtime: str,
    open_forward: Callable[[str], Callable[[torch.Tensor], torch.Tensor]],
    model: nn.Module,
    img_size: tuple[int, int],
    in_chans: int | None,
    tolerance: float,
) -> float:
    """``save`` to a temporary file beside ``path``, compare ``open_forward(tmp)``'s outputs with ``model``'s, and
    move the file over ``path`` only if they differ by at most ``tolerance``; the difference."""
    error = math.nan

    def write(tmp: str) -> None:
        nonlocal error
        save(tmp)
        error = max_difference(model, open_forward(tmp), img_size, in_chans)
        if not error <= tolerance:  # NaN fails too
            by = f"{error:.2e}" if math.isfinite(error) else "NaN/Inf (non-finite outputs)"
            raise ValueError(
                f"{path}: {runtime} differs from PyTorch by {by} on batches {' and '.join(map(str, CHECK_BATCHES))}, "
                f"more than the tolerance {tolerance:g}; nothing was written"
            )

    atomic_write(path, write)
    return error


def _onnxruntime_forward(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file's CPU onnxruntime session as a tensor-to-tensor function."""
    import onnxruntime as ort
    import torch

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors (Fail, InvalidGraph, ...) derive from Exception only
        raise ValueError(
            f"onnxruntime {ort.__version__} cannot load the exported model: {str(e).splitlines()[0]}"
        ) from None
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] = 224,
    opset: int = DEFAULT_OPSET,
    in_chans: int | None = None,
    *,
    record: dict[str, str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Write ``model`` as ONNX (dynamo exporter, dynamic batch axis, input ``image``, output ``logits``, ``record``
    in its ``metadata_props``), checked with onnxruntime (CPU) against PyTorch; the largest difference."""
    import onnx
    import torch
    from timm.layers import to_2tuple

    newest = onnx.defs.onnx_opset_version()
    if not 17 <= opset <= newest:
        raise ValueError(
            f"ONNX opset must be 17 (LayerNorm/GroupNorm ops) to {newest} (onnx {onnx.__version__}), got {opset}"
        )
    model, size = _checked(model), to_2tuple(img_size)
    # the exporter prints its progress ("[torch.onnx] ...") on stdout, where commands print their results
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        program = torch.onnx.export(
            model,
            (_example(model, size, in_chans=in_chans),),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=_batch_dynamic(),
        )
    written = program.model.opset_imports.get("")
    if written != opset:  # the exporter keeps its own opset where its version converter cannot convert the model
        raise ValueError(f"ONNX opset {opset}: torch's exporter could only write opset {written} for this model")
    program.model.metadata_props.update(record or {})

    def save(tmp: str) -> None:
        program.save(tmp, external_data=False)

    return _write_verified(path, save, "onnxruntime", _onnxruntime_forward, model, size, in_chans, tolerance)


def export_program(
    model: nn.Module,
    path: str | os.PathLike,
    img_size: int | tuple[int, int] = 224,
    in_chans: int | None = None,
    *,
    record: dict[str, str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Write ``torch.export.export(model)`` (inference graph, dynamic batch axis) with ``torch.export.save``,
    ``record`` as its extra files, checked by loading it back against ``model``; the largest difference."""
    import torch
    from timm.layers import to_2tuple

    model, size = _checked(model), to_2tuple(img_size)
    with torch.no_grad():
        program = torch.export.export(
            model, (_example(model, size, in_chans=in_chans),), dynamic_shapes=_batch_dynamic()
        )

    def save(tmp: str) -> None:
        torch.export.save(program, tmp, extra_files=record)

    def load(tmp: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return torch.export.load(tmp).module()

    return _write_verified(path, save, "the saved program", load, model, size, in_chans, tolerance)


def export_safetensors(model: nn.Module, path: str | os.PathLike, record: dict[str, str]) -> None:
    """Write the state dict (this project's layout) as safetensors with ``record`` as its header metadata, so that
    :func:`load_safetensors`, ``fcvit validate``, ``predict`` and ``analyze`` rebuild the model and its input
    pipeline from the file alone."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in _checked(model).state_dict().items()}
    metadata = {**record, "format": "pt"}  # "format": safetensors' convention for torch tensors
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_safetensors(path: str | os.PathLike) -> nn.Module:
    """Rebuild the model written by :func:`export_safetensors` from its record and weights."""
    return load_model(read_record(path, "safetensors")["model"], checkpoint=str(path))


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    loaded = load_model_and_config(args.model, args.checkpoint, args.num_classes, args.in_chans, args.img_size)
    model, (in_chans, *size) = loaded.model, loaded.data_config["input_size"]
    record = export_record(loaded.name, loaded.model_kwargs, loaded.num_classes, loaded.class_names, loaded.data_config)
    shape = f"input [B, {in_chans}, H, W] at {size[0]}x{size[1]}"
    if loaded.overrides:
        shape += f" ({'; '.join(loaded.overrides)})"
    checked = f"max abs difference {{:.2e}} (batch {' and '.join(map(str, CHECK_BATCHES))})"
    if args.format == "onnx":
        error = export_onnx(model, args.output, size, args.opset, in_chans, record=record, tolerance=args.tolerance)
        print(f"wrote {args.output}: onnxruntime vs PyTorch {checked.format(error)}; {shape}")
    elif args.format == "exported-program":
        error = export_program(model, args.output, size, in_chans, record=record, tolerance=args.tolerance)
        print(f"wrote {args.output}: torch.export.load-ed program vs PyTorch {checked.format(error)}; {shape}")
    else:
        export_safetensors(model, args.output, record)
        print(f"wrote {args.output}: state dict; {shape}")
    print(
        f"record: model {loaded.name}, {loaded.num_classes} class names, data config, fcvit {record['fcvit_version']}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX, a torch.export program, or safetensors")
    p.add_argument("--model", help="timm model name, e.g. fcvit_b12 (default: the one the checkpoint records)")
    p.add_argument("--checkpoint", help="weights to load (this project's, the official release's, or safetensors)")
    p.add_argument("--num-classes", type=int, help="classes (default: the checkpoint's, else its classifier's)")
    p.add_argument("--in-chans", type=int, help="input channels (default: the checkpoint's, else its first conv's)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--output", required=True, help="file to write (an existing one only with --overwrite)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output file (once the new one checks)"
    )
    p.add_argument(
        "--img-size",
        type=positive_int,
        help="input size (default: the checkpoint's, else the model's; batch dynamic)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help="ONNX opset, 17 or newer (refused if the exporter writes another)",
    )
    p.add_argument(
        "--tolerance",
        type=positive_float,
        default=DEFAULT_TOLERANCE,
        help="largest accepted difference between the exported file's outputs and PyTorch's (ONNX, program)",
    )
    p.set_defaults(func=run)
