"""visionzoo.detection: region proposals and the R-CNN family of detectors (torchvision's API)."""

from visionzoo.detection.faster_rcnn import FasterRCNN, fpn_backbone
from visionzoo.detection.proposals import selective_search, sliding_windows
from visionzoo.detection.rcnn import RCNN, FastRCNN

__all__ = ["RCNN", "FastRCNN", "FasterRCNN", "fpn_backbone", "selective_search", "sliding_windows"]
