"""``visionzoo train``, ``visionzoo eval`` and ``visionzoo predict``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from visionzoo.cli import (
    RecordingParser,
    add_device_argument,
    fraction,
    nonnegative_float,
    nonnegative_int,
    parse_number,
    positive_float,
    positive_int,
    probability,
    register_command,
    seed,
)
from visionzoo.data import builtin_name, same_images_note
from visionzoo.metrics.coco import no_ground_truth_note
from visionzoo.train.distributed import process_rank
from visionzoo.train.engine import (
    CHECKPOINT_NAME,
    PRECISIONS,
    TrainConfig,
    autocast_context,
    show_preparation_progress,
)
from visionzoo.train.reconstruction import ReconstructionTask
from visionzoo.train.run import (
    check_image_files,
    checkpoint_metadata,
    first_items,
    image_sizes,
    load_eval_images,
    load_for_inference,
    load_images,
    pretrained_for_prediction,
    pretrained_for_sampling,
    run_training,
    task_class,
)
from visionzoo.train.task import _TASKS, NonFiniteOutputError, SettingError, device_memory
from visionzoo.utils import (
    first_non_finite,
    require_folder_or_absent,
    require_not_folder,
    require_unit_interval,
    resolve_device,
    with_article,
)

# Python's spellings of JSON's literals: read as strings, "False" was a non-empty string, so small_input=False
# built the small-input stem.
_PYTHON_LITERALS = {"True": True, "False": False, "None": None}


def parse_model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false, lists), or as Python's
    True/False/None, else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a KEY, got {text!r}")
    if value in _PYTHON_LITERALS:
        return key, _PYTHON_LITERALS[value]
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


_NOT_GIVEN = object()
INFERENCE_PRECISION_HELP = "fp32 (default); bf16: bf16 autocast; auto: bf16 where the CPU/GPU runs it natively, else fp32"


def _add_task_arguments(parser: RecordingParser) -> None:
    """Every registered task's own options. Their defaults are kept aside and replaced by a marker, so that an
    option typed on the command line is told apart from one left out even when it is typed at its default."""
    before = {action.dest for action in parser.recorded_actions}
    start = len(parser.recorded_actions)
    for task in _TASKS.values():
        task.add_arguments(parser)
    defaults = {}
    for action in parser.recorded_actions[start:]:
        if action.dest not in before:
            defaults[action.dest], action.default = action.default, _NOT_GIVEN
    parser.set_defaults(_task_option_defaults=defaults)


def _task_options(args: argparse.Namespace, resumed: bool = False) -> dict[str, Any]:
    """The options of the model's task (the given values, else their defaults, which a ``resumed`` run leaves to
    :func:`run_training` to take from its record), and those of other tasks that were typed, at any value, which
    :func:`run_training` refuses rather than ignore."""
    own = task_class(args.model).own_options()
    options = {}
    for name, default in args._task_option_defaults.items():
        value = getattr(args, name)
        if value is not _NOT_GIVEN:
            options[name] = value
        elif name in own and not resumed:
            options[name] = default
    return options


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered model name (see `visionzoo list-models`)")
    parser.add_argument("--data", required=True, help="built-in data set (shapes, digits), a COCO folder, or one COCO .json file "
                             "(its images beside it or in images/; it serves every split)")
    parser.add_argument("--img-size", type=positive_int,
                        help="image side in pixels (default: a generative model's registered size, but a code "
                             "prior's tokenizer's and DCGAN's 32 on Digits, 64 on Shapes; else the data set's)")
    parser.add_argument("--train-size", type=positive_int, metavar="N",
                        help="training images: Shapes, being procedural, draws N scenes (its default 4000 are the "
                             "first of them); other data keep the first N of their train split")
    parser.add_argument("--val-size", type=positive_int, metavar="N",
                        help="validation images: the run's evaluations score the first N of the val split (all of a "
                             "smaller one; with --resume, the run's N)")
    parser.add_argument("--out", help="run folder (default: runs/MODEL-DATA)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (--max-steps and --epochs count from the "
                             "run's start, --minutes from now; without them it goes on to the end of its plan)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in an existing run folder (only one that a run wrote; the other files in "
                             "it are kept)")
    budget = parser.add_argument_group("budget (the first reached ends the run)")
    budget.add_argument("--max-steps", type=positive_int, help="steps from the run's start, also with --resume")
    budget.add_argument("--epochs", type=positive_float, help="epochs from the run's start, also with --resume")
    budget.add_argument("--minutes", type=positive_float,
                        help="training time of this invocation: with --resume, minutes more (the cosine schedule is "
                             "re-sized to the steps done plus those they buy, as a larger --max-steps re-sizes it)")
    optim = parser.add_argument_group("optimisation (defaults: the model's registered ones, else the task's)")
    optim.add_argument("--batch-size", type=positive_int, help="per process, as in timm")
    optim.add_argument("--lr", type=positive_float)
    optim.add_argument("--weight-decay", type=nonnegative_float)
    optim.add_argument("--opt-betas", type=adam_beta, nargs=2, metavar=("BETA1", "BETA2"),
                       help="AdamW's betas for every optimizer of the run (default: the model's, else the task's, "
                            "e.g. the vqgan task's 0.5 0.9, else 0.9 0.999)")
    optim.add_argument("--warmup-steps", type=nonnegative_int)
    optim.add_argument("--grad-clip", type=nonnegative_float, help="max gradient norm (0 disables)")
    optim.add_argument("--ema-decay", type=fraction, help="EMA of the weights (0 disables)")
    optim.add_argument("--precision", choices=PRECISIONS,
                       help="auto (default; with --resume, the run's): bf16 autocast where the CPU/GPU runs bf16 "
                            "natively, else fp32")
    optim.add_argument("--seed", type=seed,
                       help="default 0; with --resume, the run's (another only at an epoch's end)")
    run = parser.add_argument_group("run")
    run.add_argument("--workers", type=nonnegative_int,
                     help="data loader worker processes (default 0; with --resume, the run's)")
    run.add_argument("--checkpoint-every", type=positive_int,
                     help="steps between checkpoints (default 100; with --resume, the run's)")
    run.add_argument("--eval-every", type=nonnegative_int,
                     help="steps between evaluations (default, and 0: at the end only; with --resume, the run's)")
    add_device_argument(run)
    run.add_argument("--model-arg", type=parse_model_arg, action="append", default=[], metavar="KEY=VALUE",
                     help="extra model argument, e.g. small_input=true (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    # eval's, predict's and sample's option, refused naming train's ways to start from weights: as an unknown option
    # it would be answered with --checkpoint-every, the option it starts
    parser.add_argument("--checkpoint", nargs="?", action=_NoCheckpoint, help=argparse.SUPPRESS)
    _add_task_arguments(parser)


class _NoCheckpoint(argparse.Action):
    """train's refusal of --checkpoint, naming the options that do what it was likely meant for."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error("train takes no --checkpoint (eval, predict and sample read one): a classifier starts from a "
                     "checkpoint's weights with --initial-checkpoint FILE, and --resume continues the run in --out")


