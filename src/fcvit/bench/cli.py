"""``fcvit bench``: throughput, GMACs and peak memory of models side by side, as Markdown and JSON."""

from __future__ import annotations

import argparse
import sys

from ..errors import device_argument, non_negative_int, positive_int


def run(args: argparse.Namespace) -> int:
    from ..engine.atomic import atomic_write_text
    from ..engine.jsonio import write_json
    from ..runtime import allocator
    from .speed import MODES, PEERS, PLAIN_SUFFIX, BenchConfig, format_markdown, run_benchmark

    if args.tune_malloc and allocator() == "default":  # main() applied it unless it could not
        raise SystemExit("fcvit bench: --tune-malloc needs Linux with glibc (and FCVIT_TUNE_MALLOC not 0)")
    specs = list(args.models) + [p for p in PEERS if args.peers and p not in args.models]
    if args.plain:
        specs += [s + PLAIN_SUFFIX for s in args.models if "fcvit" in s and ":" not in s]
    cfg = BenchConfig(
        img_size=args.img_size,
        batch_size=args.batch_size,
        modes=MODES if args.mode == "both" else (args.mode,),
        device=args.device,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile=args.compile,
        threads=args.threads,
        rounds=args.rounds,
        warmup=args.warmup,
        steps=args.steps,
        memory=not args.no_memory,
        onnx=args.onnx,
        optimize=not args.no_optimize,
        profile=args.profile,
    )
    result = run_benchmark(specs, cfg, reference=args.reference)
    result["command"] = "fcvit bench " + " ".join(args.argv)
    table = format_markdown(result)
    print(table)
    if args.json:
        write_json(args.json, result)
    if args.markdown:
        atomic_write_text(args.markdown, f"`{result['command']}`\n\n{table}\n")
    return 0


def run_models(args: argparse.Namespace) -> None:
    from ..engine.jsonio import dumps
    from .summary import format_markdown, model_table

    rows = model_table(args.filter, args.img_size)
    if not rows:
        raise ValueError(f"no registered model matches --filter {args.filter!r} (fcvit models lists them all)")
    print(dumps(rows, indent=2) if args.json else format_markdown(rows, args.img_size))


def register(subparsers: argparse._SubParsersAction) -> None:
    """``fcvit models`` (:mod:`.summary`) and ``fcvit bench`` (:mod:`.speed`, :mod:`.memory`)."""
    p = subparsers.add_parser("models", help="list registered models with params, GMACs and activations")
    p.add_argument("--filter", default="*", help="shell-style pattern on model names, e.g. 'fcvit_*'")
    p.add_argument(
        "--img-size", type=positive_int, default=224, help="square input size for the GMAC and activation counts"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=run_models)

    p = subparsers.add_parser(
        "bench",
        help="throughput, GMACs and peak memory of models, interleaved in rounds",
        description="Benchmark timm models (this project's and peers) side by side. Models run in interleaved "
        "rounds; throughput is reported as median [IQR] over rounds, and the ratio to a reference model as the "
        "median of per-round ratios. Models run as fcvit.optimize makes them (--no-optimize: as timm.create_model "
        "returns them); append ':plain' to an FCViT-frame model for its plain row, ':triton' to run its depth-wise "
        "convs on the Triton kernels (CUDA, channels_last).",
    )
    p.add_argument(
        "models", nargs="*", help="timm model names, e.g. fcvit_b12 poolformer_s12 (NAME:plain, NAME:triton allowed)"
    )
    p.add_argument("--peers", action="store_true", help="add the standard peers (PoolFormer, ConvNeXt, ResNet, ...)")
    p.add_argument("--plain", action="store_true", help="add a plain row (not optimised) for each FCViT model")
    p.add_argument("--no-optimize", action="store_true", help="benchmark every model as timm.create_model returns it")
    p.add_argument("--reference", help="model the ratios are taken against (default: first non-FCViT model)")
    p.add_argument("--mode", choices=("infer", "train", "both"), default="both", help="what to time")
    p.add_argument("--img-size", type=positive_int, default=224, help="square input size")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per step")
    p.add_argument("--device", default="cpu", type=device_argument, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for models and input")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (the median is over these)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps per model before the rounds")
    p.add_argument("--steps", type=positive_int, default=1, help="timed steps per model per round")
    p.add_argument("--onnx", action="store_true", help="add onnxruntime CPU inference throughput (fp32, CPU only)")
    p.add_argument(
        "--tune-malloc",
        action="store_true",
        help="keep freed memory in glibc's heap, as the other fcvit commands do (fcvit.runtime); default: glibc's "
        "own settings, as in a plain PyTorch process",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", help="write the full result (rows, config, machine) to this JSON file")
    p.add_argument("--markdown", help="write the command and table to this Markdown file")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="after the rounds, profile a few steps of each model and mode (torch.profiler) and write the "
        "operators by self time (CUDA kernels' on a GPU) to DIR/<model>-<mode>.txt",
    )
    p.set_defaults(func=_run_checked)


def _run_checked(args: argparse.Namespace) -> int:
    if not args.models and not args.peers:
        raise SystemExit("fcvit bench: give model names and/or --peers")
    # The command as typed, for the record (when called through main(argv), only the models are known).
    args.argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else list(args.models)
    return run(args)
