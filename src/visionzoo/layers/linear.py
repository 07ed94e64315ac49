"""A linear layer that keeps its autocast copy of the weights between inference calls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.utils import autocast_enabled, is_traced


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) that casts its weights once for autocast inference.

    Under autocast, ``nn.Linear`` casts its fp32 weight to the low-precision dtype at every call. With
    autograd on, autocast caches that cast for the context; under ``torch.inference_mode()`` it does
    not cache at all (a layer called on many chunks casts many times), and no cache outlives the
    ``autocast`` block, so each forward of a model pays a full pass over its weights. Without autograd,
    this layer keeps the cast weights until the parameters change (their version counter, storage,
    dtype or device), and the product equals autocast's: the same bf16 operands, the same kernel.
    With autograd on, without autocast, or traced or compiled (a graph cannot read a cache keyed on
    storage, and a traced copy would outlive weight changes), it is ``nn.Linear`` exactly. The copy costs
    half the layer's fp32 memory while it is held; ``drop_cast_cache`` releases it.

    An in-place edit through ``weight.data`` (or ``bias.data``) is not seen: ``.data`` has a version counter
    of its own, and no cheap check catches it (comparing the weights would cost the pass the copy saves), so
    the next call still uses the old copy. Edit under ``torch.no_grad()`` instead (``load_state_dict``,
    ``nn.init`` and optimizers do), or call :func:`drop_cast_caches` on the model after such an edit.

    ``x``: ``Tensor[..., in_features] -> Tensor[..., out_features]``.
    """

    _cast: tuple[tuple, Tensor, Tensor | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or is_traced():
            return F.linear(x, self.weight, self.bias)
        device_type = x.device.type
        if not autocast_enabled(device_type):
            return F.linear(x, self.weight, self.bias)
        dtype = torch.get_autocast_dtype(device_type)
        if self.weight.dtype == dtype:
            return F.linear(x, self.weight, self.bias)
        weight, bias = self._cast_weights(dtype)
        return F.linear(x, weight, bias)  # autocast casts x; the weights are already in its dtype

    def _cast_weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        key = (dtype, self.weight.device, self.weight.data_ptr(), self.weight._version,
               None if self.bias is None else (self.bias.data_ptr(), self.bias._version))
        if self._cast is None or self._cast[0] != key:
            bias = None if self.bias is None else self.bias.detach().to(dtype)
            self._cast = (key, self.weight.detach().to(dtype), bias)
        return self._cast[1], self._cast[2]

    def drop_cast_cache(self) -> None:
        self._cast = None


def drop_cast_caches(model: nn.Module) -> None:
    """Release the autocast weight copy of every :class:`Linear` in ``model``: needed after editing weights
    in place through ``.data``, which the copies cannot notice; frees their memory otherwise."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.drop_cast_cache()
