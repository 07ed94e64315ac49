"""Process-group set-up for ``torchrun``, and a resumable, sharded batch order."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# re-exported: they live in visionzoo.distributed, which the layers use too
from visionzoo.distributed import RELEASE_WAIT_SECONDS, collective  # noqa: F401
from visionzoo.utils import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # the process group was made by init_distributed, which close_distributed ends

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# How long a rank waits for the others in a collective. Rank 0 alone evaluates while the others wait, and a
# detector's val split on a CPU takes longer than torch's default 30 minutes; torchrun stops the other ranks
# when one fails, so this is no failure detector.
PEER_WAIT = timedelta(hours=24)


def requested_world_size() -> int:
    """The number of processes ``torchrun`` started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_rank() -> int:
    """This process's rank among those ``torchrun`` started (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_process_rank() -> int:
    """This process's rank among those ``torchrun`` started on this machine (0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses NCCL when the device is CUDA, gloo otherwise. ``device`` None picks CUDA when available.
    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) needs no process group.
    """
    world_size = requested_world_size()
    rank = process_rank()
    local_rank = local_process_rank()
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        gpus, processes = torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
        if processes > gpus:  # each rank checks, so the first reports it; the others' set_device or NCCL fail
            raise every_rank(ValueError(
                f"torchrun started {processes} processes on this machine, but it has {gpus} GPU"
                f"{'' if gpus == 1 else 's'}, and each process trains on a GPU of its own (NCCL takes one per "
                f"process): give torchrun --nproc_per_node {gpus}, or --device cpu"))
        torch.cuda.set_device(local_rank)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo", timeout=PEER_WAIT)
    return DistInfo(rank, world_size, local_rank, target, owns_group)


def close_distributed(info: DistInfo) -> None:
    """End the process group :func:`init_distributed` made, once every rank is done with it (PyTorch asks for
    ``destroy_process_group`` before a process exits); one the caller made is left to the caller."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class PeerFailed(RuntimeError):
    """Raised on the other ranks when one fails where they would wait for it (rank 0 in work it alone does, a rank
    that cannot load its batch or whose loss is not finite: :func:`raise_first_failure`, :func:`mean_over_ranks`); that
    rank raises (and reports) the error."""


