"""LayerScale (Touvron et al. 2021, CaiT): a learned per-channel scale on a residual branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """``x * gamma`` over the last dimension: ``Tensor[..., dim] -> Tensor[..., dim]``.

    ``gamma`` starts at ``init_values`` (small, e.g. 1e-6, so a deep residual stack starts near the
    identity). The parameter name is timm's.
    """

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma
