"""Object detection as a training task: a detector's own loss dict, COCO mAP on evaluation.

The model (any registered ``task="detection"`` model, e.g. ``fasterrcnn_shapes``) takes a list of
images in [0, 1] and target dicts (crowd regions left out), and returns its losses in train mode
(their sum is optimised); in eval mode it returns ``{boxes, labels, scores}`` per image, scored here
with COCO's metrics (``map`` = mAP@[.5:.95], ``map_50``, ``map_75``, per-class AP; crowd regions
ignored and the data set's ``area`` splitting small/medium/large, as pycocotools does with the
annotation file). Training images are flipped left-right at random with their boxes; scale jitter is
the detector's own (``min_size`` as a tuple, which ``--scale-jitter`` sets). At the end of training the
run folder gets ``pr_curve.png`` and ``detections.png``.

Detectors over external proposals (R-CNN, Fast R-CNN: ``model.uses_external_proposals``) get each
split's Selective Search boxes computed once, cached on disk, and carried in the targets as
``"proposals"`` (flipped with the image); on new images the model computes its own.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from visionzoo.data.factory import SPLITS
from visionzoo.detection.proposal_cache import image_name
from visionzoo.detection.rcnn import ProposalDetector
from visionzoo.train.task import NonFiniteOutputError, Setup, Task, register_task

BOX_KEYS = ("boxes", "proposals")
# How a detector names an image of its batch in an error ("image 0 of 2×300 px is too thin ..."), taken off where
# the file's name takes its place.
_IN_BATCH = re.compile(r"^image \d+ (of )?")


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mirror ``image`` Tensor[C, H, W] left-right and its ``target["boxes"]`` (and ``"proposals"``)
    Tensor[N, 4] xyxy with it."""
    width = image.shape[-1]
    target = dict(target)
    for key in BOX_KEYS:
        if key in target:
            boxes = target[key]
            target[key] = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
    return image.flip(-1), target


def split_proposals(targets: Sequence[dict[str, torch.Tensor]]) -> tuple[list[dict[str, torch.Tensor]], list | None]:
    """Targets without their ``"proposals"``, and the proposals (None when the targets carry none)."""
    if not targets or "proposals" not in targets[0]:
        return list(targets), None
    return ([{k: v for k, v in t.items() if k != "proposals"} for t in targets], [t["proposals"] for t in targets])


