"""Matching predictions to ground truth, and sampling a balanced training batch of them.

Both R-CNN stages (the RPN over anchors, the RoI heads over proposals) and R-CNN / Fast R-CNN over
Selective Search boxes label candidates the same way: the best-overlapping ground-truth box above a
high threshold makes a positive, below a low threshold a negative, in between is ignored; then a
fixed number per image is drawn with at most a given fraction of positives.
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


class Matcher:
    """Assign each prediction (column) the ground-truth box (row) it overlaps most.

    Args:
        high_threshold: quality ≥ this: matched to that box.
        low_threshold: quality < this: :data:`BELOW_LOW_THRESHOLD` (-1, background); in between:
            :data:`BETWEEN_THRESHOLDS` (-2, ignored).
        allow_low_quality_matches: also match, for each ground-truth box, the predictions that overlap
            it most (ties included) even under ``high_threshold`` (Faster R-CNN's RPN rule), so that no
            box is left without a positive.
        ignore_below: quality < this is ignored (-2) rather than background: the background is then the
            band [ignore_below, low_threshold) (Fast R-CNN's and R-CNN's [0.1, 0.5)); 0 ignores nothing.
    """

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False,
                 ignore_below: float = 0.0):
        if low_threshold > high_threshold:
            raise ValueError(f"Matcher: low_threshold {low_threshold} is above high_threshold {high_threshold}")
        if not 0.0 <= ignore_below <= low_threshold:
            raise ValueError(f"Matcher: ignore_below {ignore_below} must be in [0, low_threshold={low_threshold}]")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches
        self.ignore_below = ignore_below

    def __call__(self, quality: Tensor) -> Tensor:
        """``quality``: Tensor[M, N] (IoU of M ground-truth boxes with N predictions), M, N > 0.
        Returns int64 Tensor[N]: the matched row in 0..M-1, or -1 / -2."""
        if quality.numel() == 0:
            raise ValueError(f"Matcher: empty quality matrix of shape {tuple(quality.shape)}")
        best, matches = quality.max(dim=0)
        unthresholded = matches.clone() if self.allow_low_quality_matches else None
        matches[best < self.low_threshold] = BELOW_LOW_THRESHOLD
        matches[((best >= self.low_threshold) & (best < self.high_threshold)) | (best < self.ignore_below)] = \
            BETWEEN_THRESHOLDS
        if unthresholded is not None:
            best_per_box = quality.max(dim=1, keepdim=True).values
            columns = torch.where(quality == best_per_box)[1]
            matches[columns] = unthresholded[columns]
        return matches


class BalancedSampler:
    """Draw up to ``batch_size_per_image`` labelled candidates per image, at most ``positive_fraction``
    of them positive (label ≥ 1), the rest negative (label 0); label -1 is never drawn.

    The draw uses ``torch.randperm`` (the global generator, so ``torch.manual_seed`` fixes it).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image <= 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"BalancedSampler: batch_size_per_image {batch_size_per_image} must be positive and "
                             f"positive_fraction {positive_fraction} in [0, 1]")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """``labels``: per image Tensor[N_i] (≥1 positive, 0 negative, -1 ignored).
        Returns per image two uint8 masks Tensor[N_i]: the drawn positives and the drawn negatives."""
        positive_masks, negative_masks = [], []
        for image_labels in labels:
            positive = torch.where(image_labels >= 1)[0]
            negative = torch.where(image_labels == 0)[0]
            num_positive = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_negative = min(negative.numel(), self.batch_size_per_image - num_positive)
            drawn_positive = positive[torch.randperm(positive.numel(), device=positive.device)[:num_positive]]
            drawn_negative = negative[torch.randperm(negative.numel(), device=negative.device)[:num_negative]]
            positive_mask = torch.zeros_like(image_labels, dtype=torch.uint8)
            negative_mask = torch.zeros_like(image_labels, dtype=torch.uint8)
            positive_mask[drawn_positive] = 1
            negative_mask[drawn_negative] = 1
            positive_masks.append(positive_mask)
            negative_masks.append(negative_mask)
        return positive_masks, negative_masks
