"""``visionzoo tour``: train every family on built-in data within one time budget, and report.

The jobs are data: one :class:`TourJob` per family in ``TOUR_JOBS`` (a family adds its row). Each
job trains through the same engine as ``visionzoo train`` for its share of the budget, is
evaluated on the test split, timed at inference and pictured; ``report.md`` and ``report.json``
collect one row per job. A job that fails is reported as failed (its traceback in ``JOB/error.txt``) and
the tour goes on with the others; the report is rewritten after every job, so an interrupted tour keeps
the rows of the jobs that ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from visionzoo.checkpoint import atomic_write, model_state, read_checkpoint
from visionzoo.cli import USER_ERRORS, add_device_argument, positive_float, positive_int, register_command
from visionzoo.data.slides import ShapeSlides
from visionzoo.train import slides as hipt_slides
from visionzoo.train.drawing import draw_classification, grid
from visionzoo.train.engine import (
    CHECKPOINT_NAME,
    PRECISIONS,
    RUN_MARKER,
    TrainConfig,
    autocast_context,
    prepare_run_dir,
    run_outputs,
)
from visionzoo.train.run import build_setup, first_items, run_training
from visionzoo.train.task import Task
from visionzoo.utils import closest, resolve_device

log = logging.getLogger(__name__)

# Training gets this fraction of a job's share; set-up, evaluation and pictures take the rest.
TRAIN_FRACTION = 0.8
CPU = torch.device("cpu")


@dataclass(frozen=True)
class TourJob:
    """One row of the tour: ``model`` trained on ``data`` for ``weight`` shares of the budget.

    ``max_minutes`` caps the job where more time no longer changes the result; ``config`` overrides
    engine settings (batch size, lr, ...), ``options`` are the task's own options. ``uses`` maps a task
    option to an earlier job whose checkpoint it is given (DeiT's ``teacher_checkpoint``, the VQGAN
    prior's ``tokenizer``); ``weights_from`` names an earlier job whose trained weights this one
    evaluates without training (the sliding window runs R-CNN's network over every window). ``train_images`` and ``eval_images`` limit the training and the
    validation and test images of a slow job (R-CNN's proposals are computed for those alone). ``pipeline`` runs a
    job that is more than one engine run (HIPT's slides: a tile encoder, then a ViT-4K on its features) in place
    of :func:`run_job`, with its arguments.
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
    uses: dict[str, str] = field(default_factory=dict)
    weights_from: str | None = None
    train_images: int | None = None
    eval_images: int | None = None
    pipeline: Callable[..., dict[str, Any]] | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        """The earlier jobs whose weights this one takes (``uses`` and ``weights_from``)."""
        return (*self.uses.values(), *([self.weights_from] if self.weights_from else []))


# HIPT on ShapeSlides, as benchmarks/hipt_slides.py --tiles easy runs it (the README's "HIPT slide-level demo"), in
# a tour's share: the benchmark's slides of easy tiles, the scaled-down ViT-256 trained on single-object tiles for
# ENCODER_SHARE of the training time (or up to its 300 steps), then vit4k_xs on the frozen feature grids for the rest.
ENCODER_SHARE = 0.75
SLIDES_PICTURED = 8


def run_slides_job(job: TourJob, minutes: float, out: Path, precision: str = "auto", progress: bool = True,
                   max_steps: int | None = None, eval_images: int | None = None,
                   device: torch.device = CPU) -> dict[str, Any]:
    """HIPT's slide pipeline (:mod:`visionzoo.train.slides`) in ``minutes``: its report row, as :func:`run_job`'s.

    The tile encoder trains through the engine for ``ENCODER_SHARE`` of the training time, the ViT-4K for the rest;
    ``max_steps`` caps both, ``eval_images`` the validation tiles, the test tiles and the test slides. Its metric is
    the test slides' accuracy; inference times the whole :class:`~visionzoo.models.hipt.HIPT4K` on slide images.
    Both stages train and read on ``device``; the slide images stay in the CPU's memory, their tiles streamed."""
    folder = out / job.name
    seconds = minutes * 60 * TRAIN_FRACTION
    steps = {"encoder": hipt_slides.SCALED_STEPS, "vit4k": hipt_slides.VIT4K_STEPS}
    steps = {name: min(count, max_steps) if max_steps is not None else count for name, count in steps.items()}

    def length(split: str, count: int) -> int:  # --eval-images caps the val and test splits
        return count if split == "train" or eval_images is None else min(count, eval_images)

    tile_size = hipt_slides.TILE_SIZE
    tiles = {split: hipt_slides.encoder_tiles(split, tile_size, length(split, count), 0, **hipt_slides.EASY_TILES)
             for split, count in hipt_slides.ENCODER_TILES.items()}
    config = TrainConfig(out=str(folder), minutes=seconds * ENCODER_SHARE / 60, max_steps=steps["encoder"],
                         batch_size=hipt_slides.ENCODER_BATCH, lr=hipt_slides.SCALED_LR, seed=0, precision=precision,
                         overwrite=True, progress=progress, checkpoint_every=10**9, eval_every=10**9,
                         device=device.type)
    encoder, encoded = hipt_slides.train_encoder(tiles["train"], tiles["val"], config, hipt_slides.SCALED_ENCODER)
    tile_accuracy = hipt_slides.tile_accuracy(encoder, tiles["test"])
    data = {split: ShapeSlides(split, grid_size=hipt_slides.GRID_SIZE, tile_size=tile_size, length=length(split, count),
                               pool_size=hipt_slides.POOLS[split], seed=0, **hipt_slides.EASY_TILES)
            for split, count in hipt_slides.SLIDES.items()}
    features = {split: hipt_slides.encode_pool(encoder, slides)[0] for split, slides in data.items()}
    encoder.reset_classifier(0)  # from here on the encoder gives tile features, as HIPT's ViT-256 does
    train_grids, train_labels, _ = hipt_slides.grids(data["train"], features["train"])
    test_grids, test_labels, _ = hipt_slides.grids(data["test"], features["test"])
    vit4k, vit4k_seconds, vit4k_steps = hipt_slides.train_vit4k(
        train_grids, train_labels, len(data["train"].classes), steps["vit4k"], seconds=seconds * (1 - ENCODER_SHARE),
        device=device)
    accuracy = hipt_slides.accuracy(vit4k, test_grids, test_labels)
    model = hipt_slides.slide_model(encoder, vit4k, tile_size)
    slides_per_s = _time_and_picture_slides(model, data["test"], folder / "predictions.png",
                                            autocast_context(device, precision))
    majority = int(torch.bincount(train_labels, minlength=len(data["train"].classes)).argmax())
    return {
        "name": job.name,
        "model": job.model,
        "task": "slide classification",
        "dataset": f"{job.data} {hipt_slides.GRID_SIZE * tile_size}px",
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(encoded.train_seconds + vit4k_seconds, 1),
        "steps": encoded.steps,
        "vit4k_steps": vit4k_steps,
        "train_samples_per_s": round(encoded.samples_per_second, 1),
        "trained_by": job.name,
        "metric": "accuracy",
        "value": accuracy,
        "split": "test",
        "test_metrics": {"accuracy": accuracy, "tile_accuracy": tile_accuracy,
                         "majority_class_baseline": float((test_labels == majority).float().mean())},
        "test_images": len(data["test"]),
        "test_split_images": hipt_slides.SLIDES["test"],
        "inference_images_per_s": round(slides_per_s, 2),
        "regions_per_image": None,
        "pictures": [f"{job.name}/{name}" for name in PICTURES if (folder / name).exists()],
    }


def best_inference_seconds(infer: Callable[[], Any], repeats: int = 3, enough: float = 10.0) -> tuple[float, Any]:
    """The shortest of ``repeats`` timed calls of ``infer`` and the last call's result; a call of ``enough``
    seconds or more ends the timing (a slow detector: one timing is precise enough)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = infer()
        best = min(best, time.perf_counter() - start)
        if best >= enough:
            break
    return best, result


@torch.inference_mode()
def _time_and_picture_slides(model: torch.nn.Module, slides: ShapeSlides, picture: Path,
                             autocast: Callable[[], Any]) -> float:
    """Slides a second that ``model`` (a :class:`~visionzoo.models.hipt.HIPT4K`) reads end to end under ``autocast``
    (a context factory, the tour's ``--precision``), best of 3 on the first ``SLIDES_PICTURED`` of ``slides``;
    draws them with their predicted and true labels into ``picture``."""
    samples = [slides[i] for i in range(min(SLIDES_PICTURED, len(slides)))]
    images = hipt_slides.normalize(torch.stack([image for image, _ in samples]))  # Tensor[S, 3, G * T, G * T]

    def infer() -> torch.Tensor:  # on the CPU: a GPU's work is done when it returns
        with autocast():
            return model(images).float().softmax(-1).cpu()

    best, probabilities = best_inference_seconds(infer)
    scores, predicted = probabilities.max(-1)
    picture.parent.mkdir(parents=True, exist_ok=True)
    grid([draw_classification(image, [slides.classes[p]], [float(s)], slides.classes[target["label"]])
          for (image, target), p, s in zip(samples, predicted.tolist(), scores)]).save(picture)
    return len(samples) / best


# Selective Search takes ~35 ms an image: 3 minutes of training see fewer than 2,000 images at these
# batch sizes, and R-CNN's evaluation runs a CNN over each of ~270 regions per image.
_PROPOSALS = dict(train_images=2000, eval_images=100)
_DIGITS32 = dict(data="digits", img_size=32, config={"batch_size": 64, "lr": 1e-3})
TOUR_JOBS: list[TourJob] = [
    TourJob("faster-rcnn-shapes", "fasterrcnn_shapes", "shapes", weight=1.5, max_minutes=3.0, config={"batch_size": 8}),
    TourJob("fast-rcnn-shapes", "fastrcnn_shapes", "shapes", weight=1.5, max_minutes=3.0, config={"batch_size": 8},
            **_PROPOSALS),
    TourJob("rcnn-shapes", "rcnn_shapes", "shapes", weight=1.5, max_minutes=3.0, config={"batch_size": 4},
            **_PROPOSALS),
    TourJob("sliding-window-shapes", "sliding_window_shapes", "shapes", weight=0.0, weights_from="rcnn-shapes",
            eval_images=4),
    TourJob("resnet18-digits", "resnet18", "digits", max_minutes=2.0, img_size=32, config={"batch_size": 64, "lr": 2e-3}),
    TourJob("vit-digits", "vit_tiny_patch8_32", max_minutes=2.0, model_args={"global_pool": "avg"}, **_DIGITS32),
    TourJob("deit-distilled-digits", "deit_tiny_distilled_patch8_32", max_minutes=2.0,
            uses={"teacher_checkpoint": "resnet18-digits"}, options={"teacher": "resnet18", "distillation": "hard"},
            **_DIGITS32),
    TourJob("swin-digits", "swin_tiny_patch2_window4_32", max_minutes=2.0, **_DIGITS32),
    TourJob("convnext-digits", "convnext_atto_32", max_minutes=2.0, **_DIGITS32),
    TourJob("vqvae-digits", "vqvae_small", "digits", max_minutes=2.0, img_size=32, config={"batch_size": 64}),
    # The generative rows: a GAN, Image GPT, and both VQGANs with the prior over the VQGAN's codes.
    # Discriminators from a share of each job's steps (about steps 25 and 80 on a bf16 CPU), so that they train for
    # most of the job on any machine: as steps 25 and 80 they trained for 47% and 41% of it on an fp32 AVX2 CPU.
    TourJob("vqgan-digits", "vqgan", "digits", weight=0.7, max_minutes=2.0, img_size=32, options={"disc_start": 0.25}),
    TourJob("vit-vqgan-digits", "vit_vqgan", "digits", weight=0.7, max_minutes=2.0, img_size=32,
            config={"batch_size": 32}, options={"disc_start": 0.35}),
    TourJob("vqgan-prior-digits", "vqgan_transformer", "digits", weight=0.7, max_minutes=2.0,
            uses={"tokenizer": "vqgan-digits"}),
    TourJob("dcgan-digits", "dcgan", "digits", weight=0.7, max_minutes=2.0, img_size=32),
    TourJob("image-gpt-digits", "image_gpt_small", "digits", weight=0.7, max_minutes=2.0, img_size=16),
    # weight 1.75 with the default --minutes 27 leaves the rows above their shares of 24 minutes, as before it came
    TourJob("hipt-slides", "hipt_vit256_small+vit4k_xs", "slides", weight=1.75, max_minutes=2.0,
            pipeline=run_slides_job),
]
# The pictures a run folder may hold: the tour's own, the loss curve, and those of the task's report.
PICTURES = ("predictions.png", "samples.png", "reconstructions.png", "completions.png", "probes.png", "loss.png",
            "pr_curve.png")


def tour_outputs() -> list[str]:
    """The files a tour writes into its folder (relative paths): its report, and in each job's folder the run's
    files, its predictions and its traceback. A job folder's run marker stays with the user's files it holds (the
    job's run replaces it), and a folder left holding only it goes."""
    job_files = [name for name in run_outputs() if name != RUN_MARKER] + ["predictions.png", "error.txt"]
    return [RUN_MARKER, "report.json", "report.md", *(f"{job.name}/{name}" for job in TOUR_JOBS for name in job_files)]


def job_minutes(jobs: list[TourJob], minutes: float) -> list[float]:
    """Each job's share of ``minutes`` by weight, capped by its ``max_minutes``."""
    total_weight = sum(job.weight for job in jobs)
    shares = [minutes * job.weight / total_weight if total_weight else 0.0 for job in jobs]
    return [min(share, job.max_minutes) if job.max_minutes else share for job, share in zip(jobs, shares)]


def run_job(job: TourJob, minutes: float, out: Path, precision: str = "auto", progress: bool = True,
            max_steps: int | None = None, eval_images: int | None = None,
            device: torch.device = CPU) -> dict[str, Any]:
    """Train, evaluate on the test split, time and picture one job on ``device``; its report row.

    ``max_steps`` ends the training earlier than ``minutes`` when reached, so that a run's result does not
    depend on the machine's speed. ``eval_images`` caps the validation and test images (below the job's own cap).
    """
    eval_images = min((cap for cap in (job.eval_images, eval_images) if cap is not None), default=None)
    settings = {**job.config, "max_steps": max_steps} if max_steps is not None else dict(job.config)
    config = TrainConfig(out=str(out / job.name), minutes=minutes * TRAIN_FRACTION, precision=precision,
                         overwrite=True, progress=progress, checkpoint_every=10**9, device=device.type, **settings)
    options = dict(job.options)
    for option, earlier in job.uses.items():
        options[option] = str(_trained_checkpoint(job, earlier, out))
    checkpoint = None if job.weights_from is None else _trained_checkpoint(job, job.weights_from, out)
    if checkpoint is None:
        setup, result = run_training(job.model, job.data, config, job.img_size, job.model_args, options,
                                     train_images=job.train_images, val_images=eval_images)
    else:
        torch.manual_seed(config.seed or 0)
        setup = build_setup(job.model, job.data, job.img_size, job.model_args, options=options)
        setup.model.load_state_dict(model_state(*read_checkpoint(checkpoint)))  # another model's name, same weights
        result = None
    task, model = setup.task, setup.model.to(device).eval()
    test = first_items(setup.splits["test"], eval_images)
    autocast = autocast_context(device, precision)
    with torch.no_grad():
        metrics = task.evaluate(model, test, 128, autocast)
    samples = [test[i] for i in range(min(64, len(test)))]
    images = torch.stack([image for image, _ in samples])
    generates = type(task).predict is Task.predict  # a sampler: timed drawing new images, pictured by its report
    if generates:
        best, _ = best_inference_seconds(lambda: task.sample(model, len(samples), torch.Generator().manual_seed(0),
                                                             autocast))
    else:
        best, predictions = best_inference_seconds(lambda: task.predict(model, images, autocast))
    (out / job.name).mkdir(parents=True, exist_ok=True)
    if not generates:
        pictures = grid([task.draw(image, p, target) for (image, target), p in list(zip(samples, predictions))[:12]])
        pictures.save(out / job.name / "predictions.png")
    return {
        "name": job.name,
        "model": job.model,
        "task": task.name,
        "dataset": f"{job.data} {setup.run_meta.get('img_size', '')}px".strip(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(result.train_seconds, 1) if result else 0.0,
        "steps": result.steps if result else 0,
        "train_samples_per_s": round(result.samples_per_second, 1) if result else 0.0,
        "trained_by": job.weights_from or job.name,
        "metric": task.metric,
        "value": metrics[task.metric],
        "split": "test",
        "test_metrics": metrics,
        "test_images": len(test),
        "test_split_images": len(setup.splits["test"]),
        "inference_images_per_s": round(len(samples) / best, 2),  # samples drawn per second for a sampler
        "regions_per_image": _regions_per_image(model, [image for image, _ in samples[:4]]),
        "pictures": [f"{job.name}/{name}" for name in PICTURES if (out / job.name / name).exists()],
    }


def _check_dependencies(jobs: list[TourJob]) -> None:
    """Refuse, before anything runs, a job whose weights come from a job that this tour runs later or not at all."""
    earlier: set[str] = set()
    for job in jobs:
        for needed in job.needs:
            if needed not in earlier:
                raise ValueError(f"tour job {job.name} uses the weights of {needed}, which this tour does not run "
                                 f"before it; run both (--only {needed} --only {job.name})")
        earlier.add(job.name)


def failed_row(job: TourJob, reason: str) -> dict[str, Any]:
    """The report row of a job that did not finish: ``reason`` says why, in one line."""
    return {"name": job.name, "model": job.model, "dataset": job.data, "failed": reason, "pictures": []}


def _trained_checkpoint(job: TourJob, earlier: str, out: Path) -> Path:
    checkpoint = out / earlier / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise ValueError(f"tour job {job.name} uses the weights of {earlier}, which has not run: no {checkpoint}; "
                         f"run both (--only {earlier} --only {job.name})")
    return checkpoint


def _regions_per_image(model: torch.nn.Module, images: list[torch.Tensor]) -> float | None:
    """How many regions a detector scores per image: its proposals or windows, or the RPN's kept boxes."""
    if hasattr(model, "propose"):
        return round(sum(len(model.propose(image)) for image in images) / len(images), 1)
    rpn = getattr(model, "rpn", None)
    return float(rpn.post_nms_top_n()) if rpn is not None else None  # the model is in eval mode


def write_report(rows: list[dict[str, Any]], out: Path, minutes: float, eval_images: int | None = None,
                 device: str = "cpu") -> str:
    """``report.json`` and ``report.md`` in ``out``; ``device`` names what the jobs ran on (see
    :func:`device_name`). Returns the markdown table."""
    # rewritten after every job, atomically: a tour killed while writing keeps the rows of the jobs done
    report = json.dumps({"budget_minutes": minutes, "eval_images": eval_images, "device": device, "rows": rows},
                        indent=2)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(report))
    split = "the test split" if eval_images is None else f"the first {eval_images} images of the test split"
    # a job's own cap (R-CNN's 100 test images, the sliding window's 4) is below what the sentence says
    fewer = [f"{r['name']} on its first {r['test_images']}" for r in rows if "test_images" in r
             and r["test_images"] < min(eval_images or r["test_split_images"], r["test_split_images"])]
    split += f"; scored on fewer test images: {', '.join(fewer)}" if fewer else ""
    header = "| model | task | data | params | steps | train s | test metric | value | inference img/s | regions/img |\n"
    header += "|---|---|---|---:|---:|---:|---|---:|---:|---:|\n"
    table = header + "".join(_table_row(r) for r in rows)
    pictures = "".join(f"\n### {r['name']}\n\n" + "".join(f"![{p}]({p})\n" for p in r["pictures"]) for r in rows)
    markdown = (
        f"# visionzoo tour\n\nEvery family trained from scratch on built-in data within {minutes:g} minutes "
        f"on this machine ({device}), evaluated on {split}. For the samplers (gan, autoregressive) inference img/s "
        f"counts images drawn.\n\n{table}{pictures}"
    )
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(markdown))
    return table


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda`` with the GPU's name, for the report."""
    return f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def _table_row(row: dict[str, Any]) -> str:
    if "failed" in row:
        reason = row["failed"].replace("|", "\\|")
        return f"| {row['model']} | | {row['dataset']} | | | | | **failed**: {reason} | | |\n"
    steps = "" if _reuses_weights(row) else row.get("steps", "")
    return (f"| {row['model']} | {row['task']} | {row['dataset']} | {row['parameters'] / 1e6:.2f} M | {steps} | {_trained(row)} "
            f"| {row['metric']} | {row['value']:.4f} | {_rate(row['inference_images_per_s'])} | {_regions(row)} |\n")


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:.0f}" if images_per_s >= 10 else f"{images_per_s:.2f}"


def _regions(row: dict[str, Any]) -> str:
    return "" if row.get("regions_per_image") is None else f"{row['regions_per_image']:.0f}"


def _reuses_weights(row: dict[str, Any]) -> bool:
    """Whether the row's job took another job's trained weights (its steps and seconds are that job's)."""
    return row.get("trained_by", row["name"]) != row["name"]


def _trained(row: dict[str, Any]) -> str:
    if _reuses_weights(row):
        return f"({row['trained_by']}'s)"
    return f"{row['train_seconds']:.0f}"


def _eval_images(text: str) -> int:
    value = positive_int(text)
    if value < 2:  # the samplers' FID compares two sets of at least two images each
        raise argparse.ArgumentTypeError(f"expected at least 2 images, got {text}")
    return value


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=positive_float, default=27.0,
                        help="total training budget, shared by weight (default 27: 24 for the other rows, as before "
                             "the HIPT slides row, and its 2)")
    parser.add_argument("--out", default="runs/tour", help="report folder (default runs/tour)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the tour in an existing report folder (only one that a tour wrote; the other "
                             "files in it are kept)")
    parser.add_argument("--only", action="append", help="run only this job (repeatable); see --list")
    parser.add_argument("--list", action="store_true", help="list the jobs and exit")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 where the CPU/GPU runs it natively, else fp32")
    add_device_argument(parser)
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="also stop each job after this many steps (a result independent of the machine's speed)")
    parser.add_argument("--eval-images", type=_eval_images, default=None,
                        help="evaluate each job on at most this many validation and test images (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@register_command("tour", help="train and evaluate every family on built-in data; write a report", arguments=_arguments)
def tour_command(args: argparse.Namespace) -> int:
    jobs = TOUR_JOBS
    if args.only:
        names = {job.name for job in jobs}
        for name in args.only:
            if name not in names:
                near = closest(name, names)
                hint = f"closest: {', '.join(near)}" if near else "`visionzoo tour --list` lists them"
                raise ValueError(f"no tour job {name!r}; {hint}")
        jobs = [job for job in jobs if job.name in args.only]
    if args.list:  # the jobs that would run, with their share of --minutes
        for job, minutes in zip(jobs, job_minutes(jobs, args.minutes)):
            print(f"{job.name:<24} {job.model:<30} {job.data:<8} {minutes:5.1f} min")
        return 0
    _check_dependencies(jobs)
    device = resolve_device(args.device)
    out = prepare_run_dir(args.out, resume=False, overwrite=args.overwrite, resumable=False, outputs=tour_outputs())
    rows: list[dict[str, Any]] = []
    failed: set[str] = set()
    for job, minutes in zip(jobs, job_minutes(jobs, args.minutes)):
        print(f"[tour] {job.name}: {job.model} on {job.data}, {minutes:.1f} min")
        missing = [name for name in job.needs if name in failed]
        if missing:
            rows.append(failed_row(job, f"not run: it uses the weights of {missing[0]}, which failed"))
            failed.add(job.name)
        else:
            try:
                rows.append((job.pipeline or run_job)(job, minutes, out, args.precision, progress=not args.no_progress,
                                    max_steps=args.max_steps, eval_images=args.eval_images, device=device))
            except Exception as error:  # noqa: BLE001 - one job's failure must not cost the others' results
                rows.append(failed_row(job, _reason(error)))
                failed.add(job.name)
                log_file = out / job.name / "error.txt"
                log_file.parent.mkdir(parents=True, exist_ok=True)
                log_file.write_text(traceback.format_exc())
                print(f"[tour] {job.name} failed: {_reason(error)} (traceback: {log_file})", file=sys.stderr)
        table = write_report(rows, out, args.minutes, args.eval_images, device_name(device))
    print(table)
    print(f"report: {out / 'report.md'}")
    if failed:
        print(f"visionzoo tour: {len(failed)} of {len(jobs)} jobs failed: {', '.join(sorted(failed))}", file=sys.stderr)
        return 1
    return 0


def _reason(error: BaseException) -> str:
    """One line for the report: the message of an error the user can act on, with its type otherwise."""
    text = " ".join(str(error).split()) or "(no message)"
    return text if isinstance(error, USER_ERRORS) else f"{type(error).__name__}: {text}"

