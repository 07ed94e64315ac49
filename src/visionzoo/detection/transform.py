"""A detector's input and output transform: normalise, resize, pad into one batch; boxes back to the inputs.

torchvision's GeneralizedRCNNTransform semantics: an image is scaled so that its short side is
``min_size`` unless its long side would then pass ``max_size`` (bilinear, the scale factor recomputed
from the rounded output size), normalised by ``mean``/``std``, and zero-padded at the bottom/right
into a batch whose sides are multiples of ``size_divisible``. Target boxes move with the image;
detections are scaled back to each input's size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.utils import is_integer


@dataclass
class ImageBatch:
    """Padded images ``tensors`` Tensor[B, C, H, W] and each image's size (h, w) before padding."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resize_boxes(boxes: Tensor, original_size: Sequence[int], new_size: Sequence[int]) -> Tensor:
    """``boxes`` Tensor[N, 4] xyxy scaled from an (h, w) image to a (h', w') one."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(original_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(original_size[1], dtype=torch.float32)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def detector_inputs(detector: nn.Module, images: Sequence[Tensor] | Tensor,
                    targets: Sequence[dict[str, Tensor]] | None) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """What every detector's forward starts with: the images as a list (a Tensor[B, 3, H, W] is split),
    their (H, W) sizes, and in train mode the targets checked (see :func:`check_targets`); an image that is
    not a Tensor, has no pixels or holds a NaN or infinite value is named. Floating-point images are cast to the detector's dtype (float64
    images into a float32 model)."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be a list of Tensor[3, H, W] or one Tensor[B, 3, H, W], got one Tensor"
                             f"{list(images.shape)}" + (" (wrap a single image in a list)" if images.dim() == 3 else ""))
    images = list(images)
    if not images:
        raise ValueError(f"{type(detector).__name__} got no images")
    for index, image in enumerate(images):
        if not isinstance(image, Tensor):
            raise ValueError(f"image {index} must be a Tensor[3, H, W], got {type(image).__name__}")
        if image.dim() == 3 and 0 in image.shape[-2:]:  # else a division by zero when it is resized
            raise ValueError(f"image {index} has no pixels: {tuple(image.shape)}")
        if image.is_floating_point():  # else no detections or meaningless ones, NaN losses (torchvision checks not)
            bad = int((~torch.isfinite(image)).sum())
            if bad:
                raise ValueError(f"image {index} has {bad} NaN or infinite value{'s' if bad > 1 else ''} "
                                 f"among its {image.numel()}")
    param = next(detector.parameters(), None)
    if param is not None and param.is_floating_point():
        images = [image.to(param.dtype) if isinstance(image, Tensor) and image.is_floating_point() else image
                  for image in images]
    if detector.training:
        if targets is None:
            raise ValueError(f"{type(detector).__name__} in train mode needs targets "
                             "(a dict with boxes and labels per image)")
        check_targets(images, targets, detector.num_classes)
    return list(images), [(int(image.shape[-2]), int(image.shape[-1])) for image in images]


def check_targets(images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]], num_classes: int | None) -> None:
    """Raise ValueError naming the image and the box for a bad training target: targets not a list of dicts,
    missing keys, boxes not Tensor[N, 4], a non-finite or degenerate box (x2 ≤ x1 or y2 ≤ y1) or one with no area
    inside its image (a box partly outside is fine), labels that are not integers, or a label outside
    1..num_classes-1."""
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise ValueError(f"targets must be a list of dicts (boxes, labels), one per image, got {type(targets).__name__}")
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    for index, target in enumerate(targets):
        if not isinstance(target, Mapping):
            raise ValueError(f"target of image {index} must be a dict with 'boxes' and 'labels', "
                             f"got {type(target).__name__}")
        if "boxes" not in target or "labels" not in target:
            raise ValueError(f"target of image {index} needs 'boxes' and 'labels', has {sorted(target)}")
        boxes, labels = target["boxes"], target["labels"]
        for name, value in (("boxes", boxes), ("labels", labels)):
            if not isinstance(value, Tensor):
                raise ValueError(f"target {name} of image {index} must be a Tensor, got {type(value).__name__}")
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target boxes of image {index} must be Tensor[N, 4], got {tuple(boxes.shape)}")
        if labels.shape != boxes.shape[:1]:
            raise ValueError(f"image {index}: {boxes.shape[0]} boxes but labels of shape {tuple(labels.shape)}")
        # a float label would be truncated to a class, a NaN or inf coordinate makes the box losses NaN
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"target labels of image {index} must be integers (int64), got {labels.dtype}")
        bad = torch.where(~torch.isfinite(boxes).all(dim=1))[0]
        if bad.numel():
            box = bad[0].item()
            raise ValueError(f"image {index}, box {box}: non-finite box {boxes[box].tolist()}")
        bad = torch.where((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))[0]
        if bad.numel():
            box = bad[0].item()
            raise ValueError(f"image {index}, box {box}: degenerate box {boxes[box].tolist()} "
                             "(needs x2 > x1 and y2 > y1, xyxy in pixels)")
        height, width = images[index].shape[-2:]
        bad = torch.where((boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))[0]
        if bad.numel():
            # no anchor overlaps it, so the RPN's rule "each box's best anchors are positive" made every anchor
            # of the image a positive (torchvision does the same)
            box = bad[0].item()
            raise ValueError(f"image {index}, box {box}: box {boxes[box].tolist()} has no area inside the "
                             f"{width}×{height} image (xyxy in its pixels); drop it or correct it")
        if num_classes is not None and labels.numel():
            wrong = torch.where((labels < 1) | (labels >= num_classes))[0]
            if wrong.numel():
                box = wrong[0].item()
                raise ValueError(f"image {index}, box {box}: label {labels[box].item()} outside 1..{num_classes - 1} "
                                 "(0 is the background)")


