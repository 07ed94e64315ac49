"""LayerScale (Touvron et al. 2021, CaiT): a learned per-channel scale on a residual branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerScale(nn.Module):
    """``x * gamma`` over the last dimension: ``Tensor[..., dim] -> Tensor[..., dim]``.

    ``gamma`` starts at ``init_values`` (small, e.g. 1e-6, so a deep residual stack starts near the
    identity). With ``inplace`` (timm's argument) ``x`` itself is scaled and returned. The parameter name
    is timm's.
    """

    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values), device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma
