"""What every family's ``reset_classifier`` shares."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

Reset = TypeVar("Reset", bound=Callable[..., Any])


def keeps_device_and_dtype(reset_classifier: Reset) -> Reset:
    """Decorate a model's ``reset_classifier`` so that the new head lives where the model does: on the
    device and in the dtype of its first parameter, as timm's (``get_device_dtype``). Without it a head
    built with ``nn.Linear(...)`` lands on the CPU in float32 under a model moved to CUDA or cast to
    bfloat16, and the next forward fails on mismatched tensors."""

    @functools.wraps(reset_classifier)
    def reset(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        first = next(model.parameters(), None)
        result = reset_classifier(model, *args, **kwargs)
        if first is not None:
            model.to(device=first.device, dtype=first.dtype)
        return result

    return reset  # type: ignore[return-value]
