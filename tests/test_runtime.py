"""The CPU allocator setting the fcvit commands apply (fcvit.runtime), checked in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "from fcvit.runtime import allocator, tune_cpu_allocator; print(tune_cpu_allocator(), allocator())"


def probe(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FCVIT_TUNE_MALLOC"}
    if env_value is not None:
        env["FCVIT_TUNE_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env).stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_tuning_applies_on_glibc():
    out = probe(None)
    assert out.startswith("True glibc, mmap threshold 1024 MiB"), out


def test_tuning_can_be_turned_off():
    assert probe("0").strip() == "False default"
