"""The detectors' input transform: resizing at the limits of min_size / max_size."""

import re

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


@pytest.mark.parametrize(("name", "args", "message"), [
    ("fastrcnn_shapes", {"min_size": 0}, "min_size must be a positive integer or a list of them, got 0"),
    ("fastrcnn_shapes", {"min_size": -3}, "min_size must be a positive integer or a list of them, got -3"),
    ("fastrcnn_shapes", {"min_size": (0, 128)}, "min_size must be a positive integer or a list of them, got (0, 128)"),
    # a fractional size is refused first by the constructor's annotation check
    ("fastrcnn_shapes", {"min_size": (96.5, 128)}, "min_size must be an integer or a sequence of integers, got (96.5"),
    ("fasterrcnn_shapes", {"min_size": 0}, "min_size must be a positive integer or a list of them, got 0"),
    ("fasterrcnn_shapes", {"max_size": 0}, "max_size must be a positive integer, got 0"),
])
def test_a_size_that_is_no_positive_integer_is_refused_when_the_detector_is_built(name, args, message):
    """--model-arg min_size=0 (or -3, or a scale-jitter list holding 0) built the detector and ended training at the
    first image in interpolate's RuntimeError 'Input and output sizes should be greater than 0', a traceback; and
    max_size=0 said of every image that it was 'too thin to detect in'."""
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model(name, **args)


@pytest.mark.parametrize(("args", "message"), [
    ({"image_mean": [0.5]}, "image_mean must be 3 numbers, one per RGB channel, got [0.5]"),
    ({"image_std": [0.2, 0.2]}, "image_std must be 3 numbers, one per RGB channel, got [0.2, 0.2]"),
    ({"image_std": [0.2, 0.0, 0.2]}, "image_std must be positive, got [0.2, 0.0, 0.2]"),
])
def test_a_normalisation_that_is_not_one_number_per_rgb_channel_is_refused_when_built(args, message):
    """--model-arg image_mean=[0.5] built the detector and refused every RGB image with 'image 0 must be
    Tensor[1, H, W], got (3, 32, 32)', as if the image were wrong, and a zero std made the inputs infinite."""
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("fastrcnn_shapes", **args)
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("fasterrcnn_shapes", **args)


@pytest.mark.parametrize("name", ["fasterrcnn_shapes", "fastrcnn_shapes", "rcnn_shapes"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_image_with_nan_or_infinite_values_is_refused_naming_it(name, value):
    """An image with a NaN (or inf) pixel went through the detector without a word: no detections from Faster
    R-CNN, 100 meaningless ones from (Fast) R-CNN, and NaN losses in training."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    image = torch.rand(3, 64, 64)
    image[1, 5, 7] = value
    with pytest.raises(ValueError, match=r"^image 1 has 1 NaN or infinite value"), torch.no_grad():
        model.eval()([torch.rand(3, 64, 64), image])
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"^image 0 has 1 NaN or infinite value"):
        model.train()([image], [target])


def test_images_that_require_gradients_get_torchvisions_gradients():
    """An image that requires gradients (a saliency map, an adversarial attack on a detector) ended in
    torch's 'A view was created in no_grad mode and is being modified inplace' as it was padded into the batch,
    in eval and train mode alike; torchvision's transform passes the gradient through."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 50, 70, generator=generator), torch.rand(3, 64, 40, generator=generator)]
    weights = torch.rand(2, 3, 96, 128, generator=generator)
    grads = []
    for transform in (DetectionTransform(64, 96, IMAGENET_MEAN, IMAGENET_STD),
                      GeneralizedRCNNTransform(64, 96, IMAGENET_MEAN, IMAGENET_STD)):
        inputs = [image.clone().requires_grad_(True) for image in images]
        batch = transform.eval()(inputs)[0]
        (batch.tensors * weights[:, :, : batch.tensors.shape[-2], : batch.tensors.shape[-1]]).sum().backward()
        grads.append([image.grad for image in inputs])
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)
    model = create_model("fasterrcnn_resnet18_fpn", num_classes=3, min_size=64, max_size=96)
    image = images[0].clone().requires_grad_(True)
    model.eval()([image])[0]["scores"].sum().backward()
    losses = model.train()([image], [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    assert image.grad is not None and bool(image.grad.abs().sum() > 0)


@pytest.mark.parametrize("name", ["fasterrcnn_shapes", "fastrcnn_shapes"])
def test_a_normalisation_given_as_a_numpy_array_is_taken(name):
    """image_mean=np.array([0.485, 0.456, 0.406]) (a preprocessing config's, as torchvision takes any 3 numbers)
    passed the detector's argument check and was then refused as 'image_mean must be 3 numbers, one per RGB
    channel, got array([0.485, 0.456, 0.406])': three numbers said not to be three numbers."""
    import numpy as np

    model = create_model(name, image_mean=np.array(IMAGENET_MEAN), image_std=np.array(IMAGENET_STD, dtype=np.float32))
    assert model.transform.image_mean == pytest.approx(IMAGENET_MEAN)
    assert model.transform.image_std == pytest.approx(IMAGENET_STD)
    assert all(type(value) is float for value in model.transform.image_mean + model.transform.image_std)
    with pytest.raises(ValueError, match=re.escape("image_mean must be 3 numbers, one per RGB channel, got array([0.5")):
        create_model(name, image_mean=np.array([0.5, 0.5]))