# gloo's words for a collective whose peer process is gone (it stopped on its own error, or was killed).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def peer_gone(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process of the group is gone: under torchrun
    that process reports why it stopped (or torchrun reports how), where no step could first agree on it (a rank
    out of memory in its forward or backward pass, while the others wait for it in a collective of the model's
    forward pass, of the step, or of DDP's gradients)."""
    return requested_world_size() > 1 and isinstance(error, RuntimeError) and any(
        words in str(error) for words in PEER_GONE)


T = TypeVar("T")

# The attribute that names the rank on whose own share of the work an error was raised (see own_share); None marks
# an error that every rank raises alike.
_OWN_RANK = "_visionzoo_own_rank"


@contextlib.contextmanager
def own_share(info: DistInfo) -> Iterator[None]:
    """This rank's work on its own share of the data (its batches). An error raised in it may be this rank's alone
    (an unreadable image in its share, a loss that is not finite on its batch): it is marked for
    :func:`reports_error` to have this rank print it, whichever it is."""
    try:
        yield
    except Exception as error:
        if info.distributed and not hasattr(error, _OWN_RANK):
            setattr(error, _OWN_RANK, info.rank)
        raise


def every_rank(error: Exception) -> Exception:
    """``error`` marked as one that every rank raises alike, even in :func:`own_share`: it follows from the
    arguments alone (a batch too small for the model's BatchNorm layers), so the first process reports it."""
    setattr(error, _OWN_RANK, None)
    return error


def reports_error(error: BaseException) -> bool:
    """Whether this process prints ``error``, the user error it stops on.

    Under torchrun every rank sets its run up from the same arguments and files, and so stops on the same error:
    the first process of each machine (``LOCAL_RANK`` 0: each machine's torchrun shows its own processes' output)
    prints it and the others exit quietly, or the user would read the line once per process. An error raised in a
    rank's own share of the work (:func:`own_share`) may be its alone, and that rank prints it; one that rank 0
    alone meets in the work it alone does (:func:`on_main`) reaches the others as :class:`PeerFailed`."""
    return (requested_world_size() == 1 or local_process_rank() == 0
            or getattr(error, _OWN_RANK, None) is not None)


# How long a process that leaves its error to the machine's first process (:func:`reports_error`) waits before it
# exits: torchrun stops every other process once one has exited, and stopped the first one before it printed the
# error it met a moment later (an H100 machine, two processes for its one GPU: the user read no reason at all).
REPORTER_GRACE_SECONDS = 3.0


def leave_error_to_first_process() -> None:
    """Under torchrun, give the first process :data:`REPORTER_GRACE_SECONDS` to print the error this one met too,
    before this one exits; nothing outside torchrun."""
    if requested_world_size() > 1:
        time.sleep(REPORTER_GRACE_SECONDS)


def on_main(info: DistInfo, action: Callable[[], T]) -> T | None:
    """``action()`` on rank 0 alone while the others wait (None on them). When it raises, rank 0 raises its
    error and the others :class:`PeerFailed`, instead of each failing on the connection rank 0 dropped."""
    result, failure = None, None
    if info.is_main:
        try:
            result = action()
        except Exception as error:
            failure = error
    if info.distributed:
        reason = broadcast_text(info, None if failure is None else f"{type(failure).__name__}: {failure}")
        if not info.is_main and reason is not None:
            raise PeerFailed(f"rank 0 failed: {reason}")
    if failure is not None:
        raise failure
    return result


def broadcast_text(info: DistInfo, text: str | None) -> str | None:
    """Rank 0's ``text`` (or None) on every rank; the other ranks' ``text`` is ignored."""
    encoded = b"" if text is None else text.encode()
    length = torch.tensor(-1 if text is None else len(encoded), dtype=torch.int64, device=info.device)
    length = int(collective(dist.broadcast, length, src=0))
    if length <= 0:
        return None if length < 0 else ""
    data = torch.frombuffer(bytearray(encoded), dtype=torch.uint8) if info.is_main else torch.empty(length,
                                                                                                  dtype=torch.uint8)
    data = collective(dist.broadcast, data.to(info.device), src=0)
    return data.cpu().numpy().tobytes().decode()


def rank0_value(info: DistInfo, value: float) -> float:
    """``value`` as rank 0 has it, on every process (the value itself without torchrun)."""
    if not info.distributed:
        return value
    shared = torch.tensor(float(value), dtype=torch.float64, device=info.device)
    return collective(dist.broadcast, shared, src=0).item()


def first_rank_where(info: DistInfo, flag: bool) -> int | None:
    """The lowest rank whose ``flag`` is true, on every rank (each calls this at the same point), or None where no
    rank's is; without torchrun, this process's rank where ``flag`` is."""
    if not info.distributed:
        return info.rank if flag else None
    shared = torch.tensor(info.rank if flag else info.world_size, dtype=torch.int64, device=info.device)
    first = int(collective(dist.all_reduce, shared, op=dist.ReduceOp.MIN))
    return None if first == info.world_size else first


def raise_first_failure(info: DistInfo, failure: Exception | None) -> None:
    """Once every rank has called this at the same point with its error there (None where it has none): raise
    ``failure`` on the lowest rank that has one, which reports it, and :class:`PeerFailed` on the others, which
    would otherwise wait for it in their next collective and then fail on the connection it dropped; return where
    no rank failed. Without torchrun, raise ``failure`` where there is one."""
    _raise_at(info, first_rank_where(info, failure is not None), failure)


def _raise_at(info: DistInfo, failed: int | None, failure: Exception | None) -> None:
    """``failure`` on rank ``failed`` (the lowest that has one), :class:`PeerFailed` on the others; nothing where
    ``failed`` is None."""
    if failed is not None and failed != info.rank:
        raise PeerFailed(f"rank {failed} failed")
    if failure is not None:
        raise failure


def mean_over_ranks(info: DistInfo, values: dict[str, float], failure: Exception | None = None) -> dict[str, float]:
    """``values`` (a step's losses, each of this rank's batch) averaged over the ranks, as one process with the
    global batch logs them; every rank gives the same names in the same order. ``values`` itself without torchrun.

    ``failure``, this rank's error at that point (a loss that is not finite) or None, is raised as
    :func:`raise_first_failure` raises it, in the same all-reduce as the values: each step agrees on its losses and
    on its failures at once."""
    if not info.distributed:
        if failure is not None:
            raise failure
        return values
    failed = [0.0] * info.world_size
    failed[info.rank] = float(failure is not None)
    shared = collective(dist.all_reduce, torch.tensor([*values.values(), *failed], dtype=torch.float64,
                                                      device=info.device)).tolist()
    _raise_at(info, next((rank for rank, flag in enumerate(shared[len(values):]) if flag), None), failure)
    return dict(zip(values, (total / info.world_size for total in shared[:len(values)])))


class EpochBatchSampler(Sampler[list[int]]):
    """The batches of one epoch for one rank, starting at a given step: a pure function of the seed.

    Each epoch shuffles all indices with a generator seeded by ``(seed, epoch)``; the global batch
    of step ``s`` is ``perm[s*B*W : (s+1)*B*W]`` (``B`` the per-process batch size, ``W`` the world
    size) and rank ``r`` takes every ``W``-th index of it from offset ``r``, so ``W`` processes with
    batch ``B`` see exactly the samples of one process with batch ``B*W``. An incomplete last batch
    is dropped. Starting at ``start_step`` skips batches without loading them (exact resume).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size

    @staticmethod
    def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
        return num_samples // (batch_size * world_size)

    def __len__(self) -> int:
        return self.steps_per_epoch(self.num_samples, self.batch_size, self.world_size) - self.start_step

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator)
        global_batch = self.batch_size * self.world_size
        for step in range(self.start_step, self.start_step + len(self)):
            chunk = order[step * global_batch:(step + 1) * global_batch]
            yield chunk[self.rank::self.world_size].tolist()


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (SplitMix64-style), stable across processes and runs."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return state & 0x7FFFFFFFFFFFFFFF


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one training step on one rank."""
    return _mix(seed, rank, step, 1)
