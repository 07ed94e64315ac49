"""A linear layer that keeps its autocast copy of the weights between inference calls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.utils import autocast_enabled, is_traced, native_bf16


def _onednn_linear():
    """oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's CPU backend calls), or
    None in a build without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()
# Products of at most 16³ multiply-adds: torch's own bf16 matmul leaves them to a plain loop, which takes 3–5 µs
# where a oneDNN call has a fixed cost of ~25 µs (one row of a 96→32 layer, this project's AMX CPU).
_SMALLEST_FUSED_PRODUCT = 16 ** 3


def _fuses(x: Tensor, weight: Tensor) -> bool:
    """Whether the bf16 product of ``x`` and ``weight`` runs as one oneDNN call: on a CPU with native bf16, for a
    batch of rows, above the smallest products, and with no dispatch mode active (``FlopCounterMode`` and its kind
    know ``aten.addmm``, not oneDNN's op)."""
    return (_ONEDNN_LINEAR is not None and weight.dtype == torch.bfloat16 and x.device.type == "cpu" and x.dim() >= 2
            and x.numel() * weight.shape[0] > _SMALLEST_FUSED_PRODUCT and not torch._C._len_torch_dispatch_stack()
            and native_bf16(x.device))


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward hooks (its own or global ones), which a fused call would skip."""
    hooks = torch.nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or hooks._global_forward_hooks
                or hooks._global_forward_pre_hooks)


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
    half the layer's fp32 memory while it is held; ``drop_cast_cache`` releases it. On a CPU with native bf16 the
    product is oneDNN's fused linear: ``F.linear`` first copies the bias into every output row and then adds the
    product to it (a pass over the output, 20% of a ViT-S/16 MLP product at batch 32); oneDNN adds it in the
    product's epilogue, with the same bf16 operands and float32 accumulation (equal outputs in the tests).
    :meth:`forward_act` fuses a following GELU the same way.

    An in-place edit through ``weight.data`` (or ``bias.data``) is not seen: ``.data`` has a version counter
    of its own, and no cheap check catches it (comparing the weights would cost the pass the copy saves), so
    the next call still uses the old copy. Edit under ``torch.no_grad()`` instead (``load_state_dict``,
    ``nn.init`` and optimizers do), or call :func:`drop_cast_caches` on the model after such an edit.

    ``x``: ``Tensor[..., in_features] -> Tensor[..., out_features]``.
    """

    _cast: tuple[tuple, Tensor, Tensor | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_act(x, None)

    def forward_act(self, x: Tensor, act: nn.Module | None) -> Tensor:
        """``act(self(x))`` (``act`` None: ``self(x)``). In bf16 inference on a CPU with native bf16 an
        ``nn.GELU`` ``act`` runs in oneDNN's epilogue, on the float32 sums before their rounding to bf16 (the
        unfused path rounds twice, so the two differ by at most one bf16 step); elsewhere without autograd it runs
        in place on the product."""
        weights = self._inference_weights(x)
        if weights is None:
            out = F.linear(x, self.weight, self.bias)
        elif _fuses(x, weights[0]):
            fused_gelu = type(act) is nn.GELU
            attr, algorithm = ("gelu", act.approximate) if fused_gelu else ("none", "")
            out = _ONEDNN_LINEAR(x.to(weights[0].dtype), *weights, attr, [], algorithm)
            if fused_gelu:
                return out
        else:
            out = F.linear(x, *weights)  # autocast casts x; the weights are already in its dtype
        if type(act) is nn.GELU and not torch.is_grad_enabled() and not is_traced():
            return torch.ops.aten.gelu_(out, approximate=act.approximate)  # the product is ours to overwrite
        return out if act is None else act(out)

    def _inference_weights(self, x: Tensor) -> tuple[Tensor, Tensor | None] | None:
        """The weights in autocast's dtype for inference under autocast (kept between calls), else None: with
        autograd, traced or compiled, without autocast, or with weights already in its dtype (``nn.Linear``)."""
        if torch.is_grad_enabled() or is_traced():
            return None
        device_type = x.device.type
        if not autocast_enabled(device_type):
            return None
        dtype = torch.get_autocast_dtype(device_type)
        if self.weight.dtype == dtype:
            return None
        return self._cast_weights(dtype)

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
