"""The tables in docs/ that ``fcvit models`` prints are that command's output (scripts/doc_tables.py writes them)."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest

from fcvit.bench.summary import format_markdown, model_table
from fcvit.cli import build_parser
from fcvit.models import list_models
from fcvit.models._registry import paper_variants

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"<!-- generated: (fcvit models [^>]*?) -->\n(.*?)<!-- end generated -->", re.S)
# rows measured again here (a forward pass at 224 px each): the ones an earlier hand-written table got wrong
REMEASURED = {"acmix_s12", "dwattn_s12", "test_acmix_resnet"}


def generated_tables() -> list[tuple[str, str, str]]:
    """(doc file, command, table text) of every generated table."""
    return [(p.name, m[1], m[2]) for p in sorted(DOCS.glob("*.md")) for m in BLOCK.finditer(p.read_text())]


def test_docs_hold_generated_tables():
    assert {name for name, _, _ in generated_tables()} >= {"mixers.md"}


@pytest.mark.parametrize("doc,command,table", generated_tables(), ids=lambda v: v if "|" not in v else "")
def test_table_is_the_commands_output(doc, command, table):
    args = build_parser().parse_args(shlex.split(command)[1:])
    lines = table.strip().splitlines()
    header = format_markdown([], args.img_size).splitlines()
    assert lines[:2] == header, f"{doc}: regenerate with scripts/doc_tables.py"
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    expected = [
        " ".join([n, *(f"{k}={v}" for k, v in kwargs.items())])
        for n in list_models()
        if fnmatch.fnmatch(n, args.filter)
        for kwargs in [{}, *(kwargs for kwargs, _ in paper_variants(n))]
    ]
    assert list(rows) == expected, f"{doc}: `{command}` lists other models; regenerate with scripts/doc_tables.py"
    for name in REMEASURED & set(rows):
        (row,) = [r for r in model_table(name, args.img_size) if not r["kwargs"]]
        assert rows[name] == format_markdown([row], args.img_size).splitlines()[2], f"{doc}: {name} changed"
