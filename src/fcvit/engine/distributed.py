"""Data-parallel set-up from torchrun's environment, and the few collectives training needs.

``torchrun --nproc_per_node N`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) makes :func:`init_distributed` join a process group: NCCL with one
GPU per process when CUDA is available, gloo on CPU. Without those variables it is a single process
and every helper here degrades to the identity.

Failure: a rank that raises exits non-zero; torchrun's agent then stops the other ranks and exits
non-zero itself. Ranks left waiting in a collective on a dead peer fail fast on gloo (connection
closed) and, for a rank that hangs rather than dies, after ``timeout_s`` (:data:`DEFAULT_TIMEOUT_S`);
:func:`peer_failures` turns either into one line, :class:`RankLostError`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import DEFAULT_TIMEOUT_S, RankLostError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistInfo",
    "RankLostError",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "cleanup_distributed",
    "gather_objects",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "peer_failures",
    "pick_device",
]

# How long a rank waits in a collective for the others. Ranks do the same work between collectives (a step,
# a validation pass over an equal shard), so what one rank waits for is the others' lag, not their work: at
# most rank 0's writes (a checkpoint of fcvit_b48 with optimizer and EMA state, ~1.4 GB: seconds to tens of
# seconds) and start-up skew (data-loader workers, torch.compile: tens of seconds). Five minutes is ten times
# that, and a hung rank stops the job in 5 minutes instead of torch's 30. --dist-timeout raises it.

# gloo's messages for a peer that stopped answering (timeout) or went away (connection closed/reset)
_PEER_FAILURE = re.compile(r"Timed out waiting|Connection closed by peer|Connection reset by peer|Broken pipe")


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs: global rank, world size, rank on its node and the device it uses."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(device: str | None = None, local_rank: int = 0) -> torch.device:
    """``'auto'``/None: CUDA (``cuda:local_rank``) if available, else CPU; otherwise the device named."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the torchrun process group if the environment asks for one; pick this process's device.

    ``device``: ``"auto"``/``None`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    Under torchrun each process takes ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = dict(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        if dev.type == "cuda":
            kwargs["device_id"] = dev  # binds NCCL to this GPU (eager init, no guessing)
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


@contextlib.contextmanager
def peer_failures(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Inside: gloo's error for a peer that timed out or went away becomes one-line :class:`RankLostError`."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if not is_distributed() or not _PEER_FAILURE.search(text):
            raise
        reason = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])  # drop gloo's [source:line] prefix
        raise RankLostError(
            f"another rank stopped answering ({reason}); it died or hung for over --dist-timeout {timeout_s:g} s"
        ) from None


def cleanup_distributed() -> None:
    """Leave the process group (call on the success path; after an error just exit non-zero).

    Every rank first waits for the others at a barrier, with the GIL released, so that gloo's worker threads are
    done releasing the tensors of the last collectives before the group goes. PyTorch 2.11's gloo group, freed with
    the DDP reducer, joins those threads while holding the GIL: a worker still releasing a tensor then waits for
    the GIL forever (seen on a rank with nothing to write between its last collective and the end of the run).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on global rank 0 (or without a process group): the only process that writes files."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Sum every value over all ranks (counts, summed losses); identity in a single process.

    Reduce sums and counts, then divide, so ranks holding different numbers of samples weigh right.
    """
    if not is_distributed():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (e.g. a run directory name chosen on rank 0)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (small picklable objects, e.g. RNG states)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    Under DDP each rank updates its running statistics from its own shard; before evaluating or
    saving, all ranks take rank 0's, which are the ones the checkpoint holds.
    """
    if is_distributed():
        for b in module.buffers():
            dist.broadcast(b, src)
