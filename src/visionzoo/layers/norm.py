"""Norms of feature maps: channels-first LayerNorm, and batch norm with frozen statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def factory(dd: dict) -> dict:
    """The ``device``/``dtype`` keywords of ``dd`` that are set, for a user's ``norm_layer`` (which may take none)."""
    return {key: value for key, value in dd.items() if value is not None}


def _checked_map(x: Tensor) -> Tensor:
    """``x``, or ``ValueError`` when it is no ``Tensor[B, C, H, W]``."""
    if x.ndim != 4:
        raise ValueError(f"LayerNorm2d expects Tensor[B, C, H, W], got shape {tuple(x.shape)}")
    return x


# torch.fx records the check as one call, run on the real map (its symbols cannot branch on the rank)
torch.fx.wrap("_checked_map")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over ``C`` of ``Tensor[B, C, H, W] -> Tensor[B, C, H, W]`` (same dtype), each pixel alone.

    The parameters (``weight``, ``bias``: ``Tensor[C]``) and ``eps`` (1e-6, as timm's ConvNeXt and Swin
    use) are ``nn.LayerNorm``'s, so timm's ``LayerNorm2d`` weights load key for key. The map is viewed
    as ``[B, H, W, C]`` and normalised over its last dimension: for a channels-last input both
    permutes are free and the output stays channels-last; a contiguous NCHW input costs one copy.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = _checked_map(x)
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (buffers, not trained):
    ``Tensor[B, C, H, W] -> Tensor[B, C, H, W]``, ``x · w / sqrt(var + eps) + (b - mean · w / sqrt(var + eps))``.

    Detectors fine-tuned from classification weights freeze their backbone's batch norms, since a few
    images per batch give no usable statistics. The buffers (``weight``, ``bias``, ``running_mean``,
    ``running_var``) are ``nn.BatchNorm2d``'s keys, so either's state dict loads (``num_batches_tracked``
    is accepted and ignored).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every ``nn.BatchNorm2d`` inside replaced by a frozen copy (in place where possible)."""
        if isinstance(module, nn.BatchNorm2d):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            converted = cls.convert(child)
            if converted is not child:
                setattr(module, name, converted)
        return module

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward hands on the gradient in contiguous (NCHW) layout."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and numbers) that feeds PyTorch's CPU kernels contiguous tensors both ways.

    Under bf16 autocast oneDNN's convolution backward returns channels-last gradients, and PyTorch's CPU
    group-norm backward on a channels-last bf16 gradient is about 20 times slower than on a contiguous one:
    it took half of a VQGAN training step. The input is made contiguous before the norm and the gradient
    after it; both copies are cheap beside the kernel they spare. Without autograd there is no backward to
    spare: the norm runs in the input's memory format, so a channels-last network stays channels-last (its
    convolutions' fastest layout on a CPU) without a copy per norm.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        out = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
        return _ContiguousGradient.apply(out) if out.requires_grad else out
