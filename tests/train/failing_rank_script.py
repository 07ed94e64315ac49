"""``python -m visionzoo`` on which one rank fails in its own share of the work, for the torchrun tests of which
process reports an error: with ``batches`` it cannot read its training batches (as when its share of the data holds
a corrupt image), with ``loss`` its training loss is NaN (as on a batch that overflows), with ``log`` (rank 0, which
alone writes it) the metrics log cannot be written (a full disk).

Usage: python failing_rank_script.py RANK batches|loss|log ARGUMENTS... (the arguments of ``visionzoo``)
"""

import os
import sys

from visionzoo.cli import main
from visionzoo.train import engine
from visionzoo.train.classification import ClassificationTask

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
    elif os.environ.get("RANK") == failing and what == "log":
        def full_disk(self, record):
            raise OSError(28, "No space left on device", str(self.out / engine.METRICS_NAME))

        engine.Trainer._log = full_disk
    raise SystemExit(main(sys.argv[3:]))
