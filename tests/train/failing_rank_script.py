"""``python -m visionzoo`` on which one rank fails in its own share of the work, for the torchrun tests of which
process reports an error: with ``batches`` it cannot read its training batches (as when its share of the data holds
a corrupt image), with ``loss`` its training loss is NaN (as on a batch that overflows), with ``log`` (rank 0, which
alone writes it) the metrics log cannot be written (a full disk), with ``memory`` its training step runs out of
memory. RANK ``all`` fails every rank.

Usage: python failing_rank_script.py RANK|all batches|loss|log|memory ARGUMENTS... (the arguments of ``visionzoo``)
"""

import os
import sys

from visionzoo.cli import main
from visionzoo.train import engine
from visionzoo.train.classification import ClassificationTask

if __name__ == "__main__":
    failing, what = sys.argv[1:3]
    if failing == "all":
        failing = os.environ.get("RANK")
    if os.environ.get("RANK") == failing and what == "batches":
        def unreadable(self, indices):
            raise ValueError(f"image {indices[0]}.png in rank {failing}'s share cannot be read")

        engine.Batches.__getitem__ = unreadable
    elif os.environ.get("RANK") == failing and what == "loss":
        real_training_step = ClassificationTask.training_step

        def nan_loss(self, *args, **kwargs):
            losses = real_training_step(self, *args, **kwargs)
            return {**losses, "loss": losses["loss"] * float("nan")}

        ClassificationTask.training_step = nan_loss
    elif os.environ.get("RANK") == failing and what == "memory":
        def out_of_memory(self, *args, **kwargs):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                               "tried to allocate 68719476736 bytes.")

        ClassificationTask.training_step = out_of_memory
    elif os.environ.get("RANK") == failing and what == "log":
        def full_disk(self, record):
            raise OSError(28, "No space left on device", str(self.out / engine.METRICS_NAME))

        engine.Trainer._log = full_disk
    raise SystemExit(main(sys.argv[3:]))
