"""Batch-level regularisers for classification: label smoothing, mixup and CutMix (DeiT's recipe)."""

from __future__ import annotations

import numpy as np
import torch

# Beta(alpha, alpha) draws 0.5 within 1e-8 from here on (its deviation is 1 / sqrt(8 alpha + 4)), below float32's
# resolution; numpy's sampler, a ratio of gamma draws, overflows past ~9e307 and draws 0 (every image swapped whole).
MAX_ALPHA = 1e15


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets ``Tensor[B, K]`` float: ``1 - smoothing + smoothing/K`` on the label, ``smoothing/K`` elsewhere.

    Args:
        labels: Tensor[B] int64 class indices in ``[0, num_classes)``.
    """
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box ``(y1, y2, x1, x2)`` of area ≈ ``(1 - lam)·H·W`` centred uniformly, clipped to the image."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y1, y2 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + (cut_h + 1) // 2, 0, height)
    x1, x2 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + (cut_w + 1) // 2, 0, width)
    return int(y1), int(y2), int(x1), int(x2)


def mix_batch(images: torch.Tensor, targets: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
              generator: torch.Generator, switch_prob: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each sample with the batch in reverse order (timm's "batch" mode). In an odd batch the middle sample is
    its own partner and stays as it is (timm's Mixup refuses odd batches); a batch of 1 would mix nothing, and is
    refused (ValueError).

    With both alphas positive, CutMix is chosen with probability ``switch_prob``; ``lam`` is drawn
    from Beta(alpha, alpha). CutMix pastes a box of the partner image and sets ``lam`` to the
    kept area fraction. All randomness comes from ``generator``.

    Args:
        images: Tensor[B, C, H, W].
        targets: Tensor[B, K] soft targets (see :func:`smooth_one_hot`).

    Returns:
        ``(images, targets)`` mixed, same shapes.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    if images.shape[0] < 2:
        raise ValueError("mixup and CutMix mix each image with another of its batch, and a batch of 1 image has no "
                         "other to mix it with; give --batch-size 2 or more")
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    alpha = min(cutmix_alpha if use_cutmix else mixup_alpha, MAX_ALPHA)
    lam = float(rng.beta(alpha, alpha))
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        y1, y2, x1, x2 = cutmix_box(height, width, lam, rng)
        images = images.clone()
        images[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
        lam = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
    else:
        images = images * lam + partner * (1.0 - lam)
    return images, targets * lam + targets.flip(0) * (1.0 - lam)
