"""``python -m visionzoo`` on which one rank cannot read its training batches, as when its share of the data holds a
corrupt image: for the torchrun tests of which process reports an error.

Usage: python failing_rank_script.py RANK ARGUMENTS... (the arguments of ``visionzoo``)
"""

import os
import sys

from visionzoo.cli import main
from visionzoo.train import engine

if __name__ == "__main__":
    failing = sys.argv[1]
    if os.environ.get("RANK") == failing:
        def unreadable(self, indices):
            raise ValueError(f"image {indices[0]}.png in rank {failing}'s share cannot be read")

        engine.Batches.__getitem__ = unreadable
    raise SystemExit(main(sys.argv[2:]))
