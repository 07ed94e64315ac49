"""visionzoo.metrics: COCO and VOC detection evaluation, Fréchet distance."""

from visionzoo.metrics.coco import coco_evaluate

__all__ = ["coco_evaluate"]
