"""Object detection as a training task: a detector's own loss dict, COCO mAP on evaluation.

The model (any registered ``task="detection"`` model, e.g. ``fasterrcnn_shapes``) takes a list of
images in [0, 1] and target dicts, and returns its losses in train mode (their sum is optimised);
in eval mode it returns ``{boxes, labels, scores}`` per image, scored here with COCO's metrics
(``map`` = mAP@[.5:.95], ``map_50``, ``map_75``, per-class AP). Training images are flipped left-right
at random with their boxes; scale jitter is the detector's own (``min_size`` as a tuple).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from visionzoo.train.task import Setup, Task, register_task


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mirror ``image`` Tensor[C, H, W] left-right and its ``target["boxes"]`` Tensor[N, 4] xyxy with it."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
    return image.flip(-1), target


@register_task("detection")
class DetectionTask(Task):
    """Train and evaluate a detector on a detection dataset (Shapes, or a COCO folder).

    Args:
        classes: the object class names (label ``i`` is ``classes[i - 1]``; 0 is the background).
        flip: probability of a horizontal flip of a training image.
    """

    metric = "map"
    higher_is_better = True
    defaults = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 8, "epochs": 4, "ema_decay": 0.0}

    def __init__(self, classes: Sequence[str], flip: float = 0.5):
        super().__init__()
        self.classes = list(classes)
        self.flip = flip

    def collate(self, samples: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        images = [image for image, _ in samples]
        targets = [{"boxes": target["boxes"].float(), "labels": target["labels"].long()} for _, target in samples]
        return images, targets

    def training_step(self, model: nn.Module, batch: Any, optimizer: str) -> dict[str, torch.Tensor]:
        images, targets = batch
        flips = torch.rand(len(images), generator=self.generator) < self.flip
        pairs = [hflip(image, target) if flip else (image, target) for image, target, flip in zip(images, targets, flips)]
        losses = model([image for image, _ in pairs], [target for _, target in pairs])
        return {"loss": sum(losses.values()), **{name: value.detach() for name, value in losses.items()}}

    @torch.no_grad()
    def detect(self, model: nn.Module, images: Sequence[torch.Tensor], autocast: Callable[[], Any]
               ) -> list[dict[str, torch.Tensor]]:
        device = next(model.parameters()).device
        with autocast():
            detections = model([image.to(device) for image in images])
        return [{key: value.float().cpu() if value.is_floating_point() else value.cpu() for key, value in d.items()}
                for d in detections]

    def evaluate(self, model: nn.Module, dataset: Dataset, batch_size: int,
                 autocast: Callable[[], Any]) -> dict[str, float]:
        from visionzoo.metrics import MeanAveragePrecision

        metric = MeanAveragePrecision(class_metrics=True)
        for images, targets in self.batches(dataset, batch_size):
            metric.update(self.detect(model, images, autocast), targets)
        result = metric.compute()
        metrics = {name: float(result[name]) for name in ("map", "map_50", "map_75", "map_small", "map_medium",
                                                          "map_large", "mar_100")}
        for label, ap in zip(result["classes"].tolist(), result["map_per_class"].tolist()):
            if 1 <= label <= len(self.classes):
                metrics[f"ap/{self.classes[label - 1]}"] = float(ap)
        return metrics

    def predict(self, model: nn.Module, images: torch.Tensor, autocast: Callable[[], Any]) -> list[dict[str, Any]]:
        """Detections of each image of ``images`` (Tensor[B, 3, H, W] or a list of Tensor[3, H, W]):
        ``boxes`` (list of [x1, y1, x2, y2]), ``labels`` (class names), ``scores``."""
        return [{"boxes": d["boxes"].tolist(), "labels": [self.classes[i - 1] for i in d["labels"].tolist()],
                 "label_ids": d["labels"].tolist(), "scores": d["scores"].tolist()}
                for d in self.detect(model, list(images), autocast)]

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
    def setup(cls, model_name: str, data: str, img_size: int | None, model_args: Mapping[str, Any],
              checkpoint: str | Path | None = None, options: Mapping[str, Any] | None = None) -> Setup:
        from visionzoo.data import create_dataset
        from visionzoo.models import create_model

        splits = {split: create_dataset(data, split, image_size=img_size) for split in ("train", "val")}
        try:
            splits["test"] = create_dataset(data, "test", image_size=img_size)
        except FileNotFoundError:  # a COCO folder may have no test annotations
            pass
        classes = list(splits["train"].classes)
        model = create_model(model_name, checkpoint=checkpoint, num_classes=len(classes) + 1, **model_args)
        image, _ = splits["train"][0]
        run_meta = {"data": data, "img_size": int(image.shape[-1]), "in_chans": int(image.shape[0])}
        return Setup(cls(classes), model, splits, run_meta)
