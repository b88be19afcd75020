"""How the commands report what went wrong: expected failures are one line on stderr and exit code 1.

Argument checks (:func:`positive_int` ...) and :class:`OneLineParser` keep command-line mistakes to one line
too (exit code 2, as argparse).
"""

import argparse
import os
import sys


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or holds objects that are not allowed."""


class RankLostError(RuntimeError):
    """Another rank stopped answering in a collective (hung past ``--dist-timeout``, or gone)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the bad step touches the weights."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Expected failures (bad input, bad file, diverged run, lost rank): one line naming the problem, exit code 1."""
    return OSError, ValueError, CheckpointError, NonFiniteLossError, RankLostError


def report_error(command: str, e: BaseException) -> int:
    """Print ``fcvit COMMAND [rank R]: error: ...`` on stderr and return exit code 1."""
    rank = os.environ.get("RANK")
    where = f" [rank {rank}]" if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    print(f"fcvit {command}{where}: error: {e}", file=sys.stderr, flush=True)
    return 1


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (``fcvit train: error: ...``) and a pointer to ``--help``, not the
    whole usage (which for ``fcvit train`` is a page of flags)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (sizes, counts, limits)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {'positive' if low == 1 else 'at least ' + str(low)}, got {value}")
    return value
