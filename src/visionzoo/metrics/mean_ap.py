"""``MeanAveragePrecision``: a torchmetrics-style COCO mAP accumulator over per-image tensors.

``update(preds, targets)`` takes one dict per image; ``compute()`` runs :mod:`visionzoo.metrics.coco`
on everything seen, ``precision_recall(iou)`` gives the per-class curves behind AP at one IoU. The
conversion follows torchmetrics' (``backend="faster_coco_eval"``) so the numbers are the same: boxes
go to xywh in their own dtype, masks to :class:`~visionzoo.data.masks.Rle` (the codec ``segm`` is evaluated
with), a target's area is its ``area`` entry when positive and otherwise its mask's pixel count when
``"segm"`` is among the iou types (for the ``bbox`` numbers too, as a COCO annotation has one area), else
``w * h``; a prediction's area is ``w * h`` for ``bbox`` and its mask's for ``segm``; categories are the
labels seen, and the summary reads every AP at the largest max-detections threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from visionzoo.data.masks import Rle, rle_area, rle_from_mask
from visionzoo.metrics.coco import (
    DEFAULT_AREA_RANGES,
    CocoDetections,
    CocoGroundTruth,
    accumulate,
    evaluate,
    make_params,
    per_category,
    summarize,
)

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
IOU_TYPES = ("bbox", "segm")
_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def _to_xywh(boxes: Tensor, box_format: str) -> Tensor:
    """Tensor[N, 4] in ``box_format`` -> Tensor[N, 4] xywh, computed in the boxes' dtype."""
    if box_format == "xywh":
        return boxes
    if box_format == "cxcywh":
        cx, cy, w, h = boxes.unbind(-1)
        boxes = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def _as_numpy(value: Tensor, name: str, index: int, side: str) -> np.ndarray:
    if not isinstance(value, Tensor):
        raise ValueError(f"{side} {index}: {name!r} must be a Tensor, got {type(value).__name__}")
    value = value.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()  # NumPy has no bfloat16


def _masks(masks: Tensor, index: int, side: str) -> tuple[list[Rle], tuple[int, int] | None]:
    """Tensor[N, H, W] (bool, or 0 and 1 in any dtype) -> N :class:`Rle` and (H, W) (None for an empty tensor
    without them)."""
    if not isinstance(masks, Tensor):
        raise ValueError(f"{side} {index}: 'masks' must be a Tensor, got {type(masks).__name__}")
    if masks.numel() == 0 and masks.ndim != 3:
        return [], None
    if masks.ndim != 3:
        mask_rcnn = masks.ndim == 4 and masks.shape[1] == 1
        hint = "; torchvision's Mask R-CNN gives masks [N, 1, H, W]: take masks[:, 0]" if mask_rcnn else ""
        raise ValueError(f"{side} {index}: 'masks' must be [N, H, W], got {list(masks.shape)}{hint}")
    array = masks.detach().cpu()
    array = (array.float() if array.dtype == torch.bfloat16 else array).numpy()
    rles = [rle_from_mask(mask, f"{side} {index}: 'masks' {j}") for j, mask in enumerate(array)]
    return rles, (int(masks.shape[1]), int(masks.shape[2]))


