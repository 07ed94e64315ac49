"""``python -m visionzoo`` on which one rank fails in its own share of the work, for the torchrun tests of which
process reports an error: with ``batches`` it cannot read its training batches (as when its share of the data holds
a corrupt image), with ``loss`` its training loss is NaN (as on a batch that overflows), with ``forward`` its model's
forward pass refuses its batch (an image that fails only in the model; a classifier's or a VQ-VAE's), with ``memory`` its forward pass runs out of
memory, with ``backward`` its backward pass runs out of memory, with ``log`` (rank 0, which alone writes it) the metrics log cannot be written (a full disk),
with ``fits`` its device has 64 KiB free, too little to train the model.

Usage: python failing_rank_script.py RANK batches|loss|forward|memory|backward|log|fits ARGUMENTS... (the arguments of ``visionzoo``)
"""

import os
import sys

from visionzoo.cli import main
from visionzoo.train import engine
from visionzoo.train.classification import ClassificationTask
from visionzoo.train.reconstruction import ReconstructionTask

if __name__ == "__main__":
    failing, what = sys.argv[1:3]
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
    elif os.environ.get("RANK") == failing and what == "backward":
        real_training_step = ClassificationTask.training_step

        def out_of_memory_in_backward(self, *args, **kwargs):
            def fail(grad):
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory: "
                                   "you tried to allocate 68719476736 bytes.")

            losses = real_training_step(self, *args, **kwargs)
            losses["loss"].register_hook(fail)
            return losses

        ClassificationTask.training_step = out_of_memory_in_backward
    elif os.environ.get("RANK") == failing and what in ("forward", "memory"):
        def failing_forward(self, *args, **kwargs):
            if what == "memory":
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: can't allocate memory: "
                                   "you tried to allocate 68719476736 bytes.")
            raise ValueError(f"an image in rank {failing}'s batch does not fit the model")

        ClassificationTask.training_step = failing_forward
        ReconstructionTask.training_step = failing_forward  # a VQ-VAE's: its quantiser sums over the ranks in forward
    elif os.environ.get("RANK") == failing and what == "log":
        def full_disk(self, record):
            raise OSError(28, "No space left on device", str(self.out / engine.METRICS_NAME))

        engine.Trainer._log = full_disk
    elif os.environ.get("RANK") == failing and what == "fits":
        import visionzoo.train.task

        visionzoo.train.task.available_memory = lambda: 2**16
    raise SystemExit(main(sys.argv[3:]))
