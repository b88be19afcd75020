"""fcvit.engine.jsonio: what the commands print and write is JSON that strict parsers read (no NaN/Infinity)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fcvit.engine.jsonio import dumps, write_json
from fcvit.engine.logger import RunLogger


def _strict(text: str):
    """``json.loads`` that refuses the NaN/Infinity tokens Python's json accepts but JSON does not have."""

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


SUMMARY = {
    "final": {"bbox_AP": math.nan, "segm_AP": 0.25},
    "best": {"bbox_AP": -math.inf},
    "curve": [1.5, math.inf, (2, math.nan)],
    "top1": np.float64("nan"),  # a NumPy float is a float: replaced as well
    "steps": 0,
    "finished": True,
    "note": "NaN",
    "missing": None,
}
EXPECTED = {
    "final": {"bbox_AP": None, "segm_AP": 0.25},
    "best": {"bbox_AP": None},
    "curve": [1.5, None, [2, None]],
    "top1": None,
    "steps": 0,
    "finished": True,
    "note": "NaN",
    "missing": None,
}


def test_non_finite_floats_are_written_as_null():
    with pytest.raises(ValueError, match="not JSON: NaN"):
        _strict(json.dumps(SUMMARY))  # what the commands wrote before
    assert _strict(dumps(SUMMARY, indent=2)) == EXPECTED
    assert _strict(dumps(SUMMARY)) == EXPECTED and "\n" not in dumps(SUMMARY)


def test_written_files_and_run_summaries_are_strict_json(tmp_path):
    path = write_json(tmp_path / "metrics.json", SUMMARY)
    assert path.read_text().endswith("}\n") and _strict(path.read_text()) == EXPECTED
    logger = RunLogger(tmp_path / "run")
    logger.finish(SUMMARY, panels={})
    assert _strict((tmp_path / "run" / "summary.json").read_text()) == EXPECTED
