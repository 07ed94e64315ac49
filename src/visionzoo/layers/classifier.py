"""What the families' heads share: timm's global pool names and their pooling, and ``reset_classifier``'s
device and dtype."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

# The names timm's SelectAdaptivePool2d takes (its heads of ResNet, ConvNeXt and Swin): a "fast" name is its
# mean/amax spelling of the same reduction ("fast" alone: the mean); "" keeps the map.
ADAPTIVE_POOLS = ("avg", "max", "avgmax", "catavgmax", "fast", "fastavg", "fastmax", "fastavgmax", "fastcatavgmax", "")


def check_global_pool(global_pool: str, accepted: Sequence[str] = ADAPTIVE_POOLS) -> str:
    """``global_pool`` in lower case (timm's SelectAdaptivePool2d takes "AVG" too), or ``ValueError``
    naming the ``accepted`` names."""
    name = global_pool.lower() if isinstance(global_pool, str) else None
    if name not in accepted:
        raise ValueError(f"global_pool must be one of {tuple(accepted)}, got {global_pool!r}")
    return name


def pooled_width(global_pool: str, channels: int) -> int:
    """The width of ``channels``-wide maps pooled by ``global_pool``: twice ``channels`` for "catavgmax"
    and "fastcatavgmax" (the mean and the maximum side by side), ``channels`` otherwise."""
    return 2 * channels if global_pool.endswith("catavgmax") else channels


def global_pool_2d(x: Tensor, global_pool: str, channels_last: bool = False) -> Tensor:
    """Pool a map over its positions by a name of :data:`ADAPTIVE_POOLS`: ``Tensor[B, C, H, W]`` (with
    ``channels_last``, ``Tensor[B, H, W, C]``) -> ``Tensor[B, pooled_width(global_pool, C)]``: the mean,
    the maximum, their average ("avgmax") or both concatenated, mean first ("catavgmax"); "" returns ``x``."""
    kind = "avg" if global_pool == "fast" else global_pool.removeprefix("fast")
    if not kind:
        return x
    dims = (1, 2) if channels_last else (2, 3)
    if kind == "avg":
        return x.mean(dim=dims)
    if kind == "max":
        return x.amax(dim=dims)
    mean, peak = x.mean(dim=dims), x.amax(dim=dims)
    return 0.5 * (mean + peak) if kind == "avgmax" else torch.cat([mean, peak], dim=1)

Reset = TypeVar("Reset", bound=Callable[..., Any])


def keeps_device_and_dtype(reset_classifier: Reset) -> Reset:
    """Decorate a model's ``reset_classifier`` so that the new head lives where the model does: on the
    device and in the dtype of its first parameter, and in its train/eval mode, as timm's (``get_device_dtype``,
    ``head.train(self.training)``). Without it a head built with ``nn.Linear(...)`` lands on the CPU in float32
    under a model moved to CUDA or cast to bfloat16, and the next forward fails on mismatched tensors. Only the
    modules the reset creates move: the others keep their own device and dtype (norms kept in float32 under a
    half-precision model)."""

    @functools.wraps(reset_classifier)
    def reset(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        first = next(model.parameters(), None)
        kept = list(model.modules())  # held, so that no new module can reuse a kept one's id
        old = {id(module) for module in kept}
        result = reset_classifier(model, *args, **kwargs)
        for module in model.modules():
            if id(module) not in old:
                if first is not None:
                    module.to(device=first.device, dtype=first.dtype)
                module.train(model.training)
        return result

    return reset  # type: ignore[return-value]