def adam_beta(text: str) -> float:
    return parse_number(text, float, "an Adam beta in [0, 1)", lambda value: 0 <= value < 1)


# The model arguments a run takes from its data.
DATA_SET_ARGS = ("num_classes", "in_chans")


def _data_name(data: str) -> str:
    return Path(data).name or "data"


@register_command("train", help="train a registered model on built-in data or a COCO folder", arguments=_train_arguments,
                  distributed=True)
def train_command(args: argparse.Namespace) -> int:
    for key, value in args.model_arg:
        if key in DATA_SET_ARGS:
            raise ValueError(f"--model-arg {key}={value}: {key} is set from --data, not given")
        if key == "checkpoint":  # create_model's own argument, which the run passes itself
            raise ValueError(f"--model-arg {key}={value}: a weights file to start from is --initial-checkpoint FILE "
                             "(classifiers); a detector's backbone takes --model-arg "
                             "'backbone_args={\"checkpoint\": \"FILE\"}'")
    out = Path(args.out or f"runs/{args.model}-{_data_name(args.data)}")
    options = _task_options(args, resumed=args.resume and (out / CHECKPOINT_NAME).is_file())
    config = TrainConfig(
        out=str(out),
        batch_size=args.batch_size, max_steps=args.max_steps, epochs=args.epochs, minutes=args.minutes,
        lr=args.lr, weight_decay=args.weight_decay, betas=tuple(args.opt_betas) if args.opt_betas else None,
        warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
        precision=args.precision, ema_decay=args.ema_decay, seed=args.seed, num_workers=args.workers,
        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, device=args.device,
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
    )
    reports = process_rank() == 0  # under torchrun, rank 0 reports the run: the others' lines would repeat it
    if not reports:  # their warnings too: of the data every rank reads alike, or echoes of rank 0's (its caches)
        logging.getLogger("visionzoo").setLevel(logging.ERROR)
    try:
        _, result = run_training(args.model, args.data, config, args.img_size, dict(args.model_arg),
                                 options, train_images=args.train_size, val_images=args.val_size)
    except KeyboardInterrupt:
        if reports:  # whether the folder can go on: the user may think an interrupted run is lost, or resumable
            checkpoint = out / CHECKPOINT_NAME
            where = (f"; --resume goes on from the checkpoint of step {checkpoint_metadata(checkpoint)['step']} in {out}"
                     if checkpoint.is_file() else f" before the first checkpoint in {out}; nothing to resume")
            if not out.exists():  # the engine took back the folder of a run that wrote nothing
                where = f" before the run wrote anything; no run folder {out} is left"
            print(f"visionzoo train: interrupted{where}", file=sys.stderr)
        return 130
    if not reports:  # only rank 0 evaluates: it alone has the summary
        return 0
    share = f" ({result.samples_per_second:.1f} samples/s)"
    if result.start_step:  # resumed: the steps and seconds are the whole run's, the throughput this session's
        session = result.steps - result.start_step
        share = f", {session} of them in this session{share}" if session else ", none of them in this session"
    print(f"{args.model} on {args.data}: {result.steps} steps in {result.train_seconds:.1f} s{share}")
    if result.metrics:
        _note_same_images(args.data, "val")
        _note_no_ground_truth(result.metrics, "val")
        if result.val_images_scored is not None and result.val_images_scored < result.val_split_images:
            print(f"val on the first {result.val_images_scored} of the split's {result.val_split_images} images:")
    for line in metric_lines(result.metrics, "val "):
        print(line)
    print(f"run folder: {result.out}")
    return 0


def _note_same_images(data: str, split: str, trained_on: str | None = None) -> str | None:
    """Say on stderr, in one line, where ``split``'s figures of ``data`` are on the training images (see
    :func:`~visionzoo.data.same_images_note`); the line, else None."""
    note = same_images_note(data, split, trained_on)
    if note is not None:
        sys.stdout.flush()  # after the lines it follows, where stdout is buffered
        print(f"note: {note}", file=sys.stderr)
    return note


def _note_no_ground_truth(metrics: dict[str, float], split: str) -> None:
    """Say on stderr, in one line, where every metric of ``split`` is pycocotools' -1: it held nothing to score."""
    note = no_ground_truth_note(metrics.values(), f"the {split} split")
    if note is not None:
        sys.stdout.flush()  # after the lines it follows, where stdout is buffered
        print(f"note: {note}", file=sys.stderr)


def metric_lines(metrics: dict[str, float], prefix: str = "") -> list[str]:
    """One line a metric, ``"  {prefix}{name} {value:.4f}"``, the names padded to the longest (12 at least) so that
    the values stand in one column."""
    width = max([12, *map(len, metrics)])
    return [f"  {prefix}{name:<{width}} {value:.4f}" for name, value in metrics.items()]


def check_finite_weights(model: torch.nn.Module, model_name: str, checkpoint: str) -> None:
    """ValueError naming ``checkpoint`` and the first tensor of ``model``'s state that holds NaN or infinity (a run
    that diverged): a detector's score threshold drops NaN scores, so it would report finding nothing, and a
    classifier's ranking of NaN logits is arbitrary."""
    name = first_non_finite(model)
    if name is not None:
        raise ValueError(f"{checkpoint}: {model_name}'s weights hold non-finite values (NaN or infinity), first in "
                         f"{name}: its outputs would not be finite (did the run diverge?)")


@contextmanager
def _finite_outputs(model_name: str, checkpoint: str, precision: str, image: str | None = None) -> Iterator[None]:
    """Turn a task's NonFiniteOutputError into one error naming the model and the checkpoint (and ``image``, the file
    the outputs were of, where given); its weights are checked before (:func:`check_finite_weights`), so bf16's range
    is the likely cause."""
    try:
        yield
    except NonFiniteOutputError:
        hint = "; try --precision fp32" if precision != "fp32" else ""
        of = "" if image is None else f"{image}: "
        raise ValueError(f"{of}{model_name}'s outputs are not finite (NaN or infinity) with {checkpoint}{hint}") from None