def training_target(target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a detector trains on: ``boxes`` Tensor[N, 4] and ``labels`` Tensor[N] without the crowd regions
    (``iscrowd`` 1: one box over many objects, ignored as torchvision's COCO recipes ignore it)."""
    if "iscrowd" not in target:
        return {"boxes": target["boxes"], "labels": target["labels"]}
    keep = target["iscrowd"] == 0
    return {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}


# A target's entries for the annotations left out of training (CocoDetection's skip_invalid), by the entry
# of the scored target they join.
_SKIPPED = {"boxes": "skipped_boxes", "labels": "skipped_labels", "area": "skipped_area", "iscrowd": "skipped_iscrowd"}
# MeanAveragePrecision reads an area of 0 as none given (torchmetrics' rule) and scores the box's w * h instead; a
# target's 0 is an area, which pycocotools counts as small: the least positive float32 lies in the same area ranges.
_LEAST_AREA = torch.finfo(torch.float32).tiny


def coco_mean_ap(**options: Any):
    """A :class:`~visionzoo.metrics.MeanAveragePrecision` at pycocotools' float64 IoU and recall thresholds, so
    that eval gives pycocotools' numbers (torchmetrics' float32 ones put the 0.6 recall step at 0.60000002)."""
    from visionzoo.metrics import MeanAveragePrecision
    from visionzoo.metrics.coco import COCO_IOU_THRESHOLDS, COCO_REC_THRESHOLDS

    return MeanAveragePrecision(iou_thresholds=COCO_IOU_THRESHOLDS, rec_thresholds=COCO_REC_THRESHOLDS, **options)


def evaluation_target(target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What detections are scored against, as pycocotools scores a COCO file: the target with its
    ``unclipped_boxes`` (the file's boxes as written) as ``boxes`` where it has them, and the annotations
    left out of training for having no area in their image (``skipped_*``) added back, which no
    detection can match. An ``area`` of 0 is kept as an area (in the small range), as pycocotools keeps a file's."""
    target = dict(target)
    if "unclipped_boxes" in target:
        target["boxes"] = target.pop("unclipped_boxes")
    if "skipped_boxes" in target:
        for key, skipped in _SKIPPED.items():
            target[key] = torch.cat([target[key], target.pop(skipped)])
    if "area" in target:
        target["area"] = target["area"].masked_fill(target["area"] == 0, _LEAST_AREA)
    return target


def in_file_pixels(detection: Mapping[str, torch.Tensor], image: torch.Tensor,
                   target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``detection`` with its boxes in the pixels of the file ``target`` came from: scaled from ``image``
    Tensor[C, h, w] to the target's ``original_size`` (height, width) when the data set resized the image,
    as torchvision's detectors map boxes back to their input."""
    if "original_size" not in target:
        return dict(detection)
    height, width = target["original_size"].tolist()
    scale = torch.tensor([width / image.shape[-1], height / image.shape[-2]] * 2, dtype=detection["boxes"].dtype)
    return {**detection, "boxes": detection["boxes"] * scale}


# The target entries a data set may give beside boxes and labels, and their dtypes in a batch.
_OPTIONAL_TARGETS = {"iscrowd": torch.int64, "area": torch.float32, "proposals": torch.float32,
                     "unclipped_boxes": torch.float32, "original_size": torch.int64, "skipped_boxes": torch.float32,
                     "skipped_labels": torch.int64, "skipped_area": torch.float32, "skipped_iscrowd": torch.int64}

SCALE_JITTER_STEP = 32


def scale_jitter_sizes(text: str, eval_size: int) -> tuple[int, ...]:
    """The ``min_size`` tuple of a detector trained at the short sides ``text`` names and evaluated at ``eval_size``.

    ``text`` is ``LOW-HIGH`` (LOW to HIGH in steps of 32, as torchvision's multi-scale recipes) or a comma list
    (``96,128,160``). The detector's transform draws each training image's short side from every element
    and evaluates at the last, so ``eval_size`` goes last (and is a training size too):
    ``scale_jitter_sizes("96-160", 128) == (96, 160, 128)``. Bad text raises ValueError naming ``--scale-jitter``.
    """
    words = text.split("-") if "-" in text else text.split(",")
    try:
        numbers = [int(word) for word in words]
    except ValueError:
        raise ValueError(f"--scale-jitter must be LOW-HIGH or a comma list of sizes (e.g. 96-160 or 96,128), "
                         f"got {text!r}") from None
    if "-" in text:
        if len(numbers) != 2 or not 0 < numbers[0] < numbers[1] or (numbers[1] - numbers[0]) % SCALE_JITTER_STEP:
            raise ValueError(f"--scale-jitter LOW-HIGH needs 0 < LOW < HIGH with HIGH - LOW a multiple of "
                             f"{SCALE_JITTER_STEP}, got {text!r}")
        numbers = list(range(numbers[0], numbers[1] + 1, SCALE_JITTER_STEP))
    if min(numbers) <= 0 or len(set(numbers)) != len(numbers):
        raise ValueError(f"--scale-jitter sizes must be positive and distinct, got {text!r}")
    return tuple(size for size in numbers if size != eval_size) + (eval_size,)


def apply_scale_jitter(model: nn.Module, text: str) -> None:
    """Make ``model`` (a detector with a resizing ``transform``) train at the short sides ``text`` names (see
    :func:`scale_jitter_sizes`; its eval size, ``min_size[-1]``, is kept), recorded in its ``model_args`` so
    a checkpoint rebuilds it. A size above the long-side cap ``max_size`` could never be reached: ValueError."""
    transform = getattr(model, "transform", None)
    name = getattr(model, "model_name", type(model).__name__)
    if not getattr(transform, "min_size", None):
        raise ValueError(f"--scale-jitter: {name} does not resize its input images")
    sizes = scale_jitter_sizes(text, transform.min_size[-1])
    if max(sizes) > transform.max_size:
        raise ValueError(f"--scale-jitter: size {max(sizes)} is above {name}'s max_size {transform.max_size} "
                         f"(the long side's cap); raise it with --model-arg max_size={max(sizes)}")
    transform.min_size = sizes
    if hasattr(model, "model_args"):
        model.model_args["min_size"] = sizes


def require_detectable_sizes(dataset: Dataset, model: nn.Module, model_name: str) -> None:
    """ValueError naming the first file of ``dataset`` (a COCO folder read at its files' sizes) that ``model``'s
    transform could not resize (:meth:`~visionzoo.detection.transform.DetectionTransform.too_thin`), from the sizes
    its annotation file gives: the batch that drew it would fail mid-run, naming the image by its place in it."""
    transform = getattr(model, "transform", None)
    stored_size = getattr(dataset, "stored_size", None)
    if not hasattr(transform, "too_thin") or stored_size is None or getattr(dataset, "image_size", None) is not None:
        return
    for index in range(len(dataset)):
        width, height = stored_size(index)
        if transform.too_thin(height, width):
            raise ValueError(f"{dataset.image_path(index)}: {height}×{width} px is too thin for {model_name} to detect "
                             f"in: with its long side at max_size {transform.max_size} its short side would be under "
                             f"1 px; leave it out of {dataset.ann_file}, or give --img-size to squash every image to "
                             "that square")


def with_cached_proposals(dataset: Dataset, model: nn.Module) -> Dataset:
    """``dataset`` with ``model``'s proposals in its targets, computed (or read from the cache) at first use."""
    from visionzoo.detection.proposal_cache import WithProposals

    return WithProposals(dataset, propose=model.propose, settings=model.proposal_settings)


@register_task("detection")
class DetectionTask(Task):
    """Train and evaluate a detector on a detection dataset (Shapes, or a COCO folder).

    Args:
        classes: the object class names (label ``i`` is ``classes[i - 1]``; 0 is the background).
        flip: probability of a horizontal flip of a training image.
    """

    metric = "map"
    higher_is_better = True
    report_names = ("pr_curve.png", "detections.png")
    defaults = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8, "epochs": 4, "ema_decay": 0.0}

    def __init__(self, classes: Sequence[str], flip: float = 0.5):
        super().__init__()
        self.classes = list(classes)
        self.flip = flip
        self._last_detections = None

    def collate(self, samples: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """Images and targets: ``boxes``, ``labels`` and, where the data set gives them, ``iscrowd``,
        ``area``, ``unclipped_boxes`` and ``original_size`` (which evaluation needs: crowd regions are ignored,
        areas split small/medium/large as the file says, boxes that run outside their image are scored unclipped
        and a resized image's detections in the file's pixels, as pycocotools scores them) and ``proposals``."""
        images = [image for image, _ in samples]
        targets = [{"boxes": target["boxes"].float(), "labels": target["labels"].long(),
                    **{key: target[key].to(dtype) for key, dtype in _OPTIONAL_TARGETS.items() if key in target}}
                   for _, target in samples]
        return images, targets

    def training_step(self, model: nn.Module, batch: Any, optimizer: str) -> dict[str, torch.Tensor]:
        images, targets = batch
        flips = torch.rand(len(images), generator=self.generator) < self.flip
        pairs = [hflip(image, target) if flip else (image, target) for image, target, flip in zip(images, targets, flips)]
        targets, proposals = split_proposals([target for _, target in pairs])
        targets = [training_target(t) for t in targets]
        extra = {} if proposals is None else {"proposals": proposals}
        losses = model([image for image, _ in pairs], targets, **extra)
        return {"loss": sum(losses.values()), **{name: value.detach() for name, value in losses.items()}}

    @torch.no_grad()
    def detect(self, model: nn.Module, images: Sequence[torch.Tensor], autocast: Callable[[], Any],
               proposals: Sequence[torch.Tensor] | None = None, name_of: Callable[[int], str] | None = None
               ) -> list[dict[str, torch.Tensor]]:
        """Detections per image (on the CPU); ``proposals`` for detectors over external ones (else their own).

        Images of different sizes run in separate batches: in one batch each would be padded to the largest (as
        torchvision's GeneralizedRCNNTransform does), which moves its features near the border and so its scores,
        and an image's result would depend on the batch it came in (torchvision's reference evaluates one image at
        a time). Images of one size, as Shapes' are, still run together. With ``name_of`` (an image's index in
        ``images`` → its name, e.g. its file), an image the model refuses (ValueError) is named by it, and so is one
        a proposal detector warns of (too small for its sliding windows), rather than by its place in a group.
        """
        device = next(model.parameters()).device
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(tuple(image.shape[-2:]), []).append(index)
        results: list[dict[str, torch.Tensor]] = [{} for _ in images]
        for indices in groups.values():
            extra = {} if proposals is None else {"proposals": [proposals[i] for i in indices]}
            if name_of is not None and isinstance(model, ProposalDetector):
                extra["image_names"] = [name_of(i) for i in indices]
            try:
                with autocast():
                    detections = model([images[i].to(device) for i in indices], **extra)
            except NonFiniteOutputError:
                raise
            except ValueError:
                if name_of is None:
                    raise
                # the model numbers the image in this group of one size: run each alone to name the one it refuses
                for index in indices:
                    try:
                        self.detect(model, images[index:index + 1], autocast,
                                    None if proposals is None else proposals[index:index + 1])
                    except NonFiniteOutputError:
                        raise
                    except ValueError as error:
                        # alone, the image is the model's "image 0": the file's name says which, so the number goes
                        raise ValueError(f"{name_of(index)}: {_IN_BATCH.sub('', str(error), count=1)}") from None
                raise
            for index, found in zip(indices, detections):
                results[index] = {key: value.float().cpu() if value.is_floating_point() else value.cpu()
                                  for key, value in found.items()}
        return results

    def detect_all(self, model: nn.Module, dataset: Dataset, batch_size: int, autocast: Callable[[], Any]
                   ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
        """Detections of every image of ``dataset`` in its pixels (what is drawn), the same in the
        annotation file's pixels (what is scored: :func:`in_file_pixels`) and the evaluation targets. The
        last call's result is kept and returned again for the same model, weights and data set (the
        end-of-training evaluation and report share one pass)."""
        key = (id(model), id(dataset), sum(p._version for p in model.parameters()), model.training)
        if self._last_detections is not None and self._last_detections[0] == key:
            return self._last_detections[1]
        detections, scored, all_targets = [], [], []
        for images, targets in self.batches(dataset, batch_size):
            targets, proposals = split_proposals(targets)
            start = len(detections)
            found = self.detect(model, images, autocast, proposals, lambda i, start=start: image_name(dataset, start + i))
            detections.extend(found)
            scored.extend(in_file_pixels(d, image, t) for d, image, t in zip(found, images, targets))
            all_targets.extend(evaluation_target(target) for target in targets)
        self._last_detections = (key, (detections, scored, all_targets))
        return detections, scored, all_targets

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 autocast: Callable[[], Any]) -> dict[str, float]:
        metric = coco_mean_ap(class_metrics=True)
        _, detections, targets = self.detect_all(model, dataset, batch_size, autocast)
        metric.update(detections, targets)
        result = metric.compute()
        metrics = {name: float(result[name]) for name in ("map", "map_50", "map_75", "map_small", "map_medium",
                                                          "map_large", "mar_100")}
        # 0-d for a single class, as torchmetrics gives them
        for label, ap in zip(result["classes"].reshape(-1).tolist(), result["map_per_class"].reshape(-1).tolist()):
            if 1 <= label <= len(self.classes):
                metrics[f"ap/{self.classes[label - 1]}"] = float(ap)
        return metrics

    def report(self, model: nn.Module, dataset: Dataset, out: Path, batch_size: int,
               autocast: Callable[[], Any]) -> list[Path]:
        """``pr_curve.png``: each class's precision–recall curve at IoU 0.5 over ``dataset`` (COCO's
        interpolated precision, AP@.5 in the legend); ``detections.png``: the first 16 images with their
        detections (score ≥ 0.5) and the ground truth."""
        from visionzoo.train.drawing import grid
        from visionzoo.train.plots import plot_precision_recall

        detections, scored, targets = self.detect_all(model, dataset, batch_size, autocast)
        metric = coco_mean_ap()
        metric.update(scored, targets)
        curves = metric.precision_recall(0.5)
        names = [self.classes[label - 1] if 1 <= label <= len(self.classes) else f"label {label}"
                 for label in curves["classes"].tolist()]
        pr_curve = plot_precision_recall(curves["recall"].tolist(), curves["precision"].tolist(), names,
                                         curves["ap"].tolist(), out / "pr_curve.png")
        samples = [dataset[i] for i in range(min(16, len(dataset)))]  # drawn with the detections just scored
        pictures = out / "detections.png"
        grid([self.draw(image, self._as_prediction(detection), target)
              for (image, target), detection in zip(samples, detections)]).save(pictures)
        return [pr_curve, pictures]

    def predict(self, model: nn.Module, images: torch.Tensor, autocast: Callable[[], Any],
                image_size: int | None = None, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Detections of each image of ``images`` (Tensor[B, 3, H, W] or a list of Tensor[3, H, W]):
        ``boxes`` (list of [x1, y1, x2, y2] in the image's pixels), ``labels`` (class names), ``scores``.

        With ``image_size`` each image is first squashed to that square, as a COCO folder read with ``--img-size``
        gives the model its files in training and evaluation, and the boxes are mapped back to the image's pixels,
        as evaluation scores them (:func:`in_file_pixels`). ``names`` (their files, say) name the images in errors
        and warnings (:meth:`detect`)."""
        from visionzoo.data.coco import resize_square

        images = list(images)
        name_of = None if names is None else names.__getitem__
        if image_size is None:
            return [self._as_prediction(d) for d in self.detect(model, images, autocast, name_of=name_of)]
        squares = [resize_square(image, image_size) for image in images]
        found = self.detect(model, squares, autocast, name_of=name_of)
        return [self._as_prediction(in_file_pixels(d, square, {"original_size": torch.tensor(image.shape[-2:])}))
                for d, square, image in zip(found, squares, images)]

    def _as_prediction(self, detection: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """A detection's tensors as :meth:`predict`'s lists, with class names."""
        return {"boxes": detection["boxes"].tolist(), "labels": [self.classes[i - 1] for i in detection["labels"].tolist()],
                "label_ids": detection["labels"].tolist(), "scores": detection["scores"].tolist()}

    def describe(self, prediction: Mapping[str, Any], min_score: float = 0.0) -> str:
        """The three best detections scoring at least ``min_score``, or what the threshold left out."""
        shown = [(label, score) for label, score in zip(prediction["labels"], prediction["scores"]) if score >= min_score]
        if shown or not prediction["scores"]:
            return super().describe({"labels": [label for label, _ in shown], "scores": [score for _, score in shown]})
        return f"nothing scored {min_score:g} or more (best {max(prediction['scores']):.3f}; see --min-score)"

    def draw(self, image: torch.Tensor, prediction: Mapping[str, Any], target: Any = None, min_score: float = 0.5):
        """A PIL image: predicted boxes (score ≥ ``min_score``) with class and score, ground truth dashed-grey."""
        from visionzoo.train.drawing import draw_detections

        truth = None
        if target is not None:
            truth = (target["boxes"].tolist(), [self.classes[i - 1] for i in target["labels"].tolist()])
        keep = [i for i, score in enumerate(prediction["scores"]) if score >= min_score]
        return draw_detections(image, [prediction["boxes"][i] for i in keep], [prediction["labels"][i] for i in keep],
                               [prediction["scores"][i] for i in keep], truth)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"classes": self.classes}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("detection")
        group.add_argument("--scale-jitter", metavar="SIZES",
                           help="training short sides: LOW-HIGH in steps of 32 (e.g. 96-160) or a comma list; "
                                "evaluation keeps the model's min_size")
        group.add_argument("--skip-invalid-boxes", action="store_const", const=True, default=None,
                           help="a COCO folder's boxes with no area inside their image are left out of training "
                                "(the count is logged) instead of refused; evaluation scores them as objects not "
                                "found, as pycocotools does (eval and predict always read data so)")

    @classmethod
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None,
              splits: tuple[str, ...] = SPLITS) -> Setup:
        from visionzoo.data import Splits, builtin_name, open_splits
        from visionzoo.models import create_model

        options = options or {}
        folder_args = {}
        if builtin_name(data) is None:  # a detector reads boxes only: masks would be decoded per sample, then dropped
            folder_args = {"load_masks": False, **({"skip_invalid": True} if options.get("skip_invalid_boxes") else {})}
        splits = open_splits(data, splits, image_size=img_size, **folder_args)
        reference = splits.first()
        image, target = reference[0]
        if not isinstance(target, Mapping) or "boxes" not in target:  # else a TypeError at the first batch
            raise ValueError(f"{model_name} is a detector: it trains on boxes, and {data} gives one class label per "
                             "image; give --data shapes or a COCO folder")
        classes = list(reference.classes)
        if not classes:  # else the model's "num_classes ... must be at least 2, got 1", naming no file
            source = getattr(reference, "ann_file", data)
            raise ValueError(f"{source}: 'categories' is empty: a detector needs at least one class")
        model = create_model(model_name, checkpoint=checkpoint, num_classes=len(classes) + 1, **model_args)
        if options.get("scale_jitter"):
            apply_scale_jitter(model, options["scale_jitter"])
        for split in splits.values():
            require_detectable_sizes(split, model, model_name)
        # the side the data set resizes to (Shapes' 128, --img-size), None for a folder read at its own sizes: its
        # first image's width would have eval and --resume squash every image to that square
        run_meta = {"data": data, "img_size": getattr(reference, "image_size", None), "in_chans": int(image.shape[0])}
        if getattr(model, "uses_external_proposals", False) and model.cache_proposals:
            splits = Splits({name: with_cached_proposals(split, model) for name, split in splits.items()}, splits.missing)
        return Setup(cls(classes), model, splits, run_meta)
