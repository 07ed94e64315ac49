"""Pictures of a run: the loss curve from ``metrics.jsonl``, a detector's precision–recall curves."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from visionzoo.metrics.coco import NO_GROUND_TRUTH  # noqa: E402

_NOT_LOSSES = {"step", "epoch", "lr", "samples_per_s", "split", "images_scored", "split_images", "note"}


def plot_metrics(metrics_path: str | Path, out_path: str | Path) -> Path:
    """Draw every logged loss against the step, and the validation metrics on a second panel (those that are
    COCO's -1 at every evaluation, metrics without ground truth, left out; labelled as on the training images where
    the val records carry a note, see :func:`~visionzoo.data.same_images_note`)."""
    train, val = [], []
    for line in Path(metrics_path).read_text().splitlines():
        record = json.loads(line)
        (val if record.get("split") == "val" else train).append(record)
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(11 if val else 6, 4), squeeze=False)
    ax = axes[0, 0]
    values = []
    for key in sorted({k for r in train for k in r} - _NOT_LOSSES):
        points = [(r["step"], r[key]) for r in train if key in r]
        ax.plot(*zip(*points), label=key, linewidth=1)
        values += [value for _, value in points]
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    _loss_scale(ax, values)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if val:
        ax = axes[0, 1]
        for key in sorted({k for r in val for k in r} - _NOT_LOSSES):
            points = [(r["step"], r[key]) for r in val if key in r]
            if all(value == NO_GROUND_TRUTH for _, value in points):
                continue  # not a score: e.g. map_large on data without large objects
            ax.plot(*zip(*points), marker="o", label=key)
        ax.set_xlabel("step")
        # a run on one COCO .json file, which serves every split, notes so in its val records
        ax.set_ylabel("validation (on the training images)" if any("note" in r for r in val) else "validation")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


def _loss_scale(ax: plt.Axes, values: list[float]) -> None:
    """A log y axis for ``values``; symmetric-log where some are 0 or negative (a hinge GAN loss, a loss that is not
    on yet), which a log axis would leave out, linear within the power of ten below the smallest nonzero magnitude
    (a decade tick inside the linear band would be drawn over the 0 tick)."""
    magnitudes = [abs(v) for v in values if v != 0 and math.isfinite(v)]
    if all(v > 0 for v in values) or not magnitudes:
        ax.set_yscale("log" if magnitudes else "linear")
    else:
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(min(magnitudes))))


def plot_precision_recall(recall: Sequence[float], precision: Sequence[Sequence[float]], names: Sequence[str],
                          ap: Sequence[float], out_path: str | Path, iou_threshold: float = 0.5) -> Path:
    """One precision–recall curve per class (``precision`` [K][R] at the recall points ``recall`` [R]),
    labelled with its name and AP; classes without ground truth (AP -1) are left out."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, row, value in zip(names, precision, ap):
        if value >= 0:
            ax.plot(recall, row, label=f"{name} (AP@{iou_threshold:g} {value:.3f})", linewidth=1.5)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision–recall at IoU {iou_threshold:g}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
