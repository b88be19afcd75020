"""Regenerate the tables of docs/*.md that a command prints, from that command.

A generated table sits between ``<!-- generated: fcvit models --filter 'PATTERN' -->`` and
``<!-- end generated -->``; this script replaces what lies between them by the command's Markdown output.
tests/test_doc_tables.py checks that the tables still match the command.

    PYTHONPATH=src python scripts/doc_tables.py docs/mixers.md
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- generated: (fcvit models [^>]*?) -->\n)(.*?)(<!-- end generated -->)", re.S)


def command_output(command: str) -> str:
    """The Markdown table that ``command`` (``fcvit models ...``) prints."""
    from fcvit.bench.summary import format_markdown, model_table
    from fcvit.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])
    return format_markdown(model_table(args.filter, args.img_size), args.img_size)


def regenerate(path: Path) -> int:
    """Rewrite every generated block of ``path``; returns how many there are."""
    text = path.read_text()
    blocks = 0

    def replace(match: re.Match) -> str:
        nonlocal blocks
        blocks += 1
        return f"{match[1]}{command_output(match[2])}\n{match[4]}"

    path.write_text(BLOCK.sub(replace, text))
    return blocks


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {regenerate(Path(name))} table(s)")
