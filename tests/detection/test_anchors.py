"""AnchorGenerator against torchvision's on the same feature maps."""

import re

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from visionzoo.detection.anchors import AnchorGenerator
from visionzoo.models import create_model


@pytest.mark.parametrize(("sizes", "aspect_ratios"), [((32, 64, 128), (0.5, 1.0, 2.0)), ((32, 64), ((0.5, 1.0), (2.0,)))])
def test_flat_sizes_mean_one_size_per_feature_map_as_in_torchvision(sizes, aspect_ratios):
    """AnchorGenerator(sizes=(32, 64, 128), aspect_ratios=(0.5, 1.0, 2.0)), which torchvision takes as one size per
    map with the ratios shared, raised "TypeError: 'int' object is not iterable"."""
    maps = [torch.zeros(2, 3, 64 // 2**i, 48 // 2**i) for i in range(len(sizes))]
    ours = AnchorGenerator(sizes, aspect_ratios)
    theirs = TorchvisionAnchorGenerator(sizes, aspect_ratios)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location()
    expected = theirs(ImageList(torch.zeros(2, 3, 128, 96), [(128, 96)] * 2), maps)
    for a, b in zip(ours((128, 96), maps), expected, strict=True):
        assert torch.equal(a, b)


def test_numpy_sizes_per_feature_map_are_taken_like_tuples():
    """After the flat-tuple form was accepted, per-map sizes given as a numpy array (np.array([[32, 40], [64, 80]]))
    raised "The truth value of an array with more than one element is ambiguous", and a list of numpy rows counted
    one size per map (3 anchors per location instead of 6)."""
    maps = [torch.zeros(1, 3, 8, 6), torch.zeros(1, 3, 4, 3)]
    expected = AnchorGenerator(((32, 40), (64, 80)), (0.5, 1.0, 2.0))((64, 48), maps)
    for sizes in (np.array([[32, 40], [64, 80]]), [np.array([32, 40]), np.array([64, 80])]):
        ours = AnchorGenerator(sizes, np.array([0.5, 1.0, 2.0]))
        assert ours.num_anchors_per_location() == [6, 6]
        for a, b in zip(ours((64, 48), maps), expected, strict=True):
            assert torch.equal(a, b)


def test_an_image_batch_is_taken_as_torchvisions_image_list_is():
    """torchvision's AnchorGenerator is called with the image batch (anchor_generator(image_list, feature_maps));
    ours, given one (torchvision's ImageList or our ImageBatch), raised "'ImageList' object is not subscriptable"."""
    from visionzoo.detection.transform import ImageBatch

    sizes, ratios = ((32,), (64,)), ((0.5, 1.0, 2.0),) * 2
    images = ImageList(torch.zeros(2, 3, 64, 96), [(64, 90), (60, 96)])
    maps = [torch.zeros(2, 8, 16, 24), torch.zeros(2, 8, 8, 12)]
    expected = TorchvisionAnchorGenerator(sizes, ratios)(images, maps)
    for batch in (images, ImageBatch(images.tensors, images.image_sizes), (64, 96)):
        got = AnchorGenerator(sizes, ratios)(batch, maps)
        assert len(got) == 2 and all(torch.equal(mine, theirs) for mine, theirs in zip(got, expected))


@pytest.mark.parametrize(("args", "message"), [
    ({"anchor_sizes": ((0,), (32,), (64,))}, "anchor sizes (anchor_sizes) must be positive numbers, got ((0,), (32,)"),
    ({"anchor_sizes": ((-16,), (32,), (64,))}, "anchor sizes (anchor_sizes) must be positive numbers, got ((-16,),"),
    ({"aspect_ratios": ((0.0, 1.0, 2.0),) * 3}, "aspect ratios (aspect_ratios) must be positive numbers, got ((0.0,"),
    ({"aspect_ratios": ((float("nan"), 1.0, 2.0),) * 3}, "aspect ratios (aspect_ratios) must be positive numbers"),
])
def test_anchors_of_no_size_or_no_aspect_are_refused_when_the_detector_is_built(args, message):
    # an aspect ratio of 0 made loss_rpn_box_reg NaN, a size of 0 or -16 gave anchors of no area that no box matched;
    # both trained without a word
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("fasterrcnn_shapes", **args)
