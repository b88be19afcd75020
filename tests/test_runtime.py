"""The process settings the fcvit commands apply (fcvit.runtime): CPU allocator and OpenMP threads, checked in
fresh interpreters."""

from __future__ import annotations

import os
import shutil
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


# --- OpenMP settings of the fcvit command (fcvit.runtime.prepare_command_process) ------------------------------

COMMAND_PROBE = """
import os, sys
sys.argv[0] = "/venv/bin/fcvit"  # as the console script runs
import fcvit, torch
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads())
"""


def fresh(code: str, env_changes: dict[str, str | None], prefix: tuple[str, ...] = ()) -> list[str]:
    """Run ``code`` in a new interpreter with the OpenMP variables removed, then ``env_changes`` applied."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    result = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return result.stdout.split()


def test_command_leaves_the_wait_policy_to_the_user():
    """Passive waiting cost 1.6x on an idle machine (docs/training.md): the command does not set it."""
    assert fresh(COMMAND_PROBE, {})[0] == "None"
    assert fresh(COMMAND_PROBE, {"OMP_WAIT_POLICY": "PASSIVE"})[0] == "PASSIVE"


def test_only_the_command_and_only_before_torch(monkeypatch):
    from fcvit import runtime

    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-u", "-m", "fcvit.cli", "train"], raising=False)
    assert runtime.is_fcvit_command()
    assert runtime.prepare_command_process() == {}  # torch is loaded in this process: too late to matter
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "pytest", "fcvit.cli"], raising=False)
    assert not runtime.is_fcvit_command()  # `import fcvit` in someone's program leaves the environment alone


@pytest.mark.skipif(not shutil.which("taskset") or not hasattr(os, "sched_getaffinity"), reason="needs taskset")
def test_threads_follow_the_affinity_mask():
    assert fresh(COMMAND_PROBE, {}, prefix=("taskset", "-c", "0"))[1:] == ["1", "1"]


def test_cgroup_quota_v2_and_v1(tmp_path, monkeypatch):
    from fcvit import runtime

    (tmp_path / "proc").write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "cpu.max").write_text("150000 100000\n")
    assert runtime.cgroup_cpu_limit(str(tmp_path), str(tmp_path / "proc")) == 1.5
    (tmp_path / "job" / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_limit(str(tmp_path), str(tmp_path / "proc")) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cgroup_cpu_limit(str(v1), str(tmp_path / "missing")) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime.cgroup_cpu_limit(str(v1), str(tmp_path / "missing")) is None

    # a quota of 1.5 CPUs on a 4-CPU mask: 2 threads; the user's OMP_NUM_THREADS wins
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert runtime.usable_cpus() == 2
    assert runtime.openmp_environment({}) == {"OMP_NUM_THREADS": "2"}
    assert runtime.openmp_environment({"OMP_NUM_THREADS": "4", "KMP_BLOCKTIME": "0"}) == {}
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime.openmp_environment({}) == {}  # all CPUs usable: torch's default
