"""visionzoo.metrics: COCO and VOC detection evaluation, Fréchet distance.

- :func:`coco_evaluate` (pycocotools' numbers, vectorised; ``coco.evaluate/accumulate/summarize``
  for the steps) and :class:`MeanAveragePrecision` (torchmetrics-style accumulator over tensors);
- :func:`voc_ap` and :func:`voc_evaluate` (the PASCAL VOC devkit's AP);
- :func:`frechet_distance` (FID's formula) and :class:`FeatureStatistics` (float64 running mean
  and covariance of features); :class:`FID` and :class:`InceptionFeatures` (pytorch-fid's network, the
  legacy or clean-fid resize), :func:`kernel_inception_distance`, :func:`inception_score` and
  :func:`fid_confidence_interval` (a bootstrap interval for FID);
- :func:`linear_probe_accuracy` (a logistic regression on standardised frozen features).
"""

from visionzoo.metrics._masks import mask_iou
from visionzoo.metrics.coco import coco_evaluate
from visionzoo.metrics.fid import FID
from visionzoo.metrics.frechet import FeatureStatistics, frechet_distance
from visionzoo.metrics.inception import InceptionFeatures
from visionzoo.metrics.mean_ap import MeanAveragePrecision
from visionzoo.metrics.probe import linear_probe_accuracy
from visionzoo.metrics.sample_quality import (
    fid_confidence_interval,
    inception_score,
    kernel_inception_distance,
)
from visionzoo.metrics.voc import voc_ap, voc_evaluate

__all__ = [
    "FID",
    "FeatureStatistics",
    "InceptionFeatures",
    "MeanAveragePrecision",
    "coco_evaluate",
    "fid_confidence_interval",
    "frechet_distance",
    "inception_score",
    "kernel_inception_distance",
    "linear_probe_accuracy",
    "mask_iou",
    "voc_ap",
    "voc_evaluate",
]
