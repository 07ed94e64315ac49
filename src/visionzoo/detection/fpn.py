"""Feature Pyramid Network (Lin et al. 2017) over any ``features_only`` backbone, torchvision's layout.

Module names are torchvision's: ``fpn.inner_blocks.i.0`` (1×1 lateral convs), ``fpn.layer_blocks.i.0``
(3×3 output convs); the backbone trunk sits under ``body``, so a torchvision ``backbone.body.*`` /
``backbone.fpn.*`` state dict loads key for key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    # wrapped in a Sequential: torchvision's Conv2dNormActivation keys are ``<name>.0.weight``
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2))


class FeaturePyramidNetwork(nn.Module):
    """Top-down pathway with lateral connections, plus a stride-2 max pool of the coarsest output ("pool").

    ``forward(maps)``: ``maps`` Tensor[B, C_i, H_i, W_i], finest first → ordered dict ``{"0": P2, ...,
    "pool": P6}`` of Tensor[B, out_channels, H_i, W_i] (names "0".."n-1" then "pool").

    Args:
        in_channels_list: channels of each input map, finest first.
        out_channels: channels of every output map.
        extra_pool: append the "pool" level (max pool, kernel 1, stride 2) as torchvision's LastLevelMaxPool.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int, extra_pool: bool = True):
        super().__init__()
        self.inner_blocks = nn.ModuleList(_conv(c, out_channels, 1) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(_conv(out_channels, out_channels, 3) for _ in in_channels_list)
        self.extra_pool = extra_pool
        self.out_channels = out_channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.constant_(module.bias, 0)

    def forward(self, maps: Sequence[Tensor]) -> OrderedDict[str, Tensor]:
        if len(maps) != len(self.inner_blocks):
            raise ValueError(f"FeaturePyramidNetwork built for {len(self.inner_blocks)} maps, got {len(maps)}")
        last_inner = self.inner_blocks[-1](maps[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for index in range(len(maps) - 2, -1, -1):
            lateral = self.inner_blocks[index](maps[index])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[index](last_inner))
        names = [str(i) for i in range(len(results))]
        if self.extra_pool:
            results.append(F.max_pool2d(results[-1], 1, 2, 0))
            names.append("pool")
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """A ``features_only`` trunk (``body``: image → list of maps) followed by an FPN (``fpn``).

    ``forward(Tensor[B, 3, H, W]) -> OrderedDict[str, Tensor[B, out_channels, H/s, W/s]]``.
    """

    def __init__(self, body: nn.Module, in_channels_list: Sequence[int], out_channels: int = 256,
                 extra_pool: bool = True):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_pool)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))
