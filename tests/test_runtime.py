"""The process settings the fcvit commands apply (fcvit.runtime): CPU allocator and OpenMP threads, checked in
fresh interpreters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

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


# --- re-fitting the team to the free cores while a command runs (fcvit.runtime.ThreadGovernor) ---------------


class FakeMachine:
    """A clock, a busy-CPU counter and this process's CPU time that a test advances by hand."""

    def __init__(self):
        self.now = self.busy = self.own = 0.0

    def run(self, seconds: float, ours: float, others: float) -> None:
        """``seconds`` pass while this process uses ``ours`` cores and the other processes ``others``."""
        self.now += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds


def governor(machine: FakeMachine, chosen: list[int], cpus=(0, 1), max_threads=2):
    from fcvit.runtime import ThreadGovernor

    own, clock = (lambda: machine.own), (lambda: machine.now)
    return ThreadGovernor(cpus, max_threads, chosen.append, busy=lambda c: machine.busy, own=own, clock=clock)


def test_governor_fits_the_team_to_the_free_cores():
    machine, chosen = FakeMachine(), []
    g = governor(machine, chosen)
    assert g.poll() is None  # the first reading only starts the count
    machine.run(2.0, ours=2.0, others=0.05)  # idle machine: keep both threads (a daemon's 5 % does not count)
    assert g.poll() is None and g.threads == 2
    machine.run(2.0, ours=1.33, others=0.67)  # a CPU-bound process arrives and takes its share
    assert g.poll() == 1 and chosen == [1] and g.others == pytest.approx(0.67)
    machine.run(1.0, ours=1.0, others=1.0)
    assert g.poll() is None  # within the interval: no reading, no change
    machine.run(1.5, ours=1.0, others=1.0)  # it keeps its core: one thread is what is left
    assert g.poll() is None and g.threads == 1
    machine.run(2.0, ours=1.0, others=0.0)  # it has gone: both threads again
    assert g.poll() == 2 and chosen == [1, 2]


def test_governor_bounds():
    machine, chosen = FakeMachine(), []
    g = governor(machine, chosen, cpus=range(8), max_threads=4)  # 8 CPUs, a quota of 4
    g.poll()
    machine.run(2.0, ours=4.0, others=3.0)
    assert g.poll() is None and g.threads == 4  # 5 cores left, but never more than the quota
    machine.run(2.0, ours=1.0, others=7.9)
    assert g.poll() == 1  # never fewer than one
    machine.run(2.0, ours=1.0, others=5.4)
    assert g.poll() == 3  # 2.6 cores left: rounded


def test_governor_without_proc_stat_changes_nothing():
    from fcvit.runtime import ThreadGovernor

    chosen = []
    g = ThreadGovernor([0, 1], 2, chosen.append, interval=0.0, busy=lambda c: None)
    assert g.poll() is None and g.poll() is None and chosen == []


def test_read_cpu_busy(tmp_path):
    from fcvit.runtime import read_cpu_busy

    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    stat.write_text(
        "cpu  300 0 30 900 9 0 3 0 0 0\ncpu0 100 0 10 500 5 0 1 0 0 0\ncpu1 200 0 20 400 4 0 2 0 0 0\nintr 1 2\n"
    )
    tick = os.sysconf("SC_CLK_TCK")
    assert read_cpu_busy([1], str(stat)) == pytest.approx(222 / tick)
    assert read_cpu_busy([0, 1], str(stat)) == pytest.approx(333 / tick)
    assert read_cpu_busy([2], str(stat)) is None  # a CPU the file does not list
    assert read_cpu_busy([0], str(tmp_path / "missing")) is None


@pytest.mark.skipif(not os.access("/proc/stat", os.R_OK), reason="needs /proc/stat")
def test_governor_sees_a_real_cpu_bound_process():
    """A busy loop in another process for 2.5 s shows as at least half a core used by others (more if other
    work shares the machine), and a 2-core team facing it shrinks to one thread."""
    from fcvit.runtime import ThreadGovernor

    chosen = []
    g = ThreadGovernor([0, 1], 2, chosen.append, interval=0.0)
    hog = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4: pass"])
    try:
        time.sleep(0.5)  # the interpreter has started and spins
        g.poll()
        time.sleep(2.0)
        assert g.poll() == 1 and g.others >= 0.5, g.others
    finally:
        hog.kill()
        hog.wait()


ADAPT_PROBE = """
import os, sys
sys.argv[0] = "/venv/bin/fcvit"  # as the console script runs
import fcvit, torch
from fcvit import runtime
print(runtime._state["adapt"], torch.get_num_threads())
if runtime._state["adapt"]:
    clock = iter([0.0, 3.0])  # two readings 3 s apart, in which the others used one core
    busy = iter([0.0, 3.0 + 2 * 3.0])
    runtime._state["governor"] = runtime.ThreadGovernor(
        [0, 1], 2, torch.set_num_threads, busy=lambda c: next(busy), own=iter([0.0, 2 * 3.0]).__next__,
        clock=clock.__next__)
    runtime.adapt_threads()
    runtime.adapt_threads()
    print(torch.get_num_threads())
runtime.set_threads(2)
print(runtime._state["adapt"])
"""


def test_command_adapts_its_team_at_every_step_unless_told_not_to():
    """adapt_threads (which every loop of the commands calls once per step) re-fits the team; OMP_NUM_THREADS,
    FCVIT_ADAPT_THREADS=0 and a --threads flag (set_threads) turn that off."""
    from fcvit.runtime import may_adapt_threads

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FCVIT_ADAPT_THREADS")}
    result = subprocess.run([sys.executable, "-c", ADAPT_PROBE], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["True", "2", "1", "False"]
    assert "other processes used 1.0 of 2 CPUs: 1 torch thread from now on" in result.stderr
    assert may_adapt_threads({}) and may_adapt_threads({"FCVIT_ADAPT_THREADS": "1"})
    assert not may_adapt_threads({"OMP_NUM_THREADS": "2"}) and not may_adapt_threads({"FCVIT_ADAPT_THREADS": "0"})


API_PROBE = """
import fcvit, timm, torch
from fcvit import runtime
print(runtime._state["adapt"])  # a program that merely imports fcvit: its team is its own
model = fcvit.optimize(timm.create_model("fcvit_tiny", depths=[1, 1, 1, 1], dims=[8, 16, 24, 32]).eval())
print(runtime._state["adapt"])
if runtime._state["adapt"]:
    clock, busy = iter([0.0, 3.0]), iter([0.0, 3.0 + 2 * 3.0])  # the others used one core in those 3 s
    runtime._state["governor"] = runtime.ThreadGovernor(
        [0, 1], 2, torch.set_num_threads, busy=lambda c: next(busy), own=iter([0.0, 2 * 3.0]).__next__,
        clock=clock.__next__)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        model(torch.randn(1, 3, 32, 32))
    print(torch.get_num_threads())
"""


@pytest.mark.parametrize("env", [{}, {"FCVIT_ADAPT_THREADS": "0"}, {"OMP_NUM_THREADS": "2"}])
def test_optimized_models_fit_the_team_in_a_users_program_too(env):
    """fcvit.optimize's CPU path re-fits torch's team to the free cores at each forward (issue 28, item 8: from the
    Python API it must not collapse under load more than the plain model); the user's settings turn it off."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "FCVIT_ADAPT_THREADS")}
    result = subprocess.run([sys.executable, "-c", API_PROBE], capture_output=True, text=True, env={**base, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split()
    if env:
        assert lines == ["False", "False"]
    else:
        assert lines == ["False", "True", "1"] and "1 torch thread from now on" in result.stderr
