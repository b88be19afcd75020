"""``fcvit study run``: every run of a study through submitit, resumable by running the command again.

A run is an ordinary ``fcvit train`` run directory, ``ROOT/<study>/<arm>/seed<k>/``, trained from the arm's
config (``ROOT/<study>/<arm>/train.yaml``) with ``--seed k``. Before each run the job looks at its directory:
``summary.json`` means finished (skipped), ``checkpoint-last.pth`` without it means killed (resumed with
``--resume``, which continues at the checkpoint's step with every RNG restored), run files without either mean
killed before the first checkpoint (those files are removed and the run starts again), nothing means new. The
analyses of the study then run on the run's final weights, each skipped when its JSON exists. So rerunning the
command after a kill, a reboot or a Slurm time-out completes the study, and a finished study costs nothing to
rerun.

A job runs the commands in its own process through their own parsers and functions (``fcvit.train.cli``,
``fcvit.analysis.cli``; never the top-level ``fcvit.cli``), so a failure raises and the job's log ends with its
reason. That line goes to the run's progress line and to ``RUN/failed.json`` for ``fcvit study report``.

One ``fcvit study run`` of a study at a time: it holds ``ROOT/<study>/.lock`` (``fcntl.flock``; the kernel
releases it when the process ends, however it ends) and a second one is refused naming the holder's pid.
SIGINT and SIGTERM stop its running jobs (their training processes too) and end it with one line and exit code
130 or 143; the stopped runs resume at the next ``fcvit study run``.

Executors (submitit's): ``local`` runs one run at a time in a subprocess of this machine (logs under
``ROOT/<study>/.submitit/``); ``slurm`` submits every run as one job array, each run trained with DDP on
``--nodes x --gpus-per-node`` tasks from submitit's environment (requeued from its checkpoint on time-out);
``debug`` runs in this process (submitit's DebugExecutor: no subprocess, pdb on an error).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..engine.atomic import atomic_write, atomic_write_text
from ..engine.jsonio import write_json
from ..engine.logger import format_duration
from ..engine.rundir import RUN_FILES, clean_orphans
from .study import Study, StudyError

__all__ = ["EXECUTORS", "Run", "StudyStopped", "plan_runs", "run_command", "run_study", "study_lock"]

EXECUTORS = ("local", "slurm", "debug")
SUMMARY, LAST, BEST = "summary.json", "checkpoint-last.pth", "checkpoint-best.pth"
STUDY_FILE = "study.json"
FAILED = "failed.json"  # in a run directory whose last job failed: {"reason": its log's last line, "log": path}
# what `fcvit train` writes into its run directory (besides RUN_FILES): removed to restart an unstarted run
TRAIN_OUTPUTS = (*RUN_FILES, "curves.png", "tb")


def run_dir(root: str | Path, study: str, arm: str, seed: int) -> Path:
    return Path(root) / study / arm / f"seed{seed}"


@dataclass(frozen=True)
class Run:
    """One (arm, seed) of a study: how it trains (``train_argv``; None for an arm that analyses another study's
    runs) and where its analyses go (``RUN/analysis/<kind>/<kind>.json``)."""

    arm: str
    seed: int
    run_dir: Path
    trained_dir: Path  # the run directory whose weights the analyses read (another study's for a source arm)
    train_argv: tuple[str, ...] | None
    analyses: tuple[str, ...]

    def analysis_done(self, kind: str) -> bool:
        return (self.run_dir / "analysis" / kind / f"{kind}.json").is_file()

    @property
    def label(self) -> str:
        return f"{self.arm}/seed{self.seed}"

    def status(self) -> str:
        """``done``, ``resume`` (killed: a checkpoint, no summary), ``restart`` (killed before its first checkpoint:
        run files but no checkpoint), ``train`` (new) or ``analyse`` (trained)."""
        if self.train_argv is not None and not (self.run_dir / SUMMARY).is_file():
            if (self.run_dir / LAST).is_file():
                return "resume"
            return "restart" if any((self.run_dir / name).exists() for name in TRAIN_OUTPUTS) else "train"
        if not all(self.analysis_done(kind) for kind in self.analyses):
            return "analyse"
        return "done"


def clear_unstarted_run(run_dir: Path) -> list[str]:
    """Remove what a run killed before its first checkpoint left in ``run_dir``: the files and folder ``fcvit
    train`` writes (:data:`TRAIN_OUTPUTS`) and interrupted checkpoint saves, nothing else; returns their names.
    Refuses a directory that holds a checkpoint or a summary (a run to resume or a finished one)."""
    if (run_dir / LAST).exists() or (run_dir / SUMMARY).exists():
        raise StudyError(f"{run_dir} holds {LAST} or {SUMMARY}: resume it or leave it, it is not cleared")
    removed = [p.name for p in clean_orphans(run_dir)]
    for name in TRAIN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def run_command(argv: Sequence[str]) -> None:
    """Run ``fcvit ARGV`` (``train ...`` or ``analyze KIND ...``) in this process through the command's own parser
    and function (:mod:`fcvit.train.cli`, :mod:`fcvit.analysis.cli`), as ``fcvit`` would but without its
    top-level CLI. A failure raises its error (so a job's log ends with the reason)."""
    from ..analysis import cli as analysis_cli
    from ..errors import OneLineParser
    from ..train import cli as train_cli

    parser = OneLineParser(prog="fcvit")
    commands = parser.add_subparsers(dest="command", required=True)
    train_cli.register(commands)
    analysis_cli.register(commands)
    args = parser.parse_args(list(argv))
    code = args.func(args)
    if code:
        raise RuntimeError(f"`fcvit {' '.join(argv[:2])}` exited with code {code} (its error is above in this log)")


class StudyJob:
    """What a submitit job runs for one :class:`Run`: train (fresh, restarted or resumed, as the run directory
    says), then the analyses on rank 0. ``checkpoint`` makes submitit requeue it after a Slurm time-out or
    preemption."""

    def __init__(self, run: Run, study: Study, root: Path, threads: int = 0):
        self.run, self.study, self.root, self.threads = run, study, root, threads

    def __call__(self) -> dict[str, Any]:
        from ..runtime import set_threads, tune_cpu_allocator

        run = self.run
        tune_cpu_allocator()
        if self.threads:
            set_threads(self.threads)
        rank = _export_distributed_environment()
        status = run.status()
        if status in ("train", "restart", "resume"):
            if status == "restart" and rank == 0:  # before any rank's `fcvit train` looks at the directory
                removed = clear_unstarted_run(run.run_dir)
                print(
                    f"{run.run_dir}: killed before its first checkpoint; removed {', '.join(removed)}", file=sys.stderr
                )
            resume = ["--resume", str(run.run_dir / LAST)] if status == "resume" else []
            run_command([*run.train_argv, *resume])
        if rank == 0:
            for kind in run.analyses:
                if not run.analysis_done(kind):
                    run_command(analysis_argv(self.study, self.root, run, kind))
        summary = run.trained_dir / SUMMARY
        return json.loads(summary.read_text()) if summary.is_file() else {}

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(StudyJob(self.run, self.study, self.root, self.threads))


def _export_distributed_environment() -> int:
    """Under a multi-task submitit job, export torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    ...) for :func:`fcvit.engine.distributed.init_distributed`; returns this task's global rank."""
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (the debug executor)
        return 0
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return env.global_rank


# --- planning ------------------------------------------------------------------------------------------------


def _arm_config(study: Study, root: Path, arm_name: str) -> Path:
    """Write the arm's train keys to ``ROOT/<study>/<arm>/train.yaml`` (the ``--config`` of its runs); refuse
    when they differ from those its existing runs were started with."""
    arm = study.arm(arm_name)
    path = root / study.name / arm.name / "train.yaml"
    text = yaml.safe_dump(arm.train, sort_keys=True)
    if path.is_file() and path.read_text() != text and any(path.parent.glob("seed*/config.yaml")):
        raise StudyError(
            f"{study.path}: arm {arm.name!r} has other train keys than its runs in {path.parent} were started "
            f"with ({path}); move those runs away or run the study under another --root"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def best_run(root: Path, study: str, arms: Sequence[str]) -> Path:
    """The finished run of ``study``'s ``arms`` with the highest best top-1 (a distillation teacher)."""
    runs = [
        (summary["best_top1"], d)
        for a in arms
        for d in sorted((root / study / a).glob("seed*"))
        if (summary := _read_summary(d))
    ]
    if not runs:
        raise StudyError(
            f"no finished run of study {study!r} arms {list(arms)} under {root}: run that study first "
            f"(fcvit study run configs/studies/{study}.yaml)"
        )
    return max(runs, key=lambda r: r[0])[1]


def _train_config(run_directory: Path) -> dict[str, Any]:
    return yaml.safe_load((run_directory / "config.yaml").read_text())


def _export_images(root: Path, study: Study, config: dict[str, Any], count: int) -> list[str]:
    """The first ``count`` validation images of the study's data as PNG files (the Fig. 2 grids' inputs)."""
    from ..data.sets import open_dataset

    folder = root / study.name / "images"
    paths = [folder / f"val{i:03d}.png" for i in range(count)]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        dataset, names = open_dataset(
            config["data"], config["val_split"], config["in_chans"] or 3, config["data_dir"], count
        )
        for i, p in enumerate(paths):  # atomically: runs analysed in parallel may write them at once
            image = dataset[i][0]
            atomic_write(p, lambda tmp, image=image: image.save(tmp, format="PNG"))
    return [str(p) for p in paths]


def analysis_argv(study: Study, root: Path, run: Run, kind: str) -> list[str]:
    """``fcvit analyze KIND`` of the final weights of ``run``'s trained run, with its model and data."""
    trained, options = run.trained_dir, study.analysis[kind]
    config = _train_config(trained)
    argv = ["analyze", kind, "--model", config["model"], "--checkpoint", str(trained / LAST)]
    argv += ["--output", str(run.run_dir / "analysis" / kind)]
    if kind == "stats":
        argv += ["--data", config["data"]] + (["--data-dir", config["data_dir"]] if config.get("data_dir") else [])
        argv += ["--workers", "0", "--limit", str(options.get("limit", 1000))]
        return argv + ["--batch-size", str(options.get("batch_size", 50))]
    argv += _export_images(root, study, config, int(options.get("images", 4)))
    if "block" in options:
        argv += ["--block", str(options["block"])]
    if "heads" in options:
        argv += ["--heads", ",".join(str(h) for h in options["heads"])]
    return argv


def plan_runs(study: Study, root: str | Path, arms: Sequence[str] | None = None, seeds: int | None = None) -> list[Run]:
    """The runs of ``study`` under ``root`` (``arms``: a subset by name; ``seeds``: this number of seeds for every
    arm instead of each arm's own), seed by seed: every arm's seed k comes before any arm's seed k + 1, so a
    study stopped half-way has its arms equally far."""
    root = Path(root)
    names = list(arms) if arms else [a.name for a in study.arms]
    chosen = [study.arm(name) for name in names]
    argv_of: dict[str, tuple[str, tuple[str, ...]]] = {}
    for arm in chosen:
        if arm.source is None:
            teacher: tuple[str, ...] = ()
            if arm.teacher is not None:
                teacher = ("--teacher", str(best_run(root, arm.teacher["study"], arm.teacher["arms"]) / BEST))
            argv_of[arm.name] = (str(_arm_config(study, root, arm.name)), teacher)
    counts = {arm.name: seeds or study.seeds_of(arm) for arm in chosen}
    runs = []
    for seed in range(max(counts.values())):
        for arm in (a for a in chosen if seed < counts[a.name]):
            own = run_dir(root, study.name, arm.name, seed)
            if arm.source is not None:
                trained = run_dir(root, arm.source["study"], arm.source["arm"], seed)
                if not (trained / SUMMARY).is_file():
                    raise StudyError(
                        f"{study.path}: arm {arm.name!r} analyses {trained}, which has not finished: run study "
                        f"{arm.source['study']!r} first"
                    )
                argv = None
            else:
                trained = own
                config, teacher = argv_of[arm.name]
                out = ("--output", str(own.parent), "--experiment", own.name)
                argv = ("train", "--config", config, "--seed", str(seed), *out, *teacher)
            runs.append(Run(arm.name, seed, own, trained, argv, tuple(study.analysis)))
    return runs


def _write_study_file(study: Study, root: Path) -> None:
    """``ROOT/<study>/study.json``: what ``fcvit study report`` reads (arms, reference, seeds, sources)."""
    path = root / study.name / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, study.to_dict())


# --- executing -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorOptions:
    """Resources of each run: ``nodes x tasks_per_node`` DDP tasks (default: one per GPU, one without GPUs);
    ``threads`` torch threads per run (0: torch's default); ``parallel`` runs at once on this machine (local)."""

    kind: str = "local"
    threads: int = 0
    parallel: int = 1
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    timeout_min: int = 24 * 60


def create_executor(options: ExecutorOptions, folder: Path):
    """submitit's executor for ``options.kind``, its resources set."""
    import submitit

    tasks = options.tasks_per_node or max(1, options.gpus_per_node)
    if options.kind == "slurm":
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=20)
        params: dict[str, Any] = dict(
            nodes=options.nodes,
            ntasks_per_node=tasks,
            gpus_per_node=options.gpus_per_node or None,
            time=options.timeout_min,
            signal_delay_s=120,
            job_name="fcvit-study",
        )
        if options.cpus_per_task:
            params["cpus_per_task"] = options.cpus_per_task
        if options.partition:
            params["partition"] = options.partition
        executor.update_parameters(**params)
        return executor
    if options.nodes != 1:
        raise StudyError(f"--nodes {options.nodes}: the {options.kind} executor runs on this machine only")
    if options.kind == "debug":
        return submitit.DebugExecutor(folder=folder)
    if options.kind != "local":
        raise StudyError(f"unknown executor {options.kind!r}; choose from {EXECUTORS}")
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(
        timeout_min=options.timeout_min, tasks_per_node=tasks, gpus_per_node=options.gpus_per_node
    )
    return executor


