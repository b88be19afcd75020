"""How the commands report what went wrong: a user's mistake or an expected failure is one line on stderr and
exit code 1, in every command and whether it is caught by argparse (a bad flag value) or later (a bad file).

Argument checks (:func:`positive_int` ...) and :class:`OneLineParser` keep command-line mistakes to one line.
This module imports nothing from the rest of the package: every layer may raise its exceptions.
"""

import argparse
import os
import re
import sys

USER_ERROR = 1  # the exit code of every user mistake and expected failure
MODEL_KWARGS_HELP = "extra timm.create_model arguments: JSON or a YAML mapping, e.g. '{depths: [1, 1, 1, 1]}'"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or holds objects that are not allowed."""


class RankLostError(RuntimeError):
    """Another rank stopped answering in a collective (hung past ``--dist-timeout``, or gone)."""


DEFAULT_TIMEOUT_S = 300.0  # seconds a rank waits for the others in a collective before RankLostError
NO_OPTIMIZE_HELP = "run the model as timm.create_model returns it (default: fcvit.optimize's exact faster modules)"


def command_backend(enabled: bool) -> str | None:
    """The :func:`fcvit.optimize` backend every ``fcvit`` command uses: ``"auto"``, or None (the plain model)
    under ``--no-optimize``."""
    return "auto" if enabled else None


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
    return USER_ERROR


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse's help with each flag's default once, as ``[default: X]``, where the help does not say it already
    (argparse's own ArgumentDefaultsHelpFormatter also prints ``(default: None)`` and ``(default: False)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} [default: {str(shown).replace('%', '%%')}]"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (``fcvit train: error: ...``) and a pointer to ``--help``, not the
    whole usage (which for ``fcvit train`` is a page of flags); every flag's help shows its default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_between(low: int, high: int, why: str = ""):
    """argparse type: an integer in [low, high]; ``why`` says what the upper bound protects (in the error)."""

    def parse(text: str) -> int:
        value = _int_at_least(text, low)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}{why}, got {value}")
        return value

    return parse


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


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (tolerances, thresholds)."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (probabilities, score thresholds)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text!r}")
    return value


def device_argument(text: str) -> str:
    """argparse type: 'auto', 'cpu', 'cuda' or 'cuda:N' (whether it exists is checked when it is used)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return text
