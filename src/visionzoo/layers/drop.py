"""Stochastic depth (Huang et al. 2016): drop a residual branch per sample during training."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from visionzoo.utils import require_unit_interval


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True) -> Tensor:
    """Zero the whole residual branch ``x`` (Tensor[B, ...]) for a random ``drop_prob`` of the samples
    and (with ``scale_by_keep``, timm's argument) scale the survivors by ``1 / (1 - drop_prob)``, so the
    expectation is unchanged. With ``drop_prob=1`` every sample's branch is zero (as timm's), not 0 / 0.
    ``ValueError`` for a ``drop_prob`` outside [0, 1] (NaN too)."""
    require_unit_interval(drop_prob=drop_prob)  # else bernoulli_ named the keep probability
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep) if keep > 0.0 and scale_by_keep else x * mask


class DropPath(nn.Module):
    """:func:`drop_path` as a module (an identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        require_unit_interval(drop_prob=drop_prob)  # else bernoulli_ named the keep probability
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def check_dropout_rates(**rates: float) -> None:
    """``ValueError`` naming the first of the keyword arguments (a model's ``drop_rate=...``) that is no probability
    in [0, 1]: torch's ``Dropout`` names no argument, and a model has several rates (NaN is refused too)."""
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} (a dropout probability) must be in [0, 1], got {rate}")


def drop_path_rates(drop_path_rate: float, depths: list[int] | tuple[int, ...]) -> list[list[float]]:
    """Per-block stochastic-depth rates rising linearly from 0 to ``drop_path_rate`` over all blocks,
    split into stages of ``depths`` blocks (the schedule of DeiT, Swin and ConvNeXt).
    ``drop_path_rate`` must be in [0, 1)."""
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
    # on the CPU even under `with torch.device("meta")`: the rates are Python floats, not model state
    rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    stages, start = [], 0
    for depth in depths:
        stages.append(rates[start:start + depth])
        start += depth
    return stages
