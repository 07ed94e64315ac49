"""Argument types shared by the benchmark scripts: a bad count or output path is refused when the arguments
are parsed (argparse's one-line error, exit status 2), not by a traceback after minutes of measuring, nor
by a run of zero steps written out as a result."""

from __future__ import annotations

import argparse
from pathlib import Path

from visionzoo.cli import positive_float, positive_int

__all__ = ["at_least_two", "output_file", "positive_float", "positive_int"]


def output_file(text: str) -> Path:
    """A file to write the result into: not a folder, not inside a file (a missing folder is created)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the .json file to write")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
    return path


def at_least_two(text: str) -> int:
    """A step count whose first step is not timed: at least one more to time."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 (the first step is not timed), got {text}")
    return value
