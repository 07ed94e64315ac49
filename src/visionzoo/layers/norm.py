"""Channels-first LayerNorm: normalise the channels of every pixel of a ``Tensor[B, C, H, W]`` map."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over ``C`` of ``Tensor[B, C, H, W] -> Tensor[B, C, H, W]`` (same dtype), each pixel alone.

    The parameters (``weight``, ``bias``: ``Tensor[C]``) and ``eps`` (1e-6, as timm's ConvNeXt and Swin
    use) are ``nn.LayerNorm``'s, so timm's ``LayerNorm2d`` weights load key for key. The map is viewed
    as ``[B, H, W, C]`` and normalised over its last dimension: for a channels-last input both
    permutes are free and the output stays channels-last; a contiguous NCHW input costs one copy.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"LayerNorm2d expects Tensor[B, C, H, W], got shape {tuple(x.shape)}")
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
