"""Argument types shared by the benchmark scripts: a bad count or output path is refused when the arguments
are parsed (argparse's one-line error, exit status 2), not by a traceback after minutes of measuring, nor
by a run of zero steps written out as a result."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from visionzoo.checkpoint import atomic_write
from visionzoo.cli import nonnegative_int, positive_float, positive_int

__all__ = ["AppendOnce", "at_least_two", "at_least_two_images", "device_name", "existing_results", "merge_rows", "nonnegative_int", "output_file",
           "output_folder", "positive_float", "positive_int", "results_writer", "write_json"]


def device_name(text: str) -> str:
    """``--device``: cpu, or cuda where a CUDA device is available (refused when parsed, not after minutes of work)."""
    import torch

    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'cpu', 'cuda')")
    if text == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda: no CUDA device is available here")
    return text


def output_file(text: str) -> Path:
    """A .json file to write the result into: not a folder, not inside a file, in a folder this process can write
    (a missing folder is created; the results are renamed into it from a temporary file there), and not an existing
    file it cannot write."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the .json file to write")
    if path.suffix.lower() != ".json":
        raise argparse.ArgumentTypeError(f"{text}: the results are JSON; give a file name ending in .json")
    try:  # a real write, not os.access: that says yes to root on a read-only mount
        if path.exists():
            open(path, "r+b").close()
        _check_folder_writable(text, path.parent)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {error.strerror or error}") from None
    return path


def output_folder(text: str) -> Path:
    """A folder to write result files into: not a file, not inside a file, one this process can write in (a
    missing one is created when the results are written)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give the folder to write the results into")
    try:
        _check_folder_writable(text, path)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {error.strerror or error}") from None
    return path


def _check_folder_writable(text: str, folder: Path) -> None:
    """Raise OSError when no file can be created in ``folder`` or the nearest of its parents that exists, and
    argparse's error when that is a file."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {folder} is a file, not a folder")
    tempfile.TemporaryFile(dir=folder).close()


# Who wrote a results file from before the files said so (write_json's "script"), by the names they were given.
WRITERS = {"attention*.json": "attention.py", "backbones*.json": "backbones.py", "detection_*.json": "detection.py",
           "fid*.json": "fid.py", "generative_*.json": "generative.py", "hipt_slides*.json": "hipt_slides.py",
           "metrics*.json": "metrics.py", "ops*.json": "ops.py", "precision*.json": "precision.py",
           "selective_search*.json": "selective_search.py", "train_*.json": "train_backbones.py",
           "tour_report*.json": "visionzoo tour"}


def results_writer(path: Path, results: dict[str, Any]) -> str | None:
    """The script that wrote ``results`` (read from ``path``): its "script", or for a file written before results
    said so, the script whose files are named like ``path``; None where neither says."""
    if isinstance(results.get("script"), str):
        return results["script"]
    return next((script for pattern, script in WRITERS.items() if fnmatchcase(path.name, pattern)), None)


def existing_results(parser: argparse.ArgumentParser, path: Path, script: str | Path,
                     flag: str = "--out") -> dict[str, Any]:
    """The JSON object in ``path`` that ``script`` (its ``__file__``) adds its sections to or replaces ({} where
    there is none). A file that holds something else, or another script's results, is refused (argparse's one line,
    exit status 2) rather than read with a traceback or replaced."""
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        parser.error(f"{flag} {path} is not a JSON results file ({error}); give another {flag} or move it away")
    if not isinstance(results, dict):
        parser.error(f"{flag} {path} holds a JSON {type(results).__name__}, not the object of results this script "
                     f"writes; give another {flag} or move it away")
    writer = results_writer(path, results)
    if writer not in (None, Path(script).name):
        parser.error(f"{flag} {path} holds the results of {writer}; give another {flag} or move it away")
    return results


class AppendOnce(argparse.Action):
    """``action="append"`` that keeps each value once, in the order first given: a repeated ``--job J`` or
    ``--data D`` runs (and names a file) once, as selective_search.py's ``--methods`` does."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        given = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, given if values in given else [*given, values])


def _at_least_two(text: str, reason: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 {reason}, got {text}")
    return value


def at_least_two(text: str) -> int:
    """A step count whose first step is not timed: at least one more to time."""
    return _at_least_two(text, "(the first step is not timed)")


def at_least_two_images(text: str) -> int:
    """An image count for FID: a covariance needs at least two images (one gives NaN covariances)."""
    return _at_least_two(text, "images (FID's covariances need two)")


def merge_rows(earlier: Any, measured: list[dict[str, Any]], key: str, order: Sequence[str]) -> list[dict[str, Any]]:
    """``measured`` rows with those of ``earlier`` (a results file's "rows") whose ``key`` this run did not
    measure, in ``order`` of their ``key`` (unknown keys last): an ``--only`` run replaces its rows, not the file."""
    done = {row[key] for row in measured}
    kept = [row for row in (earlier if isinstance(earlier, list) else [])
            if isinstance(row, dict) and row.get(key) not in done]
    rank = {name: i for i, name in enumerate(order)}
    return sorted(kept + measured, key=lambda row: rank.get(row.get(key), len(rank)))


def write_json(path: Path, data: dict[str, Any], script: str | Path) -> None:
    """``data`` as indented JSON in ``path`` (its folder made), under a "script" key naming ``script`` (the writer's
    ``__file__``), through a temporary file renamed over it: a write stopped half-way (a full disk, Ctrl-C) leaves
    the earlier results, not half of the new ones."""
    text = json.dumps({"script": Path(script).name, **{key: value for key, value in data.items() if key != "script"}},
                      indent=2) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
