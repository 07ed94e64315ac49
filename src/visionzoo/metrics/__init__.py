"""visionzoo.metrics: COCO and VOC detection evaluation, Fréchet distance."""

from visionzoo.metrics.coco import coco_evaluate
from visionzoo.metrics.mean_ap import MeanAveragePrecision

__all__ = ["MeanAveragePrecision", "coco_evaluate"]
