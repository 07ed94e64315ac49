"""``visionzoo tour``: train every family on built-in data within one time budget, and report.

The jobs are data: one :class:`TourJob` per family in ``TOUR_JOBS`` (a family adds its row). Each
job trains through the same engine as ``visionzoo train`` for its share of the budget, is
evaluated on the test split, timed at inference and pictured; ``report.md`` and ``report.json``
collect one row per job.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visionzoo.cli import positive_float, register_command
from visionzoo.train.drawing import grid
from visionzoo.train.engine import CHECKPOINT_NAME, PRECISIONS, TrainConfig, autocast_context, prepare_run_dir
from visionzoo.train.run import run_training
from visionzoo.utils import closest

log = logging.getLogger(__name__)

# Training gets this fraction of a job's share; set-up, evaluation and pictures take the rest.
TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class TourJob:
    """One row of the tour: ``model`` trained on ``data`` for ``weight`` shares of the budget.

    ``max_minutes`` caps the job where more time no longer changes the result; ``config`` overrides
    engine settings (batch size, lr, ...), ``options`` are the task's own options. ``teacher_job``
    names an earlier job whose trained model this one distils from (DeiT).
    """

    name: str
    model: str
    data: str
    weight: float = 1.0
    max_minutes: float | None = None
    img_size: int | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    teacher_job: str | None = None


_DIGITS32 = dict(data="digits", img_size=32, config={"batch_size": 64, "lr": 1e-3})
TOUR_JOBS: list[TourJob] = [
    TourJob("faster-rcnn-shapes", "fasterrcnn_shapes", "shapes", weight=1.5, max_minutes=3.0, config={"batch_size": 8}),
    TourJob("resnet18-digits", "resnet18", "digits", max_minutes=2.0, img_size=32, config={"batch_size": 64, "lr": 2e-3}),
    TourJob("vit-digits", "vit_tiny_patch8_32", max_minutes=2.0, model_args={"global_pool": "avg"}, **_DIGITS32),
    TourJob("deit-distilled-digits", "deit_tiny_distilled_patch8_32", max_minutes=2.0, teacher_job="resnet18-digits",
            options={"teacher": "resnet18", "distillation": "hard"}, **_DIGITS32),
    TourJob("swin-digits", "swin_tiny_patch2_window4_32", max_minutes=2.0, **_DIGITS32),
    TourJob("convnext-digits", "convnext_atto_32", max_minutes=2.0, **_DIGITS32),
]


def job_minutes(jobs: list[TourJob], minutes: float) -> list[float]:
    """Each job's share of ``minutes`` by weight, capped by its ``max_minutes``."""
    total_weight = sum(job.weight for job in jobs)
    shares = [minutes * job.weight / total_weight for job in jobs]
    return [min(share, job.max_minutes) if job.max_minutes else share for job, share in zip(jobs, shares)]


def run_job(job: TourJob, minutes: float, out: Path, precision: str = "auto",
            progress: bool = True) -> dict[str, Any]:
    """Train, evaluate on the test split, time and picture one job; its report row."""
    config = TrainConfig(out=str(out / job.name), minutes=minutes * TRAIN_FRACTION, precision=precision,
                         overwrite=True, progress=progress, checkpoint_every=10**9, **job.config)
    options = dict(job.options)
    if job.teacher_job is not None:
        teacher_checkpoint = out / job.teacher_job / CHECKPOINT_NAME
        if not teacher_checkpoint.is_file():
            raise ValueError(f"tour job {job.name} distils from {job.teacher_job}, which has not run: "
                             f"no {teacher_checkpoint}; run both (--only {job.teacher_job} --only {job.name})")
        options["teacher_checkpoint"] = str(teacher_checkpoint)
    setup, result = run_training(job.model, job.data, config, job.img_size, job.model_args, options)
    task, model = setup.task, setup.model.eval()
    test = setup.splits["test"]
    autocast = autocast_context(torch.device("cpu"), precision)
    with torch.no_grad():
        metrics = task.evaluate(model, test, 128, autocast)
    samples = [test[i] for i in range(min(64, len(test)))]
    images = torch.stack([image for image, _ in samples])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        predictions = task.predict(model, images, autocast)
        best = min(best, time.perf_counter() - start)
    pictures = grid([task.draw(image, p, target) for (image, target), p in list(zip(samples, predictions))[:12]])
    picture_path = out / job.name / "predictions.png"
    pictures.save(picture_path)
    return {
        "name": job.name,
        "model": job.model,
        "task": task.name,
        "dataset": f"{job.data} {setup.run_meta.get('img_size', '')}px".strip(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(result.train_seconds, 1),
        "steps": result.steps,
        "train_samples_per_s": round(result.samples_per_second, 1),
        "metric": task.metric,
        "value": metrics[task.metric],
        "split": "test",
        "test_metrics": metrics,
        "inference_images_per_s": round(len(samples) / best, 1),
        "pictures": [str(p.relative_to(out)) for p in (picture_path, out / job.name / "loss.png") if p.exists()],
    }


def write_report(rows: list[dict[str, Any]], out: Path, minutes: float) -> str:
    """``report.json`` and ``report.md`` in ``out``; returns the markdown table."""
    (out / "report.json").write_text(json.dumps({"budget_minutes": minutes, "rows": rows}, indent=2))
    header = "| model | task | data | params | train s | test metric | value | inference img/s |\n"
    header += "|---|---|---|---:|---:|---|---:|---:|\n"
    table = header + "".join(
        f"| {r['model']} | {r['task']} | {r['dataset']} | {r['parameters'] / 1e6:.2f} M | {r['train_seconds']:.0f} "
        f"| {r['metric']} | {r['value']:.4f} | {r['inference_images_per_s']:.0f} |\n" for r in rows
    )
    pictures = "".join(f"\n### {r['name']}\n\n" + "".join(f"![{p}]({p})\n" for p in r["pictures"]) for r in rows)
    (out / "report.md").write_text(
        f"# visionzoo tour\n\nEvery family trained from scratch on built-in data within {minutes:g} minutes "
        f"on this machine, evaluated on the test split.\n\n{table}{pictures}"
    )
    return table


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=positive_float, default=13.0, help="total budget (default 13)")
    parser.add_argument("--out", default="runs/tour", help="report folder (default runs/tour)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--only", action="append", help="run only this job (repeatable); see --list")
    parser.add_argument("--list", action="store_true", help="list the jobs and exit")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 where the CPU/GPU runs it natively, else fp32")
    parser.add_argument("--no-progress", action="store_true")


@register_command("tour", help="train and evaluate every family on built-in data; write a report", arguments=_arguments)
def tour_command(args: argparse.Namespace) -> int:
    jobs = TOUR_JOBS
    if args.list:
        for job, minutes in zip(jobs, job_minutes(jobs, args.minutes)):
            print(f"{job.name:<24} {job.model:<20} {job.data:<8} {minutes:5.1f} min")
        return 0
    if args.only:
        names = {job.name for job in jobs}
        for name in args.only:
            if name not in names:
                raise ValueError(f"no tour job {name!r}; closest: {closest(name, names)}")
        jobs = [job for job in jobs if job.name in args.only]
    out = prepare_run_dir(args.out, resume=False, overwrite=args.overwrite)
    rows = []
    for job, minutes in zip(jobs, job_minutes(jobs, args.minutes)):
        print(f"[tour] {job.name}: {job.model} on {job.data}, {minutes:.1f} min")
        rows.append(run_job(job, minutes, out, args.precision, progress=not args.no_progress))
    print(write_report(rows, out, args.minutes))
    print(f"report: {out / 'report.md'}")
    return 0

