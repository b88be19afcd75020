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


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that ``args`` went through last: ``fcvit train``'s for ``fcvit train ...``."""
    for action in parser._actions:  # argparse keeps its subparsers there (no public accessor)
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top level's: the mistake is in its flags
        chosen = _chosen_parser(parser, args)
        chosen.print_usage(sys.stderr)
        chosen.error(f"unrecognized arguments: {' '.join(unknown)}")
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
