"""visionzoo: the vision models of the notes, implemented from scratch in PyTorch."""

__version__ = "0.1.0"
