"""visionzoo.detection: region proposals and the R-CNN family of detectors (torchvision's API)."""

from visionzoo.detection.faster_rcnn import FasterRCNN, fpn_backbone
from visionzoo.detection.proposals import selective_search

__all__ = ["FasterRCNN", "fpn_backbone", "selective_search"]
