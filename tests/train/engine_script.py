"""A tiny training run for the engine's process-level tests (kill and resume, torchrun).

Usage: python engine_script.py OUT [--steps N] [--batch-size B] [--kill-at STEP] [--kill-in-save N]
[--resume] [--dropout P] [--precision bf16|fp32] [--final FILE] [--minutes M [--skewed-timing]] [--prepared-in DIR]
[--count-all-reduces FILE]
On ranks other than 0, any write into the run folder raises.
"""

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

import visionzoo.checkpoint
from visionzoo.train import TrainConfig
from visionzoo.train.classification import ClassificationTask
from visionzoo.train.engine import Trainer


class StepClock:
    """A stand-in for the engine's ``time`` module whose clock moves ``tick`` seconds at each reading, so a time
    budget gives the same steps however busy the machine is."""

    def __init__(self, tick: float):
        self.tick, self.now = tick, 0.0

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


class Blobs(Dataset):
    """Two classes of 8×8 noise images that differ in brightness."""

    classes = ["dark", "bright"]

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=generator)
        self.images = (torch.rand(n, 1, 8, 8, generator=generator) + self.labels.view(-1, 1, 1, 1)) / 2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


class PreparedAtFirstUse(Blobs):
    """Blobs that prepare themselves at first use, as R-CNN's proposals do: from the cache in ``folder`` when it is
    there, else computed (one second; the rank is noted in ``folder/computed_by``) and cached."""

    def __init__(self, n: int, seed: int, folder: str) -> None:
        super().__init__(n, seed)
        self.folder = Path(folder)
        self.ready = False

    def __getitem__(self, index: int):
        if not self.ready:
            cache = self.folder / "cache"
            if not cache.exists():
                with open(self.folder / "computed_by", "a") as handle:
                    handle.write(os.environ.get("RANK", "0") + "\n")
                time.sleep(1.0)
                (self.folder / f"cache.{os.getpid()}.tmp").write_text("prepared")
                (self.folder / f"cache.{os.getpid()}.tmp").replace(cache)
            self.ready = True
        return super().__getitem__(index)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--kill-in-save", type=int, help="kill during the N-th checkpoint write")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--ema-decay", type=float, default=0.9)
    parser.add_argument("--final", help="write this process's final weights here (%%r: the rank)")
    parser.add_argument("--minutes", type=float, help="a time budget instead of --steps")
    parser.add_argument("--skewed-timing", action="store_true",
                        help="each rank times its steps as (rank + 1) times slower, as busy machines differ")
    parser.add_argument("--prepared-in", help="the training set prepares itself at first use, cached in this folder")
    parser.add_argument("--count-all-reduces", help="write the all-reduces called between the starts of consecutive "
                                                    "training steps here, as a JSON list (%%r: the rank)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.kill_in_save is not None:
        real_save_file = visionzoo.checkpoint.save_file
        calls = []

        def save_then_die(tensors, path, metadata=None):
            calls.append(path)
            real_save_file(tensors, path, metadata=metadata)
            if len(calls) == args.kill_in_save:
                with open(path, "r+b") as handle:  # a half-written temporary file
                    handle.truncate(os.path.getsize(path) // 2)
                os.kill(os.getpid(), signal.SIGKILL)

        visionzoo.checkpoint.save_file = save_then_die

    if args.skewed_timing:
        real_seconds_per_step = Trainer._seconds_per_step
        slowdown = int(os.environ.get("RANK", "0")) + 1

        def skewed_seconds_per_step(self, *a, **kw):
            return real_seconds_per_step(self, *a, **kw) * slowdown

        Trainer._seconds_per_step = skewed_seconds_per_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Dropout(args.dropout), nn.Linear(32, 2))
    config = TrainConfig(out=args.out, batch_size=args.batch_size, max_steps=None if args.minutes else args.steps,
                         minutes=args.minutes, lr=5e-3,
                         precision=args.precision, ema_decay=args.ema_decay, checkpoint_every=5,
                         resume=args.resume, progress=False)
    train_set = Blobs(256, 0) if args.prepared_in is None else PreparedAtFirstUse(256, 0, args.prepared_in)
    trainer = Trainer(ClassificationTask(Blobs.classes), model, train_set, Blobs(64, 1), config)

    if args.kill_at is not None:
        real_step = trainer._train_step

        def step_or_die(batch, step):
            if step == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(batch, step)

        trainer._train_step = step_or_die
    if args.count_all_reduces:
        calls, at_step_starts = [0], []
        real_all_reduce, real_train_step = torch.distributed.all_reduce, trainer._train_step

        def counted_all_reduce(*a, **kw):
            calls[0] += 1
            return real_all_reduce(*a, **kw)

        def noted_step(batch, step):
            at_step_starts.append(calls[0])
            return real_train_step(batch, step)

        torch.distributed.all_reduce, trainer._train_step = counted_all_reduce, noted_step
    if not trainer.dist.is_main:
        def refuse(*_args, **_kwargs):
            raise AssertionError(f"rank {trainer.dist.rank} tried to write into the run folder")

        visionzoo.checkpoint.save_file = refuse
        trainer._log = refuse
    trainer.fit()
    assert not torch.distributed.is_initialized(), "fit left its process group for the interpreter's exit to end"
    if args.count_all_reduces:
        Path(args.count_all_reduces.replace("%r", str(trainer.dist.rank))).write_text(
            json.dumps([after - before for before, after in zip(at_step_starts, at_step_starts[1:])]))
    if args.final:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  args.final.replace("%r", str(trainer.dist.rank)))


if __name__ == "__main__":
    main()
