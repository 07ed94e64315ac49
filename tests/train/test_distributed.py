"""The collectives of visionzoo.train.distributed, between two processes on gloo as torchrun on a CPU runs them, and
which process reports an error."""

import textwrap

import pytest
import torch

from visionzoo.train.distributed import DistInfo, every_rank, own_share, reports_error

RANKS_WORK = textwrap.dedent("""
    from visionzoo.train.distributed import (DistInfo, broadcast_text, collective, first_rank_where, mean_over_ranks,
                                             rank0_value)

    def work(rank):
        info = DistInfo(rank, 2, rank, torch.device("cpu"))
        held_after = []
        for step in range(200):
            shared = collective(dist.broadcast, torch.tensor(float(rank), dtype=torch.float64), src=0)
            held_after.append(shared._use_count())
            torch.randn(96, 96) @ torch.randn(96, 96)  # work between collectives, as a training step does
        result = {
            "held_after": held_after,
            "broadcast": float(shared),
            "rank0_value": rank0_value(info, 10.0 + rank),
            "mean": mean_over_ranks(info, {"loss": 1.0 + rank, "acc": 2.0 * rank}),
            "texts": [broadcast_text(info, text if rank == 0 else "ignored")
                      for text in ("PeerFailed: ünïcode ✓", "", None)],
            "first_rank_where": [first_rank_where(info, flag) for flag in (rank == 1, True, False)],
        }
        return result
""")


def test_collectives_agree_and_leave_no_tensor_to_gloos_worker_thread(two_ranks):
    """Gloo's worker thread dropped a finished broadcast's tensor after the caller went on (24 of 200 broadcasts on
    rank 0); a drop still waiting at the interpreter's exit aborted torchrun runs after their work was done
    ("terminate called without an active exception"). ``collective`` returns once the tensor is released."""
    for rank, result in enumerate(two_ranks(RANKS_WORK)):
        assert result["held_after"] == [1] * 200, f"rank {rank}: a collective's tensor still held by gloo"
        assert result["broadcast"] == 0.0
        assert result["rank0_value"] == 10.0
        assert result["mean"] == {"loss": 1.5, "acc": 1.0}
        assert result["texts"] == ["PeerFailed: ünïcode ✓", "", None]
        assert result["first_rank_where"] == [1, 0, None]


def test_the_first_process_alone_reports_an_error_every_rank_meets(monkeypatch):
    """Under torchrun every rank printed an error that each met on the same arguments (a bad --data), so the user
    read it once per process. The first process of a machine reports those; an error in a rank's own batches, which
    may be its alone, that rank reports too, unless it follows from the arguments alone."""
    rank1 = DistInfo(1, 2, 1, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not reports_error(ValueError("dataset path not found: data/"))
    with pytest.raises(ValueError) as own, own_share(rank1):
        raise ValueError("image 3.png cannot be read")
    assert reports_error(own.value)
    with pytest.raises(ValueError) as common, own_share(rank1):
        raise every_rank(ValueError("--batch-size 1: a BatchNorm layer of the model sees one value per channel"))
    assert not reports_error(common.value)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert reports_error(common.value) and reports_error(ValueError("dataset path not found: data/"))
    monkeypatch.delenv("LOCAL_RANK")  # no torchrun
    assert reports_error(ValueError("dataset path not found: data/"))
    monkeypatch.setenv("LOCAL_RANK", "1")  # a launcher's variable left in the environment of one process
    monkeypatch.delenv("WORLD_SIZE")
    assert reports_error(ValueError("dataset path not found: data/"))


def test_more_torchrun_processes_than_gpus_is_one_clear_error_reported_by_the_first(monkeypatch):
    """``torchrun --nproc_per_node 2`` on a one-GPU machine: the second process asked for GPU 1 and died with
    "invalid device ordinal" while the first waited for it in NCCL's set-up. Every process now refuses before
    touching a GPU, saying how many there are, and the first process alone prints it."""
    from visionzoo.train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail("set_device was called"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        for device in ("cuda", None):
            with pytest.raises(ValueError) as refused:
                distributed.init_distributed(device)
            assert str(refused.value) == (
                "torchrun started 2 processes on this machine, but it has 1 GPU, and each process trains on a GPU "
                "of its own (NCCL takes one per process): give torchrun --nproc_per_node 1, or --device cpu")
            assert reports_error(refused.value) == (rank == 0)


def test_as_many_torchrun_processes_as_gpus_each_take_their_own(monkeypatch):
    from visionzoo.train import distributed

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)  # a group the caller made: none is started
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.init_distributed("cuda")
    assert chosen == [1] and info.device == torch.device("cuda", 1) and not info.owns_group