class MeanAveragePrecision:
    """COCO mAP over images given one at a time, as ``torchmetrics.detection.MeanAveragePrecision``.

    Args:
        box_format: ``"xyxy"`` (default), ``"xywh"`` or ``"cxcywh"``.
        iou_type: ``"bbox"`` (default, box IoU), ``"segm"`` (mask IoU) or a tuple of both (both evaluated, each
            result key prefixed ``bbox_`` / ``segm_`` in the tuple's order).
        iou_thresholds / rec_thresholds: default torchmetrics' (``torch.linspace`` in float32: 0.5:0.05:0.95
            and 0:0.01:1).
        max_detection_thresholds: three ints, default ``[1, 10, 100]``.
        class_metrics: also return ``map_per_class`` and ``mar_{max}_per_class``.
        average: ``"macro"`` (mean over classes) or ``"micro"`` (all classes pooled as one).

    ``update(preds, targets)``: per image, ``preds[i] = {"boxes": Tensor[N, 4], "masks": Tensor[N, H, W] bool,
    "scores": Tensor[N], "labels": Tensor[N] int}`` and ``targets[i] = {"boxes": Tensor[M, 4], "masks":
    Tensor[M, H, W] bool, "labels": Tensor[M] int, optional "iscrowd": Tensor[M], optional "area": Tensor[M]}``;
    ``boxes`` are needed for ``bbox`` and ``masks`` (of the image's size, 0 and 1 in any dtype) for ``segm``,
    each ignored otherwise. NaN scores or non-finite boxes raise ValueError; empty tensors are fine. A box with
    x2 <= x1 or y2 <= y1 overlaps nothing; as a prediction it is a false positive, or ignored when its area
    (x2 - x1) * (y2 - y1) is negative (pycocotools' and torchmetrics' rule: a negative area is outside every
    area range). Every image counts, with or without objects or predictions (torchmetrics' ``"segm"`` alone
    leaves out the images without masks: predictions on an image without objects are not false positives
    there, and no mask at all gives -1; its ``("bbox", "segm")`` counts them, and its ``segm_`` numbers are
    ours).

    ``compute() -> dict[str, Tensor]``: float32 scalars ``map, map_50, map_75, map_small, map_medium,
    map_large, mar_1, mar_10, mar_100, mar_small, mar_medium, mar_large`` (the mar names follow
    ``max_detection_thresholds``; -1 where undefined), ``classes`` int32[C] (sorted labels seen) and,
    with ``class_metrics``, ``map_per_class`` / ``mar_100_per_class`` float32[C], else -1. As torchmetrics
    squeezes every one-element result, these three are 0-d tensors where C is 1 (and the per-class ones
    where ``class_metrics`` is off): read them with ``.reshape(-1)``. Before any image, as torchmetrics,
    there are no per-class entries and ``classes`` is int32[0]. With both iou types every key but
    ``classes`` is there twice, as ``bbox_map``, ``segm_map``, ...
    """

    def __init__(
        self,
        box_format: str = "xyxy",
        iou_type: str | Sequence[str] = "bbox",
        iou_thresholds: Sequence[float] | None = None,
        rec_thresholds: Sequence[float] | None = None,
        max_detection_thresholds: Sequence[int] | None = None,
        class_metrics: bool = False,
        average: str = "macro",
    ) -> None:
        if box_format not in BOX_FORMATS:
            raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
        iou_types = (iou_type,) if isinstance(iou_type, str) else tuple(iou_type) if isinstance(iou_type, Sequence) else ()
        if not iou_types or any(t not in IOU_TYPES for t in iou_types):
            raise ValueError(f"iou_type must be 'bbox', 'segm' or a tuple of them, got {iou_type!r}")
        if average not in ("macro", "micro"):
            raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")
        max_dets = (
            [1, 10, 100]
            if max_detection_thresholds is None
            else sorted(int(m) for m in max_detection_thresholds)
        )
        if len(max_dets) != 3:
            raise ValueError(f"max_detection_thresholds needs exactly 3 values, got {max_dets}")
        ious = torch.linspace(0.5, 0.95, 10).tolist() if iou_thresholds is None else list(iou_thresholds)
        recs = torch.linspace(0.0, 1.0, 101).tolist() if rec_thresholds is None else list(rec_thresholds)
        self.iou_type = iou_types
        self._params = {t: make_params(t, ious, max_dets, None, recs) for t in iou_types}
        self.params = self._params[iou_types[0]]
        self.box_format = box_format
        self.class_metrics = class_metrics
        self.average = average
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        self._pred_boxes: list[Tensor] = []
        self._pred_masks: list[list[Rle]] = []
        self._pred_rest: list[tuple[np.ndarray, np.ndarray]] = []  # scores, labels
        self._target_boxes: list[Tensor] = []
        self._target_masks: list[list[Rle]] = []
        self._target_rest: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # labels, crowd, area

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:
        """Add images: ``preds[i]`` and ``targets[i]`` describe the same image (see the class docstring).

        Inputs are checked and copied here (masks as run lengths); the box conversion waits for :meth:`compute`,
        where it runs once on all boxes (per dtype) with the same arithmetic as per image.
        """
        if not isinstance(preds, Sequence) or not isinstance(targets, Sequence):
            raise ValueError("preds and targets must be lists of dicts, one per image")
        if len(preds) != len(targets):
            raise ValueError(
                f"preds and targets must have the same length, got {len(preds)} and {len(targets)}"
            )
        objects = tuple(key for t, key in (("bbox", "boxes"), ("segm", "masks")) if t in self.iou_type)
        new = []
        for i, (pred, target) in enumerate(zip(preds, targets)):
            for side, item, keys in (
                ("preds", pred, (*objects, "scores", "labels")),
                ("targets", target, (*objects, "labels")),
            ):
                if not isinstance(item, dict):
                    raise ValueError(f"{side} {i} must be a dict, got {type(item).__name__}")
                missing = [k for k in keys if k not in item]
                if missing:
                    raise ValueError(f"{side} {i} has no {missing[0]!r}")
            checked_pred, checked_target = self._check_pred(pred, i), self._check_target(target, i)
            (_, p_masks, p_size, _), (_, t_masks, t_size, _) = checked_pred, checked_target
            if p_masks and t_masks and p_size != t_size:
                raise ValueError(f"image {i}: the preds' 'masks' are {p_size[0]}x{p_size[1]} but the targets' "
                                 f"{t_size[0]}x{t_size[1]}")
            new.append((checked_pred, checked_target))
        for (p_boxes, p_masks, _, p_rest), (t_boxes, t_masks, _, t_rest) in new:
            self._pred_boxes.append(p_boxes)
            self._pred_masks.append(p_masks)
            self._pred_rest.append(p_rest)
            self._target_boxes.append(t_boxes)
            self._target_masks.append(t_masks)
            self._target_rest.append(t_rest)

    @staticmethod
    def _boxes(boxes: Tensor, index: int, side: str) -> Tensor:
        if not isinstance(boxes, Tensor):
            raise ValueError(f"{side} {index}: 'boxes' must be a Tensor, got {type(boxes).__name__}")
        # a copy: the boxes wait for compute(), and the caller may reuse or rescale its tensors in place meanwhile
        boxes = boxes.detach().to("cpu", copy=True)
        if boxes.numel() == 0:
            return boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{side} {index}: 'boxes' must be [N, 4], got {list(boxes.shape)}")
        values = boxes.numpy() if boxes.dtype != torch.bfloat16 else boxes.float().numpy()
        if not np.isfinite(values).all():
            raise ValueError(f"{side} {index}: 'boxes' has non-finite values")
        return boxes

    def _objects(
        self, item: dict[str, Tensor], index: int, side: str
    ) -> tuple[Tensor, list[Rle], tuple[int, int] | None, str]:
        """The item's boxes Tensor[N, 4] (zeros without ``bbox``), masks (none without ``segm``), mask size and the
        name of what was counted ("boxes" or "masks")."""
        masks, size = _masks(item["masks"], index, side) if "segm" in self.iou_type else ([], None)
        if "bbox" not in self.iou_type:
            return torch.zeros(len(masks), 4), masks, size, "masks"
        boxes = self._boxes(item["boxes"], index, side)
        if "segm" in self.iou_type and len(boxes) != len(masks):
            raise ValueError(f"{side} {index}: {len(boxes)} boxes but {len(masks)} masks")
        return boxes, masks, size, "boxes"

    @staticmethod
    def _labels(labels: Tensor, n: int, index: int, side: str, counted: str) -> np.ndarray:
        out = _as_numpy(labels, "labels", index, side).reshape(-1)
        if out.size and not np.issubdtype(out.dtype, np.integer):
            raise ValueError(f"{side} {index}: 'labels' must be integers, got {labels.dtype}")
        if len(out) != n:
            raise ValueError(f"{side} {index}: {n} {counted} but {len(out)} labels")
        return out.astype(np.int64)

    def _check_pred(self, pred: dict[str, Tensor], index: int) -> tuple:
        boxes, masks, size, counted = self._objects(pred, index, "preds")
        n = len(boxes)
        scores = _as_numpy(pred["scores"], "scores", index, "preds").reshape(-1).astype(np.float64)
        if len(scores) != n:
            raise ValueError(f"preds {index}: {n} {counted} but {len(scores)} scores")
        if np.isnan(scores).any():
            raise ValueError(f"preds {index}: 'scores' has NaN at {int(np.flatnonzero(np.isnan(scores))[0])}")
        return boxes, masks, size, (scores, self._labels(pred["labels"], n, index, "preds", counted))

    def _check_target(self, target: dict[str, Tensor], index: int) -> tuple:
        boxes, masks, size, counted = self._objects(target, index, "targets")
        n = len(boxes)
        labels = self._labels(target["labels"], n, index, "targets", counted)
        crowd = np.zeros(n, dtype=bool)
        if "iscrowd" in target:
            crowd = _as_numpy(target["iscrowd"], "iscrowd", index, "targets").reshape(-1).astype(bool)
            if len(crowd) != n:
                raise ValueError(f"targets {index}: {n} {counted} but {len(crowd)} iscrowd flags")
        area = np.zeros(n)  # 0: from the mask or the box
        if "area" in target:
            area = _as_numpy(target["area"], "area", index, "targets").reshape(-1).astype(np.float64)
            if len(area) != n:
                raise ValueError(f"targets {index}: {n} {counted} but {len(area)} areas")
        return boxes, masks, size, (labels, crowd, area)

    def _xywh(self, boxes: list[Tensor]) -> np.ndarray:
        """All boxes as float64 [N, 4] xywh, converted in their own dtype (one pass per dtype run)."""
        dtypes = {b.dtype for b in boxes if len(b)}
        if len(dtypes) > 1:
            return np.concatenate([self._xywh([b]) for b in boxes] + [np.zeros((0, 4))])
        dtype = dtypes.pop() if dtypes else torch.float32
        if not (dtype.is_floating_point or dtype in (torch.int32, torch.int64)):
            dtype = torch.float32
        joined = torch.cat([b.to(dtype) for b in boxes]) if boxes else torch.zeros(0, 4)
        return _to_xywh(joined, self.box_format).double().numpy().reshape(-1, 4)

    def _datasets(self, iou_type: str, average: str | None = None) -> tuple[CocoGroundTruth, CocoDetections, np.ndarray]:
        """Everything seen as COCO columns for ``iou_type``, labels pooled into one class for ``average="micro"``
        (default: the metric's)."""
        n_images = len(self._pred_rest)
        image_ids = np.arange(n_images)
        counts_p = [len(r[0]) for r in self._pred_rest]
        counts_t = [len(r[0]) for r in self._target_rest]
        p_labels = np.concatenate([r[1] for r in self._pred_rest] + [np.zeros(0, np.int64)])
        t_labels = np.concatenate([r[0] for r in self._target_rest] + [np.zeros(0, np.int64)])
        classes = np.unique(np.concatenate([p_labels, t_labels]))
        if (average or self.average) == "micro":
            p_labels, t_labels = np.zeros_like(p_labels), np.zeros_like(t_labels)
        categories = np.unique(np.concatenate([p_labels, t_labels]))
        t_boxes = self._xywh(self._target_boxes)
        t_masks = [m for masks in self._target_masks for m in masks]
        given_area = np.concatenate([r[2] for r in self._target_rest] + [np.zeros(0)])
        # one area per object, as in a COCO file: the mask's whenever there are masks, for the bbox numbers too
        own_area = rle_area(t_masks) if "segm" in self.iou_type else t_boxes[:, 2] * t_boxes[:, 3]
        gt = CocoGroundTruth(
            image_ids=image_ids,
            category_ids=categories,
            category_names=tuple(str(c) for c in categories.tolist()),
            image=np.repeat(image_ids, counts_t),
            category=np.searchsorted(categories, t_labels),
            boxes=t_boxes,
            area=np.where(given_area > 0, given_area, own_area),
            iscrowd=np.concatenate([r[1] for r in self._target_rest] + [np.zeros(0, bool)]),
            ids=np.arange(1, len(t_labels) + 1),
            masks=t_masks if iou_type == "segm" else None,
        )
        p_boxes = self._xywh(self._pred_boxes)
        p_masks = [m for masks in self._pred_masks for m in masks]
        dt = CocoDetections(
            image=np.repeat(image_ids, counts_p),
            category=np.searchsorted(categories, p_labels),
            boxes=p_boxes,
            scores=np.concatenate([r[0] for r in self._pred_rest] + [np.zeros(0)]),
            area=rle_area(p_masks) if iou_type == "segm" else p_boxes[:, 2] * p_boxes[:, 3],
            masks=p_masks if iou_type == "segm" else None,
        )
        return gt, dt, classes

    def compute(self) -> dict[str, Tensor]:
        """The COCO numbers over every image seen so far (see the class docstring)."""
        md = self.params.max_dets
        names = [
            *_KEYS,
            f"mar_{md[0]}",
            f"mar_{md[1]}",
            f"mar_{md[2]}",
            "mar_small",
            "mar_medium",
            "mar_large",
        ]
        out = {}
        classes = np.zeros(0, np.int64)
        for iou_type in self.iou_type:
            prefix = f"{iou_type}_" if len(self.iou_type) > 1 else ""
            params = self._params[iou_type]
            gt, dt, classes = self._datasets(iou_type)
            per_class_ap = per_class_ar = np.array([-1.0])
            if not self._pred_rest:
                values = [-1.0] * 12
            else:
                arrays = accumulate(evaluate(gt, dt, params))
                values = list(summarize(arrays, params, style="faster_coco_eval").values())
                if self.class_metrics:
                    if self.average == "micro":
                        # torchmetrics evaluates each class of the un-pooled labels for the per-class numbers
                        gt, dt, _ = self._datasets(iou_type, average="macro")
                        arrays = accumulate(evaluate(gt, dt, params))
                    per_class_ap = per_category(arrays, params, max_det=md[-1])[0]
                    per_class_ar = per_category(arrays, params, max_det=md[2])[1]
            out.update({prefix + name: torch.tensor(v, dtype=torch.float32) for name, v in zip(names, values)})
            if self._pred_rest:  # torchmetrics leaves them out before any image
                out[f"{prefix}map_per_class"] = torch.tensor(per_class_ap, dtype=torch.float32)
                out[f"{prefix}mar_{md[2]}_per_class"] = torch.tensor(per_class_ar, dtype=torch.float32)
        out["classes"] = torch.tensor(classes, dtype=torch.int32)
        # torchmetrics' Metric.compute squeezes every one-element tensor to 0-d; the same keys, shapes, dtypes.
        return {name: value.reshape(()) if value.numel() == 1 else value for name, value in out.items()}

    def precision_recall(self, iou_threshold: float = 0.5, iou_type: str | None = None) -> dict[str, Tensor]:
        """Per-class precision–recall curves at one IoU threshold over every image seen (COCO's arrays).

        Matching and precision are :meth:`compute`'s (area ``all``, at most ``max_detection_thresholds[-1]``
        detections per image), at ``iou_threshold`` alone, for ``iou_type`` (one of the metric's; default its
        first). Returns ``recall`` float32[R] (the recall
        thresholds), ``precision`` float32[K, R] (interpolated: the best precision at any recall at
        least that one; 0 past the class's final recall, -1 for a class without ground truth),
        ``ap`` float32[K] (the mean of a row: the class's AP at this IoU, -1 where undefined) and
        ``classes`` int32[K] (the labels seen, sorted; with ``average="micro"`` one pooled row, label 0).
        """
        iou_type = self.iou_type[0] if iou_type is None else iou_type
        if iou_type not in self.iou_type:
            raise ValueError(f"iou_type must be one of the metric's {self.iou_type}, got {iou_type!r}")
        params = make_params(iou_type, [iou_threshold], self.params.max_dets, {"all": DEFAULT_AREA_RANGES["all"]},
                             self.params.rec_thresholds)
        gt, dt, _ = self._datasets(iou_type)
        recall = torch.tensor(params.rec_thresholds, dtype=torch.float32)
        classes = torch.tensor(gt.category_ids, dtype=torch.int32)
        if not self._pred_rest:
            return {"recall": recall, "precision": -torch.ones(0, len(recall)), "ap": -torch.ones(0), "classes": classes}
        arrays = accumulate(evaluate(gt, dt, params))
        ap, _ = per_category(arrays, params)
        return {
            "recall": recall,
            "precision": torch.tensor(arrays["precision"][0, :, :, 0, -1].T, dtype=torch.float32),
            "ap": torch.tensor(ap, dtype=torch.float32),
            "classes": classes,
        }
