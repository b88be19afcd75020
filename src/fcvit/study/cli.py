"""``fcvit study run`` and ``fcvit study report``."""

from __future__ import annotations

import argparse
import sys

from ..errors import int_between, non_negative_int, positive_int
from .study import MAX_SEEDS


def run_run(args: argparse.Namespace) -> int:
    from .runner import ExecutorOptions, StudyStopped, run_study
    from .study import load_study

    study = load_study(args.study)
    options = ExecutorOptions(
        kind=args.executor,
        threads=args.threads,
        parallel=args.parallel,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        timeout_min=args.timeout,
    )
    try:
        failed = run_study(study, args.root, args.arms, args.seeds, options)
    except StudyStopped as e:
        print(f"fcvit study run: {e}", file=sys.stderr)
        return e.exit_code
    if failed:
        print(f"fcvit study run: {len(failed)} run(s) failed: {', '.join(failed)}; rerun to retry", file=sys.stderr)
        return 1
    print(f"study {study.name} complete: fcvit study report {args.root}/{study.name}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from .report import report_study

    result = report_study(args.study_dir, args.output, args.seeds)
    print(result["table"], end="")
    print(f"wrote {', '.join(result['files'])} to {result['output']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study",
        help="re-measure a claim: a grid of training runs (arms x seeds) through submitit, and its report",
        description="A study (configs/studies/*.yaml) is a list of arms, each a set of `fcvit train` config keys, "
        "times seeds. Every run is an ordinary run directory ROOT/STUDY/ARM/seedK; rerunning `fcvit study run` "
        "skips finished runs, resumes killed ones from their last checkpoint and restarts those killed before "
        "their first. One `fcvit study run` of a study at a time; Ctrl-C or SIGTERM stops it and its runs.",
    )
    sub = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")

    r = sub.add_parser("run", help="run what is missing of a study (finished runs are skipped, killed ones resumed)")
    r.add_argument("study", metavar="STUDY.yaml", help="the study file")
    r.add_argument("--arms", nargs="+", metavar="NAME", help="run these arms only (default: all)")
    r.add_argument(
        "--seeds",
        type=int_between(1, MAX_SEEDS, f" (a study of {MAX_SEEDS} seeds per arm runs for months on one machine)"),
        metavar="N",
        help="seeds per arm (default: the study's)",
    )
    r.add_argument("--root", default="studies", help="parent of study directories [default: studies]")
    r.add_argument(
        "--executor",
        choices=("local", "slurm", "debug"),
        default="local",
        help="submitit executor: 'local' (subprocesses here), 'slurm' (one job array, DDP per run), "
        "'debug' (in this process, pdb on an error) [default: local]",
    )
    r.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch threads per run (0: torch's default) [default: 0]"
    )
    r.add_argument("--parallel", type=positive_int, default=1, help="runs at once with the local executor [default: 1]")
    r.add_argument("--nodes", type=int, default=1, help="nodes per run (slurm) [default: 1]")
    r.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node, one DDP task each [default: 0]")
    r.add_argument(
        "--tasks-per-node", type=int, default=0, help="DDP tasks per node [default: one per GPU, 1 without GPUs]"
    )
    r.add_argument("--cpus-per-task", type=int, help="CPUs per task (slurm)")
    r.add_argument("--partition", help="Slurm partition")
    r.add_argument("--timeout", type=int, default=24 * 60, help="minutes per job; slurm requeues it [default: 1440]")
    r.set_defaults(func=run_run)

    s = sub.add_parser(
        "report",
        help="per arm mean ± std over seeds; per comparison the difference, its 95%% CI, the minimum detectable "
        "difference and a verdict against the paper's claim; plots",
    )
    s.add_argument("study_dir", metavar="STUDY_DIR", help="the study's directory (ROOT/STUDY)")
    s.add_argument(
        "--output", help="folder of results.csv, runs.csv, results.md and the plots [default: STUDY_DIR/report]"
    )
    s.add_argument(
        "--seeds",
        type=positive_int,
        metavar="N",
        help="count the first N seeds of every arm only (seed0..seed<N-1>), e.g. the 3-seed table of an 8-seed "
        "study [default: every finished seed]",
    )
    s.set_defaults(func=run_report)
