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
import os

import torch
from torch import nn

from .atomic import atomic_write
from .errors import positive_int

FORMATS = ("onnx", "exported-program", "safetensors")
DEFAULT_OPSET = 18


def load_model(name: str, checkpoint: str | None = None, num_classes: int | None = None) -> nn.Module:
    """Create timm model ``name`` in eval mode, loading ``checkpoint`` (ours, official, or safetensors) if given."""
    from .train.build import create_model

    if checkpoint and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return create_model(name, checkpoint_path=checkpoint or "", **kwargs).eval()


def _example(model: nn.Module, img_size: int, batch: int = 2) -> torch.Tensor:
    in_chans = getattr(model, "in_chans", 3)
    return torch.randn(batch, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))


def _batch_dynamic() -> tuple[dict[int, object]]:
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def export_onnx(model: nn.Module, path: str, img_size: int = 224, opset: int = DEFAULT_OPSET) -> None:
    """Write ``model`` as ONNX (dynamo exporter, dynamic batch axis, input ``image``, output ``logits``)."""
    if opset < 17:
        raise ValueError(f"ONNX opset must be >= 17 (LayerNorm/GroupNorm ops), got {opset}")
    model = model.eval()

    def write(tmp: str) -> None:
        with torch.no_grad():
            program = torch.onnx.export(
                model,
                (_example(model, img_size),),
                dynamo=True,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=_batch_dynamic(),
            )
        program.save(tmp, external_data=False)

    atomic_write(path, write)


def onnx_max_error(model: nn.Module, path: str, img_size: int = 224, batch_sizes: tuple[int, ...] = (1, 3)) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch outputs over ``batch_sizes``."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for b in batch_sizes:
        x = _example(model, img_size, b)
        with torch.no_grad():
            expected = model.eval()(x)
        (got,) = session.run(None, {name: x.numpy()})
        worst = max(worst, (torch.from_numpy(got) - expected).abs().max().item())
    return worst


def export_program(model: nn.Module, path: str, img_size: int = 224) -> None:
    """Write ``torch.export.export(model)`` (inference graph, dynamic batch axis) with ``torch.export.save``."""
    model = model.eval()
    with torch.no_grad():
        program = torch.export.export(model, (_example(model, img_size),), dynamic_shapes=_batch_dynamic())
    atomic_write(path, lambda tmp: torch.export.save(program, tmp))


def export_safetensors(model: nn.Module, path: str, model_name: str) -> None:
    """Write the state dict (this project's layout) as safetensors with ``model`` and ``num_classes`` metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"model": model_name, "num_classes": str(getattr(model, "num_classes", "")), "format": "pt"}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def load_safetensors(path: str) -> nn.Module:
    """Rebuild the model written by :func:`export_safetensors` from its metadata and weights."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if "model" not in metadata:
        raise ValueError(f"{path}: no 'model' entry in the safetensors metadata; was it written by fcvit export?")
    num_classes = int(metadata["num_classes"]) if metadata.get("num_classes") else None
    return load_model(metadata["model"], checkpoint=path, num_classes=num_classes)


def run(args: argparse.Namespace) -> int:
    if os.path.exists(args.output) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    model = load_model(args.model, args.checkpoint, args.num_classes)
    if args.format == "onnx":
        export_onnx(model, args.output, args.img_size, args.opset)
        error = onnx_max_error(model, args.output, args.img_size)
        print(f"wrote {args.output}: onnxruntime vs PyTorch max abs difference {error:.2e} (batch 1 and 3)")
        if error > args.tolerance:
            print(f"error: the ONNX model differs from PyTorch by more than {args.tolerance}")
            return 1
    elif args.format == "exported-program":
        export_program(model, args.output, args.img_size)
        print(f"wrote {args.output} (torch.export.load it; dynamic batch axis)")
    else:
        export_safetensors(model, args.output, args.model)
        print(f"wrote {args.output} (state dict + metadata model={args.model})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX, a torch.export program, or safetensors")
    p.add_argument("--model", required=True, help="timm model name, e.g. fcvit_b12")
    p.add_argument("--checkpoint", help="weights to load (this project's, the official release's, or safetensors)")
    p.add_argument("--num-classes", type=int, help="classifier size when the checkpoint's differs from 1000")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--output", required=True, help="file to write (an existing one only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument(
        "--img-size", type=positive_int, default=224, help="example input size (the batch axis stays dynamic)"
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted onnxruntime vs PyTorch difference")
    p.set_defaults(func=run)