class DetectionTransform(nn.Module):
    """Images (a list of Tensor[C, H_i, W_i] in [0, 1]) to one normalised, resized, padded ImageBatch.

    Args:
        min_size: target short side; a tuple in training picks one at random per image (scale jitter);
            None keeps every image at its own size (R-CNN, which warps regions instead).
        max_size: cap on the long side.
        image_mean, image_std: per-channel normalisation, one number per RGB channel (the detectors take RGB).
        size_divisible: the padded batch's sides are multiples of it.
    """

    def __init__(self, min_size: int | Sequence[int] | None, max_size: int, image_mean: Sequence[float],
                 image_std: Sequence[float], size_divisible: int = 32):
        super().__init__()
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            # else a mean of [0.5] refused every RGB image as not "Tensor[1, H, W]", as if the image were wrong;
            # a NumPy array is a sequence to the detectors' argument check, so it is one here too
            if not isinstance(values, Sequence | np.ndarray) or np.ndim(values) != 1 or len(values) != 3:
                raise ValueError(f"{name} must be 3 numbers, one per RGB channel, got {values!r:.60}")
        if not all(v > 0 for v in image_std):
            raise ValueError(f"image_std must be positive, got {image_std!r:.60}")
        sizes = () if min_size is None else (min_size,) if not isinstance(min_size, Sequence) else tuple(min_size)
        if (min_size is not None and not sizes) or not all(is_integer(size) and size > 0 for size in sizes):
            # else interpolate's "Input and output sizes should be greater than 0" at the first image
            raise ValueError(f"min_size must be a positive integer or a list of them, got {min_size!r:.60}")
        if not is_integer(max_size) or max_size <= 0:
            raise ValueError(f"max_size must be a positive integer, got {max_size!r:.40}")
        if not is_integer(size_divisible) or size_divisible <= 0:  # else a ZeroDivisionError at the first batch
            raise ValueError(f"size_divisible must be a positive integer, got {size_divisible!r:.40}")
        self.min_size = sizes
        self.max_size = max_size
        self.image_mean = tuple(float(value) for value in image_mean)
        self.image_std = tuple(float(value) for value in image_std)
        self.size_divisible = size_divisible

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
                ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None]:
        out_images, out_targets = [], None if targets is None else []
        for index, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != len(self.image_mean):
                raise ValueError(f"image {index} must be Tensor[{len(self.image_mean)}, H, W], got {tuple(image.shape)}")
            height, width = image.shape[-2:]
            if self.too_thin(height, width):
                # else interpolate's "Input and output sizes should be greater than 0", naming no image
                raise ValueError(f"image {index} of {height}×{width} px is too thin to detect in: with its long side "
                                 f"at max_size {self.max_size} its short side would be under 1 px")
            target = None if targets is None else dict(targets[index])
            image = self.normalize(image)
            image, target = self.resize(image, target)
            out_images.append(image)
            if out_targets is not None:
                out_targets.append(target)
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in out_images]
        return ImageBatch(self.batch_images(out_images), sizes), out_targets

    def too_thin(self, height: int, width: int) -> bool:
        """Whether an image of ``height`` × ``width`` px, its long side capped at ``max_size``, would have a short side
        under 1 px: it cannot be resized."""
        return bool(self.min_size) and int(min(height, width) * (self.max_size / max(height, width))) < 1

    def normalize(self, image: Tensor) -> Tensor:
        """``(image - mean) / std`` per channel: Tensor[C, H, W]."""
        if not image.is_floating_point():
            raise ValueError(f"images must be float tensors in [0, 1], got {image.dtype}")
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: Tensor, target: dict[str, Tensor] | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Scale ``image`` Tensor[C, H, W] (and ``target["boxes"]``) to the target short side."""
        height, width = image.shape[-2:]
        if not self.min_size:
            return image, target
        if self.training:  # drawn even from one choice: the global generator advances as torchvision's
            size = self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
        else:
            size = self.min_size[-1]
        scale = min(size / min(height, width), self.max_size / max(height, width))
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                              align_corners=False)[0]
        if target is not None and "boxes" in target:
            target["boxes"] = resize_boxes(target["boxes"], (height, width), image.shape[-2:])
        return image, target

    def batch_images(self, images: list[Tensor]) -> Tensor:
        """Zero-pad ``images`` at the bottom/right into Tensor[B, C, H, W], sides multiples of size_divisible."""
        stride = self.size_divisible
        height = -(-max(img.shape[-2] for img in images) // stride) * stride
        width = -(-max(img.shape[-1] for img in images) // stride) * stride
        batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        for index, image in enumerate(images):
            # indexed, not iterated: iterating unbinds into views that autograd cannot copy an image needing
            # gradients into
            batch[index, :, : image.shape[-2], : image.shape[-1]].copy_(image)
        return batch

    def postprocess(self, detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]],
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections' boxes scaled from the resized images back to the inputs."""
        for detection, size, original in zip(detections, image_sizes, original_sizes):
            detection["boxes"] = resize_boxes(detection["boxes"], size, original)
        return detections
