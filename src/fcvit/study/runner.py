"""``fcvit study run``: every run of a study through submitit, resumable by running the command again.

A run is an ordinary ``fcvit train`` run directory, ``ROOT/<study>/<arm>/seed<k>/``, trained from the arm's
config (``ROOT/<study>/<arm>/train.yaml``) with ``--seed k``. Before each run the job looks at its directory:
``summary.json`` means finished (skipped), ``checkpoint-last.pth`` without it means killed (resumed with
``--resume``, which continues at the checkpoint's step with every RNG restored), nothing means new. The analyses
of the study then run on the run's final weights, each skipped when its JSON exists. So rerunning the command
after a kill, a reboot or a Slurm time-out completes the study, and a finished study costs nothing to rerun.

Executors (submitit's): ``local`` runs one run at a time in a subprocess of this machine (logs under
``ROOT/<study>/.submitit/``); ``slurm`` submits every run as one job array, each run trained with DDP on
``--nodes x --gpus-per-node`` tasks from submitit's environment (requeued from its checkpoint on time-out);
``debug`` runs in this process (submitit's DebugExecutor: no subprocess, pdb on an error).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..engine.atomic import atomic_write, atomic_write_text
from ..engine.jsonio import write_json
from ..engine.logger import format_duration
from .study import Study, StudyError

__all__ = ["EXECUTORS", "Run", "plan_runs", "run_study"]

EXECUTORS = ("local", "slurm", "debug")
SUMMARY, LAST, BEST = "summary.json", "checkpoint-last.pth", "checkpoint-best.pth"
STUDY_FILE = "study.json"


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
        """``done``, ``resume`` (killed: a checkpoint, no summary), ``train`` (new) or ``analyse`` (trained)."""
        if self.train_argv is not None and not (self.run_dir / SUMMARY).is_file():
            return "resume" if (self.run_dir / LAST).is_file() else "train"
        if not all(self.analysis_done(kind) for kind in self.analyses):
            return "analyse"
        return "done"


class StudyJob:
    """What a submitit job runs for one :class:`Run`: train (fresh or resumed, as the run directory says), then
    the analyses on rank 0. ``checkpoint`` makes submitit requeue it after a Slurm time-out or preemption."""

    def __init__(self, run: Run, study: Study, root: Path, threads: int = 0):
        self.run, self.study, self.root, self.threads = run, study, root, threads

    def __call__(self) -> dict[str, Any]:
        from ..cli import main
        from ..runtime import set_threads

        run = self.run
        if self.threads:
            set_threads(self.threads)
        rank = _export_distributed_environment()
        if run.train_argv is not None and not (run.run_dir / SUMMARY).is_file():
            resume = ["--resume", str(run.run_dir / LAST)] if (run.run_dir / LAST).is_file() else []
            _call(main, [*run.train_argv, *resume])
        if rank == 0:
            for kind in run.analyses:
                if not run.analysis_done(kind):
                    _call(main, analysis_argv(self.study, self.root, run, kind))
        summary = run.trained_dir / SUMMARY
        return json.loads(summary.read_text()) if summary.is_file() else {}

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(StudyJob(self.run, self.study, self.root, self.threads))


def _call(main, argv: list[str]) -> None:
    code = main(argv)
    if code:
        raise RuntimeError(f"`fcvit {' '.join(argv[:2])}` exited with code {code} (its error is in this job's log)")


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
    what = {"resume": "resumed and trained", "train": "trained", "analyse": "analysed", "done": "finished"}[status]
    return f"{run.label}: {what}: {text}, {wall}" + (f", {rate:.0f} img/s" if rate else "")


def run_study(
    study: Study,
    root: str | Path,
    arms: Sequence[str] | None = None,
    seeds: int | None = None,
    options: ExecutorOptions | None = None,
) -> list[str]:
    """Run what is missing of ``study`` under ``root``; returns the labels of the runs that failed."""
    import submitit
    from tqdm import tqdm

    options = options or ExecutorOptions()
    root = Path(root)
    runs = plan_runs(study, root, arms, seeds)
    _write_study_file(study, root)
    todo = [r for r in runs if r.status() != "done"]
    say = tqdm.write
    for r in runs:
        if r.status() == "done":
            say(f"{study.name}/{r.label}: finished, skipped")
    folder = (root / study.name / ".submitit").resolve()
    say(
        f"fcvit study {study.name}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run "
        f"({options.kind} executor; job logs in {folder})"
    )
    if not todo:
        return []
    executor = create_executor(options, folder)
    failed: list[str] = []
    bar = tqdm(total=len(todo), desc=f"study {study.name}", unit="run", file=sys.stderr, dynamic_ncols=True)

    def collect(run: Run, status: str, job) -> None:
        try:
            line = _result_line(run, job.results()[0], status)  # rank 0 of a multi-task job
        except Exception as e:  # a failed run: say so and go on with the others
            failed.append(run.label)
            line = f"{run.label}: FAILED ({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})"
            line += f"; log: {getattr(job.paths, 'stderr', folder)}"
        say(f"{study.name}/{line}")
        bar.update(1)

    jobs_of = [(r, r.status()) for r in todo]
    jobs: list = []
    running: list = []
    try:
        if options.kind == "slurm":  # all at once (one job array), collected as they finish
            with executor.batch():
                jobs = [executor.submit(StudyJob(r, study, root, options.threads)) for r, _ in jobs_of]
            by_id = {job.job_id: rs for job, rs in zip(jobs, jobs_of)}
            for job in submitit.helpers.as_completed(jobs, poll_frequency=30):
                collect(*by_id[job.job_id], job)
        else:  # at most `parallel` at once: the runs share this machine's cores
            waiting, running = list(jobs_of), []
            while waiting or running:
                while waiting and len(running) < max(1, options.parallel):
                    r, status = waiting.pop(0)
                    running.append((r, status, executor.submit(StudyJob(r, study, root, options.threads))))
                    bar.set_postfix_str(", ".join(f"{x.label} ({st})" for x, st, _ in running))
                # one at a time: wait on its result (a debug job runs only then); several: poll
                finished = [running[0]] if options.parallel <= 1 else [item for item in running if item[2].done()]
                for item in finished:
                    running.remove(item)
                    collect(*item)
                if not finished:
                    time.sleep(1.0)
    except KeyboardInterrupt:  # stop the runs of this command too: they resume from their checkpoints next time
        for job in jobs + [item[2] for item in running]:
            job.cancel(check=False)
        raise
    finally:
        bar.close()
    return failed
