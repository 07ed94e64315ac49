"""The detectors' input transform: resizing at the limits of min_size / max_size."""

import pytest
import torch

from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.detection.transform import DetectionTransform
from visionzoo.models import create_model


def test_an_image_too_thin_for_max_size_is_named_and_one_just_wide_enough_is_resized():
    # before: interpolate's RuntimeError "Input and output sizes should be greater than 0, but got input
    # (H: 2, W: 300) output (H: 0, W: 128)", a traceback from `visionzoo predict` naming no image
    transform = DetectionTransform(128, 128, IMAGENET_MEAN, IMAGENET_STD).eval()
    batch, _ = transform([torch.rand(3, 3, 384), torch.rand(3, 384, 3)])
    assert batch.image_sizes == [(1, 128), (128, 1)]
    with pytest.raises(ValueError, match=r"image 1 of 2×300 px is too thin to detect in: .* max_size 128"):
        transform([torch.rand(3, 64, 64), torch.rand(3, 2, 300)])
    model = create_model("fasterrcnn_resnet18_fpn", num_classes=3, min_size=64, max_size=96).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"image 0 of 300×1 px is too thin"):
        model([torch.rand(3, 300, 1)])