def _require_finite_images(images: torch.Tensor, args: argparse.Namespace, weights: str) -> None:
    """ValueError when a sampler drew NaN or infinity (save_image would write them as black pixels, without a word)
    from ``weights`` (as :func:`_weight_source` names them): they were checked finite before drawing, so the likely
    cause is bf16's range."""
    if not bool(torch.isfinite(images).all()):
        hint = "; try --precision fp32" if args.precision != "fp32" else ""
        raise ValueError(f"{args.model} drew images with non-finite values (NaN or infinity) from {weights}{hint}")


# sample's option of each sampler setting (:func:`_sampler_settings`)
SETTING_OPTIONS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "label": "--label"}


@contextmanager
def _setting_options() -> Iterator[None]:
    """The task's refusal of a sampler setting (:class:`SettingError`) naming sample's option, not the keyword."""
    try:
        yield
    except SettingError as error:
        raise ValueError(error.naming(SETTING_OPTIONS)) from None


# eval's images per forward for a checkpoint without its run's batch size. A run's own is the default: one 128 for
# every model ran a detector trained 8 at a time 128 images through its FPN at once (tens of GB for 800 px photos).
EVAL_BATCH = 128


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered model name")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by `visionzoo train`")
    parser.add_argument("--use-ema", action="store_true",
                        help="the EMA weights of a run trained with --ema-decay (default: the trained weights)")
    parser.add_argument("--data", help="data set name, COCO folder or COCO .json file (default: the training data)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="the split to evaluate (default test)")
    parser.add_argument("--max-images", type=positive_int, metavar="N",
                        help="score only the split's first N images (all of a smaller split)")
    parser.add_argument("--img-size", type=positive_int, help="image side in pixels (default: the run's)")
    parser.add_argument("--batch-size", type=positive_int,
                        help=f"images per forward (default: the run's own, which its training evaluated with; "
                             f"{EVAL_BATCH} for a checkpoint that records none)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=INFERENCE_PRECISION_HELP)
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the metrics as JSON, with images_scored (how many images of the split they "
                             "score) and split_images (how many it holds), and note where the split's images are the "
                             "run's training images (one COCO .json file serves every split)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@register_command("eval", help="evaluate a trained checkpoint on a data split", arguments=_eval_arguments)
def eval_command(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    setup = load_for_inference(args.model, args.checkpoint, args.data, args.img_size, use_ema=args.use_ema,
                               split=args.split)
    meta = checkpoint_metadata(args.checkpoint)
    trained_size = meta.get("run", {}).get("img_size")
    config = meta.get("config") or {}
    batch_size = args.batch_size or config.get("eval_batch_size") or config.get("batch_size") or EVAL_BATCH
    # a detector that scales every image to its min_size sees its objects at the trained scale at any --img-size
    resizes = bool(getattr(getattr(setup.model, "transform", None), "min_size", None))
    if args.img_size and trained_size and args.img_size != trained_size and not resizes:
        print(f"note: {args.checkpoint} was trained at {trained_size} px; at --img-size {args.img_size} objects appear "
              f"at {args.img_size / trained_size:.2g}x the scale it learned, so its scores can fall far", file=sys.stderr)
    check_finite_weights(setup.model, args.model, args.checkpoint)
    model = setup.model.to(device).eval()
    autocast = autocast_context(device, args.precision)
    split = first_items(setup.splits[args.split], args.max_images)
    total, used = len(setup.splits[args.split]), setup.task.evaluated_images(split)
    check_image_files(setup.splits[args.split], used)
    show_preparation_progress([split], not args.no_progress)
    with torch.no_grad(), _finite_outputs(args.model, args.checkpoint, args.precision):
        metrics = setup.task.evaluate(model, split, batch_size, autocast)
    _note_no_ground_truth(metrics, args.split)
    trained_on = meta.get("run", {}).get("data")
    note = _note_same_images(args.data or trained_on, args.split, trained_on) if trained_on else None
    if args.json:  # the counts of the text header, beside the metrics
        print(json.dumps({**metrics, "images_scored": used, "split_images": total,
                          **({"scores": setup.task.scores} if setup.task.scores else {}),
                          **({"note": note} if note else {})}, indent=2))
    else:
        scores = f"; {setup.task.scores}" if setup.task.scores else ""
        print(f"{args.model} on {args.split} split ({total if used == total else f'{used} of its {total}'} images"
              f"{scores}):")
        for line in metric_lines(metrics):
            print(line)
    return 0


# Images per forward of `visionzoo predict` (not a detector): a folder's thousand photos in one forward would hold the
# activations of all of them at once.
PREDICT_BATCH = 64
# The memory a VQGAN's reconstruction takes per pixel of an image, from vqgan_imagenet_f16_16384's in fp32 on the CPU
# (benchmarks/reconstruction_memory.py: 2.55 to 3.02 KiB, 163 to 193 MiB a 256 px image in batches of 8 to 1; 3.44 KiB
# at 128 px, where a forward's fixed part weighs more): PREDICT_BATCH of its 256 px images would take 10 GiB. The
# half of the memory the batch leaves holds the fixed part and what this rounds off.
RECONSTRUCTION_BYTES_PER_PIXEL = 3 * 2**10


def reconstruction_batch(side: int, available: int | None) -> int:
    """`visionzoo predict`'s default images per forward for a reconstruction of ``side`` px images: as many as half
    of the ``available`` bytes hold at ``RECONSTRUCTION_BYTES_PER_PIXEL``, from 1 to ``PREDICT_BATCH`` (that where
    the memory is not known)."""
    if available is None:
        return PREDICT_BATCH
    return max(1, min(PREDICT_BATCH, available // 2 // (RECONSTRUCTION_BYTES_PER_PIXEL * side * side)))


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered model name")
    parser.add_argument("images", nargs="+", help="image files, read as stored: an EXIF orientation tag is not applied (as torchvision's decode_image and COCO's annotations)")
    parser.add_argument("--checkpoint", help="a checkpoint written by `visionzoo train`")
    parser.add_argument("--pretrained", action="store_true",
                        help="the model's official weights instead of a --checkpoint (downloaded once; the "
                             "classifiers, detectors and VQGANs of `visionzoo list-models --pretrained`): a "
                             "classifier's top-5 ImageNet-1k classes of each image read as timm's evaluation transform "
                             "reads it, a detector's COCO objects, a VQGAN's reconstruction of the image's centre "
                             "square as taming-transformers reads it")
    parser.add_argument("--use-ema", action="store_true",
                        help="the EMA weights of a run trained with --ema-decay (default: the trained weights)")
    parser.add_argument("--out", required=True, help="folder for the annotated PNGs and predictions.json")
    parser.add_argument("--overwrite", action="store_true", help="replace files of the same name in --out")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=INFERENCE_PRECISION_HELP)
    add_device_argument(parser)
    parser.add_argument("--coco-json", metavar="FILE",
                        help="detectors: also write the detections as COCO results (pycocotools' loadRes format)")
    parser.add_argument("--image-ids", metavar="FILE",
                        help="with --coco-json: take each image's image_id from this COCO annotation file (the entry of "
                             "'images' whose file_name the image's path ends with) and each class's category_id (the "
                             "category of its name), so that coco-eval scores the results against it (default: numeric "
                             "file names, else positions; the training data's ids)")
    parser.add_argument("--min-score", type=float, metavar="S",
                        help="detectors: draw and print the detections scoring at least S (default 0.5); "
                             "predictions.json and --coco-json keep every detection the model returns")
    parser.add_argument("--batch-size", type=positive_int, metavar="N",
                        help=f"images per forward (default {PREDICT_BATCH}; a VQGAN's reconstruction: as many as half "
                             "the free memory of the device holds, at most that): a smaller one holds less in memory, "
                             "the predictions are the same; a detector takes one image at a time whatever N is")


def image_ids_from(ann_file: str | Path, paths: list[str]) -> list[int | str]:
    """The ``id`` of each image of ``paths`` in COCO annotation file ``ann_file`` (see :func:`image_entries_from`)."""
    return [entry["id"] for entry in image_entries_from(ann_file, paths)]


def image_entries_from(ann_file: str | Path, paths: list[str]) -> list[dict[str, Any]]:
    """The entry of each image of ``paths`` in COCO annotation file ``ann_file``: the one of its ``images`` whose
    ``file_name`` (relative to some images folder) the image's path ends with. ValueError naming the file and the
    image when an image has no such entry, or several."""
    from visionzoo.data.coco import read_json

    try:
        content = read_json(ann_file)  # names the line of a JSON error, the byte of a non-UTF-8 one
        entries = [(Path(entry["file_name"]).parts, entry["id"], entry) for entry in content["images"]]
    except FileNotFoundError:
        if Path(ann_file).exists():  # read_json takes only a file
            raise ValueError(f"--image-ids {ann_file} is a folder, not a COCO annotation file") from None
        raise FileNotFoundError(f"--image-ids {ann_file} does not exist") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--image-ids {ann_file} is not a COCO annotation file with images' file_name and id "
                         f"({type(error).__name__}: {error})") from None
    matched = []
    for path in paths:
        # the path as given, made absolute (its ".." taken out) but not resolved: an image that is a symlink to a
        # content-named file (git-annex, DVC's and Hugging Face's caches) is known by the link's name
        parts = Path(os.path.abspath(path)).parts
        found = [(image_id, entry) for name, image_id, entry in entries if name and parts[-len(name):] == name]
        if len(found) != 1:
            problem = "no entry" if not found else f"{len(found)} entries (ids {[i for i, _ in found[:3]]})"
            raise ValueError(f"--image-ids {ann_file}: {path} matches {problem} of its images by file_name")
        image_id = found[0][0]
        if isinstance(image_id, bool) or not isinstance(image_id, int | str):  # copied into the results as it is
            raise ValueError(f"--image-ids {ann_file}: the entry of {path} has id {json.dumps(image_id)}; an image id "
                             "is a whole number or a string")
        matched.append(found[0][1])
    return matched


def check_annotated_sizes(ann_file: str | Path, paths: list[str], sizes: list[tuple[int, int]],
                          entries: list[dict[str, Any]]) -> None:
    """ValueError when an image's (width, height) as stored is not the one its entry gives: its boxes would be
    scored against boxes in other pixels (an annotation tool's EXIF-turned view, a resized copy)."""
    for path, size, entry in zip(paths, sizes, entries):
        size, given = tuple(size), (entry.get("width"), entry.get("height"))
        if None not in given and given != size:
            turned = " (turned by an EXIF orientation? images are read as stored)" if given == size[::-1] else ""
            raise ValueError(f"{path} is {size[0]}x{size[1]}, its entry in --image-ids {ann_file} says "
                             f"{given[0]}x{given[1]}{turned}: its boxes would be scored in other pixels")


def category_ids_from(ann_file: str | Path, classes: list[str],
                      label_to_cat_id: dict[int, int | str] | None) -> dict[int, int | str]:
    """The category id of each label (1-based) of a model of ``classes`` in COCO annotation file ``ann_file``: the id
    of the category of its name there, else its own (``label_to_cat_id``, else the label), which coco-eval leaves
    out as absent. ValueError when the file gives that own id to a category of another name: its boxes would be
    scored as that class. A file without categories leaves the ids as they are."""
    from visionzoo.data.coco import read_json

    own = {label: label_to_cat_id[label] if label_to_cat_id else label for label in range(1, len(classes) + 1)}
    categories = read_json(ann_file).get("categories")
    if not isinstance(categories, list):
        return own
    named = {str(c["name"]): c["id"] for c in categories if isinstance(c, dict) and "name" in c and "id" in c}
    name_of = {cat_id: name for name, cat_id in named.items() if isinstance(cat_id, int | str)}
    ids = {}
    for label, name in enumerate(classes, start=1):
        if name not in named and own[label] in name_of:
            raise ValueError(f"--image-ids {ann_file} gives category id {own[label]!r} to {name_of[own[label]]!r}; the "
                             f"model's class {name!r} has that id and no category of the file is named so: its boxes "
                             "would be scored as another class")
        ids[label] = named.get(name, own[label])
    return ids


def coco_results(paths: list[str], predictions: list[dict[str, Any]],
                 label_to_cat_id: dict[int, int | str] | None,
                 image_ids: list[int | str] | None = None) -> list[dict[str, Any]]:
    """Detections as COCO result records: ``image_id`` from ``image_ids`` (one per path) when given, else from
    the numeric file names (COCO's ``000000123.jpg``) when every name is a distinct number in ASCII digits, else
    each image's position (1-based), so that two images never share an id; ``category_id`` the data set's id of
    the label as its file writes it (an integer or a string), ``bbox`` xywh. Boxes and scores are written unrounded
    (as detectron2 and mmdetection write them): scores rounded to a few decimals tie, and pycocotools ranks tied
    detections by image order, so the file would score another mAP than ``visionzoo eval``."""
    stems = [Path(path).stem for path in paths]
    numbers = [int(stem) for stem in stems if stem.isascii() and stem.isdigit()]  # not "²", which int() refuses
    by_name = len(numbers) == len(stems) and len(set(numbers)) == len(numbers)
    records = []
    for position, (stem, prediction) in enumerate(zip(stems, predictions), start=1):
        image_id = image_ids[position - 1] if image_ids is not None else int(stem) if by_name else position
        for (x1, y1, x2, y2), label, score in zip(prediction["boxes"], prediction["label_ids"], prediction["scores"]):
            category = label_to_cat_id[label] if label_to_cat_id else int(label)
            records.append({"image_id": image_id, "category_id": category, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    return records


def _weight_source(args: argparse.Namespace, use: str, checkpoint_only: dict[str, bool]) -> str:
    """How ``predict`` and ``sample`` name their weights in messages: the ``--checkpoint`` file or the model's official
    weights. ValueError unless exactly one of ``--checkpoint`` and ``--pretrained`` is given (``use``: what for,
    e.g. "to sample from"), or for ``--pretrained`` with an option of ``checkpoint_only`` that is set."""
    if (args.checkpoint is None) == (not args.pretrained):
        raise ValueError(f"give the weights {use}: --checkpoint FILE (a run of `visionzoo train`) or --pretrained (the "
                         "model's official weights), one of them")
    given = [flag for flag, is_set in checkpoint_only.items() if is_set]
    if args.pretrained and given:
        raise ValueError(f"--pretrained takes the official weights as they are: {given[0]} is for a --checkpoint of "
                         "`visionzoo train`")
    return args.checkpoint or f"{args.model}'s official weights"


@register_command("predict", help="draw the predictions of a trained model or of official weights into PNGs", arguments=_predict_arguments)
def predict_command(args: argparse.Namespace) -> int:
    weights = _weight_source(args, "to predict with", {"--use-ema": args.use_ema})
    if args.min_score is not None:
        require_unit_interval(**{"--min-score": args.min_score})
    out = require_folder_or_absent(args.out, "--out")
    targets = [out / f"{Path(p).stem}.png" for p in args.images]
    first_of = {}
    for path, target in zip(args.images, targets):
        if target in first_of:
            raise ValueError(f"{first_of[target]} and {path} would both be drawn into {target}; "
                             "give images of distinct names (or predict them in two runs)")
        first_of[target] = path
    written = targets + [out / "predictions.json"]  # what predict writes into --out
    inputs = {Path(p).resolve(): p for p in args.images}
    outputs = written + ([Path(args.coco_json)] if args.coco_json else [])
    for output in outputs:  # --overwrite replaces earlier results, never the images being predicted
        if output.resolve() in inputs:
            raise ValueError(f"{output} would replace the input image {inputs[output.resolve()]}; give another "
                             f"{'--coco-json' if args.coco_json and output == Path(args.coco_json) else '--out'}")
    if args.coco_json:
        coco_json = require_not_folder(args.coco_json, "--coco-json", "a .json file").resolve()
        if coco_json == out.resolve() or coco_json in out.resolve().parents:  # predict makes these folders
            where = "the --out folder" if coco_json == out.resolve() else f"a folder of --out {args.out}"
            raise ValueError(f"--coco-json {args.coco_json} is {where}, which predict makes; give the COCO results "
                             "another name")
        own = {path.resolve(): path.name for path in written}
        if coco_json in own:
            raise ValueError(f"--coco-json {args.coco_json} is the {own[coco_json]} that predict writes into "
                             "--out; give the COCO results another name")
        # --out is made by predict, so a file in it is fine; any other folder must exist (a typo is caught early)
        if not coco_json.parent.is_dir() and coco_json.parent != out.resolve():
            raise FileNotFoundError(f"--coco-json {args.coco_json}: its folder does not exist")
    if args.image_ids and not args.coco_json:
        raise ValueError("--image-ids numbers the images of --coco-json; add --coco-json FILE")
    entries = image_entries_from(args.image_ids, args.images) if args.image_ids else None
    image_ids = [entry["id"] for entry in entries] if entries else None
    device = resolve_device(args.device)
    # a missing or unreadable file is refused before the weights are downloaded or read, and before anything is written
    sizes = image_sizes(args.images)
    if args.pretrained:
        setup = pretrained_for_prediction(args.model)
    else:
        setup = load_for_inference(args.model, args.checkpoint, use_ema=args.use_ema, data_free=True)
    clashes = [t for t in written if t.exists()]
    if clashes and not args.overwrite:  # every one: --overwrite replaces them all, not only the first named
        more = ""
        if len(clashes) > 1:
            names = ", ".join(t.name for t in clashes[1:4]) + (", ..." if len(clashes) > 4 else "")
            more = f", and {len(clashes) - 1} more file{'s' if len(clashes) > 2 else ''} predict writes ({names})"
        raise FileExistsError(f"{clashes[0]} exists{more}; use --overwrite to replace {'them' if more else 'it'}")
    detection = setup.task.name == "detection"
    if args.coco_json and not detection:
        raise ValueError(f"--coco-json writes detections; {args.model} is {with_article(setup.task.name)} model")
    if args.min_score is not None and not detection:
        raise ValueError(f"--min-score filters detections; {args.model} is {with_article(setup.task.name)} model")
    shown = {"min_score": 0.5 if args.min_score is None else args.min_score} if detection else {}
    if args.coco_json and Path(args.coco_json).exists() and not args.overwrite:
        raise FileExistsError(f"{args.coco_json} exists; use --overwrite to replace it")
    if args.coco_json:
        # official COCO weights label each object with its COCO category id
        label_to_cat_id = getattr(setup.splits.first(), "label_to_cat_id", None) if setup.splits else None
        if args.image_ids:  # the file the results are scored against may number the classes its own way
            label_to_cat_id = category_ids_from(args.image_ids, setup.task.classes, label_to_cat_id)
    size, channels = setup.run_meta["img_size"], setup.run_meta["in_chans"]
    if entries:
        check_annotated_sizes(args.image_ids, args.images, sizes, entries)
    check_finite_weights(setup.model, args.model, weights)
    model = setup.model.to(device).eval()
    autocast = autocast_context(device, args.precision)
    # a detector sees each image at its own size (boxes in its pixels), or, trained on a COCO folder read at an
    # --img-size, squashed to that square as that folder's files were (boxes mapped back); a classifier at its
    # training size
    squashed = size if detection and builtin_name(setup.run_meta.get("data")) is None else None
    # files are read a batch at a time, each batch drawn before the next is read: decoded all at once, a folder's
    # photos took 3.7 MB a 640×480 one (18 GB for COCO's 5,000 val images). A detector takes one at a time: a batch
    # of files would hold all of their activations (~340 MB more per 600×800 photo through a ResNet-18 FPN at
    # 800 px), and an error names the file
    step = 1 if detection else args.batch_size or PREDICT_BATCH
    if args.batch_size is None and isinstance(setup.task, ReconstructionTask):
        # a reconstruction holds activations for every pixel of its images: 10 GiB for 64 of a taming VQGAN's
        step = reconstruction_batch(size, device_memory(device)[0])
    records = []
    made_out, drawn = not out.exists(), []
    try:
        for start in range(0, len(args.images), step):
            paths = args.images[start:start + step]
            if "eval_transform" in setup.run_meta:  # official weights: the images as they were evaluated
                images = load_eval_images(paths, setup.run_meta["eval_transform"])
            else:
                images = load_images(paths, None if detection else size, channels)
            # the detector's errors and warnings name the file (it would number the image in its batch of one)
            with _finite_outputs(args.model, weights, args.precision, paths[0] if detection else None):
                predictions = (setup.task.predict(model, images, autocast, image_size=squashed, names=paths)
                               if detection else setup.task.predict(model, images, autocast))
            out.mkdir(parents=True, exist_ok=True)
            for path, image, prediction, target in zip(paths, images, predictions, targets[start:start + step]):
                if not target.exists():
                    drawn.append(target)
                setup.task.draw(image, prediction, **shown).save(target)
                # the pictures carry the tensors
                records.append({"image": str(path),
                                **{k: v for k, v in prediction.items() if not isinstance(v, torch.Tensor)}})
    except Exception:
        # an image the model cannot take (too thin, outputs not finite) stops the run after the earlier ones were
        # drawn: without predictions.json they would only make the same command, less that image, need --overwrite
        for target in drawn:
            target.unlink(missing_ok=True)
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    (out / "predictions.json").write_text(json.dumps(records, indent=2))
    if args.coco_json:
        Path(args.coco_json).write_text(json.dumps(coco_results(args.images, records, label_to_cat_id, image_ids)))
        print(f"COCO results in {args.coco_json}")
    for record in records:
        print(f"{record['image']}: {setup.task.describe(record, **shown)}")
    print(f"pictures in {out}")
    return 0


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered generative model name (dcgan, image_gpt, vqgan_transformer, ...)")
    parser.add_argument("--checkpoint", help="a checkpoint written by `visionzoo train`")
    parser.add_argument("--pretrained", action="store_true",
                        help="the model's official weights instead of a --checkpoint (downloaded once; the models "
                             "of `visionzoo list-models --pretrained`, e.g. taming-transformers' "
                             "vqgan_transformer_imagenet_cin, whose --label is an ImageNet class index)")
    parser.add_argument("--use-ema", action="store_true",
                        help="the EMA weights of a run trained with --ema-decay (default: the trained weights)")
    parser.add_argument("-n", "--count", type=positive_int, default=64, help="how many images (default 64)")
    parser.add_argument("--out", required=True,
                        help=f"the grid to write (.png or .jpg, at most {GRID_MAX_IMAGES} images), or a folder: every "
                             "sample as its own PNG, written as it is drawn (for `visionzoo fid`)")
    parser.add_argument("--images-dir", metavar="DIR",
                        help="with a grid --out, also write every sample as its own PNG into DIR as it is drawn (for "
                             f"`visionzoo fid`); the grid then shows the first {GRID_MAX_IMAGES} of any -n")
    parser.add_argument("--batch-size", type=positive_int,
                        help=f"images drawn at a time (default {SAMPLE_BATCH}; with --complete, images completed at a time, "
                             "default --nrow); a smaller one holds less in memory; the images of a --seed depend on it")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the draws (default 0)")
    parser.add_argument("--temperature", type=positive_float, help="divide the logits by this (autoregressive models)")
    parser.add_argument("--top-k", type=positive_int, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=probability, help="sample within the nucleus of probability p")
    parser.add_argument("--label", help="class to draw (name or index) for a class-conditional model; without --label, "
                                        "a class-conditional model draws unconditionally (its \"no class\" start "
                                        "token, learnt from the labels dropped in training)")
    parser.add_argument("--complete", metavar="SOURCE",
                        help="models that complete images (Image GPT): instead of new images, complete the top halves "
                             "of the first -n images of SOURCE, a split of the run's data (train, val, test; ./val for "
                             "a folder of that name) or a folder of PNG or JPEG files (resized to the run's size); "
                             "the grid --out holds, for each --nrow images, a row of them, a row of their top halves "
                             "and three rows of completions, as the run's completions.png")
    parser.add_argument("--nrow", type=positive_int, help=f"images per row of a grid --out (default {GRID_NROW})")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=INFERENCE_PRECISION_HELP)
    add_device_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out, and the numbered samples (00000.png, ...) of an earlier run in --images-dir")


# How `visionzoo sample` names its images: 00000.png, 00001.png, ...; a run of more than 100,000 pads every name to
# the digits of its last index (000000.png ... 123455.png), so that its names sort in the order they were drawn.
SAMPLE_NAME_DIGITS = 5


def sample_name(index: int, count: int) -> str:
    """The file name of sample ``index`` of a run of ``count``: the index zero-padded to the digits of the run's last
    index, at least ``SAMPLE_NAME_DIGITS``."""
    return f"{index:0{max(SAMPLE_NAME_DIGITS, len(str(count - 1)))}d}.png"


def is_sample_name(name: str) -> bool:
    """Whether ``name`` is one that :func:`sample_name` gives for some run (not, e.g., 0001.png or 1.png)."""
    return re.fullmatch(rf"[0-9]{{{SAMPLE_NAME_DIGITS},}}\.png", name) is not None


def sample_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that are samples of some run: those of :func:`is_sample_name`, a name longer than
    ``SAMPLE_NAME_DIGITS`` digits only beside one of its length with a leading zero (a run of over 100,000 writes
    000000.png first), so that a user's photo named by its date (20261205.png) is not taken for one."""
    named = [path for path in folder.iterdir() if is_sample_name(path.name) and path.is_file()]
    zero_led = {len(path.stem) for path in named if path.stem.startswith("0")}
    return [path for path in named if len(path.stem) == SAMPLE_NAME_DIGITS or len(path.stem) in zero_led]


def holds_samples(folder: Path) -> bool:
    """Whether ``folder`` holds numbered samples: those of another run, even past the ones a run writes, would sit
    beside its own and `visionzoo fid` read them all."""
    return folder.is_dir() and bool(sample_files(folder))


def remove_earlier_samples(folder: Path) -> None:
    """Delete the numbered sample files of an earlier run in ``folder`` (:func:`sample_files`), so that a shorter run
    does not leave the tail of a longer one mixed with its own; every other file stays."""
    for path in sample_files(folder):
        path.unlink()


def _note_other_images(folder: Path, option: str) -> None:
    """Say when ``folder`` (given as ``option``) holds images besides the samples: ``visionzoo fid`` (and pytorch-fid)
    would read them as samples too."""
    from visionzoo.metrics.fid import IMAGE_EXTENSIONS

    samples = set(sample_files(folder))
    others = sorted(path.name for path in folder.iterdir() if path.is_file() and path not in samples
                    and path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        print(f"note: {folder} also holds {len(others)} other image{'s' if len(others) > 1 else ''} ({shown}), which "
              f"`visionzoo fid {folder}` would read with the samples; give an empty {option} for FID",
              file=sys.stderr)


# Images drawn per call of the task's sampler: one call for every -n at once held the whole batch's activations
# (an Image GPT's key-value cache, about 1.8 MB a sample at 16 px, so 18 GB for -n 10000).
SAMPLE_BATCH = 500


def sample_batches(count: int, size: int | None = None) -> Iterator[int]:
    """The sizes of the sampler calls that draw ``count`` images, ``size`` (default ``SAMPLE_BATCH``) at most each,
    one at a time: a list of them for -n 10**9 would take memory before the first image is drawn."""
    size = size or SAMPLE_BATCH
    return (min(size, count - start) for start in range(0, count, size))


# The most images a grid --out takes: more is a picture no one looks at, held whole in memory before it is written;
# sampling for FID goes to a folder, one PNG a sample, written batch by batch. With --images-dir the grid shows the
# first GRID_MAX_IMAGES samples of any -n.
GRID_MAX_IMAGES = 4096
GRID_NROW = 8
GRID_SUFFIXES = (".png", ".jpg", ".jpeg")


def _sampler_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler's options that were given: temperature, top_k, top_p and label."""
    settings = {name: value for name, value in (("temperature", args.temperature), ("top_k", args.top_k),
                                                 ("top_p", args.top_p)) if value is not None}
    if args.label is not None:  # the task tells a class name from an index, and refuses a label its model takes not
        settings["label"] = args.label
    return settings


def _sample_out(text: str, count: int | None, images_dir: str | None = None) -> tuple[Path, bool]:
    """``--out`` as a Path and whether it is a grid (a .png or .jpg file) rather than a folder of single samples (an
    existing folder, or a path with a trailing separator or no suffix). A grid of ``count`` samples is checked to fit;
    None (``--complete``, whose count is known once its source is read) is not."""
    out = Path(text)
    names_folder = text.endswith(("/", os.sep))
    if out.suffix.lower() in GRID_SUFFIXES and names_folder:  # Path drops the separator: the grid would be written
        raise ValueError(f"--out {text} ends in a separator, so names a folder, but has a grid's suffix {out.suffix}; "
                         f"give --out {out} for a grid, or a folder name without .png or .jpg for one PNG a sample")
    if out.suffix.lower() in GRID_SUFFIXES:
        require_not_folder(out, "--out", "a .png or .jpg file")
        if count is not None and count > GRID_MAX_IMAGES and not images_dir:
            raise ValueError(f"-n {count} is too many images for the grid --out {out}: a grid holds at most "
                             f"{GRID_MAX_IMAGES} images; give --out DIR to write each sample as its own PNG "
                             f"(which `visionzoo fid DIR` reads), or add --images-dir DIR for the first "
                             f"{GRID_MAX_IMAGES} in the grid and all of them in DIR")
        return out, True
    if out.is_dir() or names_folder or not out.suffix:
        return require_folder_or_absent(out, "--out"), False
    raise ValueError(f"--out must be a .png or .jpg file (a grid) or a folder (one PNG a sample), got {out}; for a "
                     f"folder of that name, end it with a separator: {out}{os.sep}")


# libjpeg's largest side; Pillow fails past it with "broken data stream when writing image file".
JPEG_MAX_SIDE = 65500
GRID_PADDING = 2


def grid_size(count: int, nrow: int, side: int, padding: int = GRID_PADDING) -> tuple[int, int]:
    """(width, height) in pixels of torchvision's ``make_grid`` of ``count`` images ``side`` × ``side``, ``nrow`` a row."""
    columns = min(nrow, count)
    rows = -(-count // columns)
    return columns * (side + padding) + padding, rows * (side + padding) + padding


def _check_grid_fits(out: Path, count: int, shown: int, nrow: int, side: int | None) -> None:
    """Refuse a JPEG grid of ``shown`` images (the first of ``count``) too large for the format."""
    if side is None or out.suffix.lower() not in (".jpg", ".jpeg"):
        return
    width, height = grid_size(shown, nrow, side)
    if max(width, height) > JPEG_MAX_SIDE:
        # beyond the cap, -n does not change the grid
        images, change = (f"-n {count} images", "-n or --nrow") if shown == count else (
            f"the grid's {shown} images (the first of -n {count})", "--nrow")
        raise ValueError(f"{images} of {side} pixels at --nrow {nrow} make a {width} x {height} grid; a JPEG --out is "
                         f"at most {JPEG_MAX_SIDE} pixels a side: change {change}, or write a .png")


@register_command("sample", help="draw new images from a trained generative model into a grid PNG or a folder of PNGs",
                  arguments=_sample_arguments)
def sample_command(args: argparse.Namespace) -> int:
    from torchvision.utils import save_image

    out, is_grid = _sample_out(args.out, args.count if args.complete is None else None, args.images_dir)
    if is_grid and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; use --overwrite to replace it")
    if not is_grid and args.images_dir:
        raise ValueError(f"--images-dir goes with a grid --out; the folder --out {out} already gets every sample as "
                         "its own PNG")
    if not is_grid and args.nrow is not None:
        raise ValueError(f"--nrow lays out a grid --out; the folder --out {out} gets every sample as its own PNG")
    nrow = args.nrow or GRID_NROW
    images_dir = out if not is_grid else (
        require_folder_or_absent(args.images_dir, "--images-dir") if args.images_dir else None)
    if is_grid and images_dir is not None and out.resolve() in (images_dir.resolve(), *images_dir.resolve().parents):
        # the samples would make a folder of the grid's name, and the grid then fail to be written, after sampling
        raise ValueError(f"--images-dir {images_dir} is --out {out} or inside it, the path the grid is written to; "
                         "give the grid and the samples separate paths")
    if is_grid and images_dir is not None and out.resolve().parent == images_dir.resolve():
        raise ValueError(f"--out {out} is in --images-dir {images_dir}, where a sample of its name would replace the "
                         "grid and `visionzoo fid` would read the grid as a sample; write the grid elsewhere")
    if images_dir is not None and not args.overwrite and holds_samples(images_dir):
        raise FileExistsError(f"{images_dir} already holds samples; use --overwrite to replace them")
    weights = _weight_source(args, "to sample from", {"--use-ema": args.use_ema, "--complete": args.complete is not None})
    if args.complete is not None:
        if not is_grid or images_dir is not None:
            raise ValueError("--complete writes a grid of completions: give a .png or .jpg --out, without --images-dir")
        return _complete_command(args, out, nrow)
    shown = min(args.count, GRID_MAX_IMAGES) if is_grid else 0  # the first samples, which the grid keeps
    device = resolve_device(args.device)
    if args.pretrained:
        setup = pretrained_for_sampling(args.model)
    else:
        setup = load_for_inference(args.model, args.checkpoint, use_ema=args.use_ema, data_free=True)
    if is_grid:  # before sampling, which may take long
        _check_grid_fits(out, args.count, shown, nrow, setup.run_meta.get("img_size"))
    settings = _sampler_settings(args)
    # before drawing: an autoregressive sampler's NaN logits fail in torch.multinomial, a generator's NaN images
    # would be refused only after the first batch
    check_finite_weights(setup.model, args.model, weights)
    model = setup.model.to(device).eval()
    autocast = autocast_context(device, args.precision)
    # a CPU generator whatever --device is: the samplers draw where it lives, so a seed draws the same numbers
    generator = torch.Generator().manual_seed(args.seed)
    grid = []
    with torch.no_grad():
        start = 0
        for size in sample_batches(args.count, args.batch_size):
            with _finite_outputs(args.model, weights, args.precision), _setting_options():
                images = setup.task.sample(model, size, generator, autocast, **settings).float()
            _require_finite_images(images, args, weights)
            images = images.clamp(0, 1)
            if images_dir is not None:
                if start == 0:  # made once the sampler took the request (a --label it refuses leaves no folder)
                    images_dir.mkdir(parents=True, exist_ok=True)
                    if args.overwrite:
                        remove_earlier_samples(images_dir)
                for index, image in enumerate(images, start):
                    save_image(image, images_dir / sample_name(index, args.count))
            if start < shown:  # a copy of the grid's part alone, so that the rest of the batch is freed
                grid.append(images if start + size <= shown else images[:shown - start].clone())
            start += size
    if is_grid:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.cat(grid), out, nrow=nrow, padding=GRID_PADDING, pad_value=1.0)
    if images_dir is not None:
        if is_grid and shown == args.count:
            print(f"{args.count} images in {images_dir}")
        _note_other_images(images_dir, "--images-dir" if is_grid else "--out folder")
    if shown < args.count and is_grid:
        print(f"the first {shown} of the {args.count} samples of {args.model} in {out} (a grid holds at most "
              f"{GRID_MAX_IMAGES} images); all {args.count} are in {images_dir}")
    else:
        print(f"{args.count} sample{'' if args.count == 1 else 's'} of {args.model} in {out}")
    return 0


# Image files `sample --complete FOLDER` reads.
COMPLETE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _complete_command(args: argparse.Namespace, out: Path, nrow: int) -> int:
    """``sample --complete``: a grid of the first -n images of a split of the run's data or of a folder, their top
    halves and the model's completions of them (:meth:`AutoregressiveTask.complete`)."""
    from visionzoo.data.factory import SPLITS, MissingSplitError
    from visionzoo.train.autoregressive import COMPLETIONS, MIN_CELL, save_completions

    source = args.complete
    if source in SPLITS:  # the split's data, opened as eval opens them
        try:
            setup = load_for_inference(args.model, args.checkpoint, use_ema=args.use_ema, split=source)
        except MissingSplitError as error:  # the split to give is one of --complete, not of eval's --split
            error.option = "--complete"
            raise
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"--complete {source} is neither a split of the run's data ({', '.join(SPLITS)}) nor a "
                             "folder of PNG or JPEG files")
        setup = load_for_inference(args.model, args.checkpoint, use_ema=args.use_ema, data_free=True)
    if not hasattr(setup.model, "complete") or not hasattr(setup.task, "complete"):
        from visionzoo.train.autoregressive import image_gpts

        raise ValueError(f"--complete: {args.model} draws images, it does not complete them; Image GPT does "
                         f"({', '.join(image_gpts())})")
    model = setup.model
    if source in SPLITS:
        dataset = setup.splits[source]
        count, what = min(args.count, len(dataset)), f"the {source} split of {setup.run_meta['data']}"
        _note_same_images(setup.run_meta["data"], source)
    else:
        files = sorted(path for path in folder.iterdir() if path.suffix.lower() in COMPLETE_SUFFIXES and path.is_file())
        if not files:
            raise ValueError(f"--complete {source} holds no PNG or JPEG files")
        files = files[:args.count]
        count, what = len(files), source
    if count > GRID_MAX_IMAGES:  # before they are read
        asked = f"-n {count} images" if count == args.count else f"the {count} images"
        raise ValueError(f"--complete: {asked} of {what} are more than the {GRID_MAX_IMAGES} a grid of completions "
                         f"holds; give -n {GRID_MAX_IMAGES} or fewer")
    if source in SPLITS:
        images, labels = setup.task.collate([dataset[i] for i in range(count)])
    else:
        images, labels = load_images(files, model.img_size, model.in_chans), None
    nrow = min(nrow, count)  # as sample's grids: no column of white cells past the images
    side = model.img_size * max(1, -(-MIN_CELL // model.img_size))  # as save_completions enlarges them
    rows = -(-count // nrow) * (2 + COMPLETIONS)
    width, height = grid_size(rows * nrow, nrow, side)
    if out.suffix.lower() in (".jpg", ".jpeg") and max(width, height) > JPEG_MAX_SIDE:  # else Pillow fails, after it all
        raise ValueError(f"--complete: {count} images at --nrow {nrow} make a grid of {rows} rows of {side} px cells, "
                         f"{width} x {height} pixels; a JPEG --out is at most {JPEG_MAX_SIDE} pixels a side: change -n "
                         "or --nrow, or write a .png")
    settings = _sampler_settings(args)
    check_finite_weights(model, args.model, args.checkpoint)
    device = resolve_device(args.device)
    model = model.to(device).eval()
    generator = torch.Generator().manual_seed(args.seed)
    with _finite_outputs(args.model, args.checkpoint, args.precision), _setting_options():
        cells = setup.task.complete(model, images, labels, generator, autocast_context(device, args.precision),
                                    columns=nrow, batch_size=args.batch_size, **settings)
    _require_finite_images(cells, args, args.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_completions(cells, out, nrow)
    fewer = f" (it has {count}, fewer than -n {args.count})" if count < args.count and source in SPLITS else ""
    row = (f"{nrow} images, a row of their top halves and {COMPLETIONS} rows of completions of each" if nrow > 1 else
           f"1 image, a row of its top half and {COMPLETIONS} rows of completions of it")
    print(f"{count} image{'' if count == 1 else 's'} of {what}{fewer} completed by {args.model} in {out}: a row of "
          f"{row}, in turn")
    return 0
