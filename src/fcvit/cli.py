"""The ``fcvit`` command line: one subcommand per job.

Each module in :data:`COMMAND_MODULES` has a ``register(subparsers)`` function that adds its
subcommand(s) and sets ``func`` to the function that runs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .runtime import tune_cpu_allocator

COMMAND_MODULES = (
    "fcvit.models.summary",
    "fcvit.analysis.cli",
    "fcvit.dense.cli",
    "fcvit.train.cli",
    "fcvit.bench.cli",
    "fcvit.export",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcvit", description="FCViT and convolutional spatial mixers on timm")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "bench":  # bench measures under glibc's defaults unless given --tune-malloc
        tune_cpu_allocator()
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
