"""The ``fcvit`` command line: one subcommand per job.

Each module in :data:`COMMAND_MODULES` has a ``register(subparsers)`` function that adds its
subcommand(s) and sets ``func`` to the function that runs them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import OneLineParser, report_error, user_errors
from .runtime import tune_cpu_allocator

COMMAND_MODULES = (
    "fcvit.models.summary",
    "fcvit.analysis.cli",
    "fcvit.dense.cli",
    "fcvit.train.cli",
    "fcvit.bench.cli",
    "fcvit.export",
    "fcvit.study.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fcvit", description="FCViT and convolutional spatial mixers on timm")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "tune_malloc", True):  # a command may offer --tune-malloc instead (fcvit bench)
        tune_cpu_allocator()
    try:
        return int(args.func(args) or 0)
    except user_errors() as e:
        # the command as typed: "train", or "det train" (nested actions have dests named *_command)
        words = [args.command, *(v for k, v in vars(args).items() if k.endswith("_command") and v)]
        return report_error(" ".join(words), e)


if __name__ == "__main__":
    sys.exit(main())
