"""How the commands report what went wrong: expected failures are one line on stderr and exit code 1."""

import os
import sys


def user_errors() -> tuple[type[BaseException], ...]:
    """Expected failures (bad input, bad file, diverged run): one line naming the problem, exit code 1."""
    from .train.checkpoint import CheckpointError
    from .train.utils import NonFiniteLossError

    return OSError, ValueError, CheckpointError, NonFiniteLossError


def report_error(command: str, e: BaseException) -> int:
    """Print ``fcvit COMMAND [rank R]: error: ...`` on stderr and return exit code 1."""
    rank = os.environ.get("RANK")
    where = f" [rank {rank}]" if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else ""
    print(f"fcvit {command}{where}: error: {e}", file=sys.stderr, flush=True)
    return 1
