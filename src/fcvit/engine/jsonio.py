"""JSON that is JSON: what the commands print and write (summaries, metrics, analyses, benchmarks, studies).

Python's ``json`` writes a non-finite float as the bare token ``NaN``, ``Infinity`` or ``-Infinity``, which is not
JSON (RFC 8259): ``jq``, JavaScript's ``JSON.parse`` and most other readers refuse the whole file. Such values
do occur (the loss of NaN weights, the ``-inf`` best of a run that never evaluated, a statistic with no data),
so they are written as ``null``, "no value"; ``allow_nan=False`` then guarantees that nothing else slips through.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text

__all__ = ["dumps", "finite", "write_json"]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float inside it (dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(value)``, refusing any NaN left (``allow_nan=False``)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 2) -> Path:
    """Write :func:`dumps` of ``value`` and a newline to ``path``, atomically."""
    return atomic_write_text(path, dumps(value, indent=indent) + "\n")
