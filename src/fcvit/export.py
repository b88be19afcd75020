"""``fcvit export``: a model (optionally with a checkpoint, official layout accepted) to ONNX, a
``torch.export`` program, or safetensors.

* ONNX: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter, the default since torch
  2.9, which needs ``onnxscript``), opset 18 by default, a dynamic batch axis, weights inside the file. The
  result is checked against PyTorch with onnxruntime (CPU) on two batch sizes.
* exported-program: ``torch.export.export`` with a dynamic batch axis, saved with ``torch.export.save``.
* safetensors: the state dict in this project's key layout, with the model name and class count as metadata,
  so that ``timm.create_model(name, checkpoint_path=file)`` or :func:`load_safetensors` rebuilds the model.

Every file is written to a temporary name beside the target and renamed into place.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .hub import LoadedModel

from .engine.atomic import atomic_write
from .errors import positive_int

FORMATS = ("onnx", "exported-program", "safetensors")
DEFAULT_OPSET = 18


def load_model(
    name: str | None, checkpoint: str | None = None, num_classes: int | None = None, in_chans: int | None = None
) -> nn.Module:
    """Create timm model ``name`` in eval mode, loading ``checkpoint`` (ours, official, or safetensors) if given."""
    return load_model_and_config(name, checkpoint, num_classes, in_chans).model


def load_model_and_config(
    name: str | None, checkpoint: str | None = None, num_classes: int | None = None, in_chans: int | None = None
) -> LoadedModel:
    """The :class:`~fcvit.hub.LoadedModel` of ``checkpoint`` (its record gives the model, classes, input size,
    mean/std and class names), or of a new model ``name``."""
    from .hub import load

    if not (name or checkpoint):
        raise ValueError("give --model, --checkpoint or both")
    return load(checkpoint or name, model=name if checkpoint else None, num_classes=num_classes, in_chans=in_chans)


def _example(model: nn.Module, img_size: int, batch: int = 2, in_chans: int | None = None) -> torch.Tensor:
    in_chans = in_chans or getattr(model, "in_chans", 3)
    return torch.randn(batch, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))


def _batch_dynamic() -> tuple[dict[int, object]]:
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def export_onnx(
    model: nn.Module, path: str, img_size: int = 224, opset: int = DEFAULT_OPSET, in_chans: int | None = None
) -> None:
    """Write ``model`` as ONNX (dynamo exporter, dynamic batch axis, input ``image``, output ``logits``)."""
    if opset < 17:
        raise ValueError(f"ONNX opset must be >= 17 (LayerNorm/GroupNorm ops), got {opset}")
    model = model.eval()

    def write(tmp: str) -> None:
        # the exporter prints its progress ("[torch.onnx] ...") on stdout, where commands print their results
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            program = torch.onnx.export(
                model,
                (_example(model, img_size, in_chans=in_chans),),
                dynamo=True,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=_batch_dynamic(),
            )
        program.save(tmp, external_data=False)

    atomic_write(path, write)


def onnx_max_error(
    model: nn.Module,
    path: str,
    img_size: int = 224,
    batch_sizes: tuple[int, ...] = (1, 3),
    in_chans: int | None = None,
) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch outputs over ``batch_sizes``."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for b in batch_sizes:
        x = _example(model, img_size, b, in_chans)
        with torch.no_grad():
            expected = model.eval()(x)
        (got,) = session.run(None, {name: x.numpy()})
        worst = max(worst, (torch.from_numpy(got) - expected).abs().max().item())
    return worst


def export_program(model: nn.Module, path: str, img_size: int = 224, in_chans: int | None = None) -> None:
    """Write ``torch.export.export(model)`` (inference graph, dynamic batch axis) with ``torch.export.save``."""
    model = model.eval()
    with torch.no_grad():
        program = torch.export.export(
            model, (_example(model, img_size, in_chans=in_chans),), dynamic_shapes=_batch_dynamic()
        )
    atomic_write(path, lambda tmp: torch.export.save(program, tmp))


def export_safetensors(
    model: nn.Module,
    path: str,
    model_name: str,
    data_config: dict | None = None,
    class_names: list[str] | None = None,
    model_kwargs: dict | None = None,
) -> None:
    """Write the state dict (this project's layout) as safetensors with ``model`` and ``num_classes`` metadata,
    and (JSON) the eval data config, class names and creation arguments when given, so that ``fcvit validate``,
    ``predict`` and ``analyze`` rebuild the model and its input pipeline from the file alone."""
    import json

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"model": model_name, "num_classes": str(getattr(model, "num_classes", "")), "format": "pt"}
    extra = dict(data_config=data_config, class_names=class_names, model_kwargs=model_kwargs)
    metadata.update({k: json.dumps(v) for k, v in extra.items() if v})
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_safetensors(path: str) -> nn.Module:
    """Rebuild the model written by :func:`export_safetensors` from its metadata and weights."""
    from safetensors import safe_open

    from .engine.checkpoint import describe_load_error
    from .errors import CheckpointError

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors' SafetensorError: a truncated or corrupt header
        raise CheckpointError(describe_load_error(Path(path), e)) from None
    if "model" not in metadata:
        raise ValueError(f"{path}: no 'model' entry in the safetensors metadata; was it written by fcvit export?")
    return load_model(metadata["model"], checkpoint=path)


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    trained = load_model_and_config(args.model, args.checkpoint, args.num_classes, args.in_chans)
    model, (in_chans, size, _) = trained.model, trained.data_config["input_size"]
    img_size = args.img_size or size
    if args.format == "onnx":
        export_onnx(model, args.output, img_size, args.opset, in_chans)
        error = onnx_max_error(model, args.output, img_size, in_chans=in_chans)
        print(f"wrote {args.output}: onnxruntime vs PyTorch max abs difference {error:.2e} (batch 1 and 3)")
        if error > args.tolerance:
            print(f"error: the ONNX model differs from PyTorch by more than {args.tolerance}")
            return 1
    elif args.format == "exported-program":
        export_program(model, args.output, img_size, in_chans)
        print(f"wrote {args.output} (torch.export.load it; dynamic batch axis; input [B, {in_chans}, H, W])")
    else:
        names = trained.class_names
        export_safetensors(model, args.output, trained.name, trained.data_config, names, trained.model_kwargs)
        print(f"wrote {args.output} (state dict + metadata model={trained.name}, data config, class names)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX, a torch.export program, or safetensors")
    p.add_argument("--model", help="timm model name, e.g. fcvit_b12 (default: the one the checkpoint records)")
    p.add_argument("--checkpoint", help="weights to load (this project's, the official release's, or safetensors)")
    p.add_argument("--num-classes", type=int, help="classes (default: the checkpoint's, else its classifier's)")
    p.add_argument("--in-chans", type=int, help="input channels (default: the checkpoint's, else its first conv's)")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--output", required=True, help="file to write (an existing one only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--img-size",
        type=positive_int,
        help="example input size (default: the checkpoint's, else the model's; batch dynamic)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted onnxruntime vs PyTorch difference")
    p.set_defaults(func=run)