def _result_line(run: Run, summary: dict[str, Any], status: str) -> str:
    if not summary or "top1" not in summary:
        return f"{run.label}: analysed ({', '.join(run.analyses)})"
    text = f"top-1 {summary['top1']:.2f}% (best {summary['best_top1']:.2f}% at epoch {summary['best_epoch']})"
    rate = summary.get("train_img_per_s")
    wall = format_duration(summary.get("wall_time_s", 0))
    what = {
        "resume": "resumed and trained",
        "restart": "restarted from scratch (killed before its first checkpoint) and trained",
        "train": "trained",
        "analyse": "analysed",
        "done": "finished",
    }[status]
    return f"{run.label}: {what}: {text}, {wall}" + (f", {rate:.0f} img/s" if rate else "")


def _last_line(path: Path, tail: int = 1 << 16) -> str:
    """The last non-empty line of the file at ``path`` (of its last ``tail`` bytes), "" if none or unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def failure_reason(job: Any, error: BaseException) -> tuple[str, str]:
    """Why ``job`` failed and where to read more: the last line of its error log (submitit ends it with the job's
    traceback, so that is the error), else the last line of ``error`` (the debug executor keeps no log)."""
    log = getattr(job.paths, "stderr", None)
    reason = _last_line(log) if log is not None else ""
    if not reason:
        text = str(error).strip()
        reason = text.splitlines()[-1].strip() if text else type(error).__name__
    return reason, str(log) if log is not None and log.is_file() else ""


@contextmanager
def study_lock(study_dir: Path) -> Iterator[Path]:
    """Hold ``study_dir/.lock`` (``fcntl.flock``, released by the kernel when this process ends, even killed) for
    one ``fcvit study run``; a second one of the same study raises :class:`StudyError` naming the holder's pid."""
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise StudyError(
                f"study {study_dir.name} is being run by process {holder} (it holds {path}); wait for it to end "
                f"or stop it"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield path


class StudyStopped(Exception):
    """SIGINT or SIGTERM stopped ``fcvit study run`` and its running jobs; they resume when it runs again."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it (130 SIGINT, 143 SIGTERM)."""
        return 128 + int(signal.Signals[self.signal_name])


@contextmanager
def _signals_interrupt() -> Iterator[list[str]]:
    """In the main thread, SIGINT and SIGTERM raise KeyboardInterrupt (SIGTERM would end the process at once and
    leave its jobs training); the yielded list gets the signal's name."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield received
        return

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point this process's stderr (file descriptor 2) at ``path`` while submitit starts its job controllers: they
    inherit it, and a controller stopped by SIGINT prints its traceback there instead of amid the progress."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "a") as log:
            os.dup2(log.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _stat(stat_file: Path) -> list[str]:
    """The fields of a Linux ``/proc/PID/stat`` after the command name (state, parent pid, ...); [] once gone."""
    try:
        return stat_file.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _task_pids(job: Any) -> list[int]:
    """The processes a local submitit job's controller started (its training tasks), from Linux's /proc; [] for
    other jobs or systems. The controller does not wait for them after its SIGKILL, so they may outlive it."""
    process = getattr(job, "_process", None)  # submitit's LocalJob keeps its controller's Popen there
    if process is None:
        return []
    return [int(f.parent.name) for f in Path("/proc").glob("[0-9]*/stat") if _stat(f)[1:2] == [str(process.pid)]]


def _alive(pid: int) -> bool:
    return _stat(Path(f"/proc/{pid}/stat"))[:1] not in ([], ["Z"])


def _stop_jobs(jobs: list, wait: bool, timeout_s: float = 30.0) -> None:
    """Cancel ``jobs`` (submitit: SIGINT to a local job's controller, which stops its tasks; scancel on Slurm) and,
    with ``wait``, give the local ones and their training processes up to ``timeout_s`` to end."""
    tasks = [pid for job in jobs for pid in _task_pids(job)] if wait else []
    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + timeout_s
    while wait and time.monotonic() < deadline and not all(job.done() for job in jobs):
        time.sleep(0.2)
    while time.monotonic() < deadline and any(_alive(pid) for pid in tasks):
        time.sleep(0.05)


def run_study(
    study: Study,
    root: str | Path,
    arms: Sequence[str] | None = None,
    seeds: int | None = None,
    options: ExecutorOptions | None = None,
) -> list[str]:
    """Run what is missing of ``study`` under ``root``; returns the labels of the runs that failed. Raises
    :class:`StudyError` when another process runs the study, :class:`StudyStopped` on SIGINT or SIGTERM."""
    options = options or ExecutorOptions()
    root = Path(root)
    with study_lock(root / study.name), _signals_interrupt() as received:
        active: list = []  # the jobs submitted and not collected yet
        try:
            return _run(study, root, plan_runs(study, root, arms, seeds), options, active)
        except KeyboardInterrupt:
            for s in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stopping short
                if threading.current_thread() is threading.main_thread():
                    signal.signal(s, signal.SIG_IGN)
            _stop_jobs(active, wait=options.kind == "local")
            name = received[0] if received else "SIGINT"
            raise StudyStopped(
                f"stopped by {name}"
                + (f" with {len(active)} job(s) running, now stopped" if active else "")
                + f": rerun `fcvit study run {study.path or study.name}` to resume",
                name,
            ) from None


def _run(study: Study, root: Path, runs: list[Run], options: ExecutorOptions, active: list) -> list[str]:
    """Submit the runs that are not done and collect them (``active``: the jobs running, for the caller to stop)."""
    import submitit
    from tqdm import tqdm

    _write_study_file(study, root)
    todo = [r for r in runs if r.status() != "done"]
    say = tqdm.write
    for r in runs:
        if r.status() == "done":
            say(f"{study.name}/{r.label}: finished, skipped")
        elif r.status() == "restart":
            say(f"{study.name}/{r.label}: killed before its first checkpoint: its run files go, it trains from scratch")
    folder = (root / study.name / ".submitit").resolve()
    say(
        f"fcvit study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run "
        f"({options.kind} executor; job logs in {folder})"
    )
    if not todo:
        return []
    executor = create_executor(options, folder)
    folder.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    bar = tqdm(total=len(todo), desc=f"study {study.name}", unit="run", file=sys.stderr, dynamic_ncols=True)

    def submit(r: Run):  # local and debug executors
        with _stderr_to(folder / "controllers.log"):
            job = executor.submit(StudyJob(r, study, root, options.threads))
        active.append(job)
        return job

    def collect(run: Run, status: str, job) -> None:
        try:
            line = _result_line(run, job.results()[0], status)  # rank 0 of a multi-task job
            (run.run_dir / FAILED).unlink(missing_ok=True)
        except Exception as e:  # a failed run: say why and go on with the others
            failed.append(run.label)
            reason, log = failure_reason(job, e)
            record = json.dumps({"reason": reason, "log": log}, indent=2) + "\n"
            atomic_write_text(run.run_dir / FAILED, record)
            line = f"{run.label}: FAILED: {reason}" + (f" (log: {log})" if log else "")
        active.remove(job)
        say(f"{study.name}/{line}")
        bar.update(1)

    jobs_of = [(r, r.status()) for r in todo]
    try:
        if options.kind == "slurm":  # all at once (one job array), collected as they finish
            with executor.batch():
                jobs = [executor.submit(StudyJob(r, study, root, options.threads)) for r, _ in jobs_of]
            active.extend(jobs)
            by_id = {job.job_id: rs for job, rs in zip(jobs, jobs_of)}
            for job in submitit.helpers.as_completed(jobs, poll_frequency=30):
                collect(*by_id[job.job_id], job)
        else:  # at most `parallel` at once: the runs share this machine's cores
            waiting, running = list(jobs_of), []
            while waiting or running:
                while waiting and len(running) < max(1, options.parallel):
                    r, status = waiting.pop(0)
                    running.append((r, status, submit(r)))
                    bar.set_postfix_str(", ".join(f"{x.label} ({st})" for x, st, _ in running))
                # one at a time: wait on its result (a debug job runs only then); several: poll
                finished = [running[0]] if options.parallel <= 1 else [item for item in running if item[2].done()]
                for item in finished:
                    running.remove(item)
                    collect(*item)
                if not finished:
                    time.sleep(1.0)
    finally:
        bar.close()
    return failed
