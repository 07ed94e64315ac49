"""A depthwise convolution whose bf16 training on the CPU computes its weight gradient as a convolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.utils import is_traced

_convolution = torch.ops.aten.convolution
_convolution_backward = torch.ops.aten.convolution_backward


class _Bf16DepthwiseConv(torch.autograd.Function):
    """``conv2d(x, weight, bias, groups=C)`` in bf16, as autocast runs it, with the backward's two halves apart:
    the input gradient as autocast computes it, and the weight and bias gradients as float32 sums of the same bf16
    values (:func:`depthwise_weight_grad`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int],
                dilation: list[int]) -> Tensor:
        low = torch.bfloat16
        x_low, weight_low = x.to(low), weight.to(low)
        ctx.save_for_backward(x_low, weight_low)
        ctx.geometry = (stride, padding, dilation, False, [0, 0], weight.shape[0])
        ctx.input_dtype, ctx.has_bias = x.dtype, bias is not None
        return _convolution(x_low, weight_low, None if bias is None else bias.to(low), *ctx.geometry)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_low, weight_low = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad = grad.to(torch.bfloat16).contiguous(memory_format=_memory_format(x_low))
        grad_x = grad_weight = grad_bias = None
        if needs_input:
            grad_x = _convolution_backward(grad, x_low, weight_low, None, *ctx.geometry,
                                           [True, False, False])[0].to(ctx.input_dtype)
        if needs_weight:
            # from float32 copies: bf16 would round each image's partial sums (7% faster, a ConvNeXt-Atto step)
            grad_weight = depthwise_weight_grad(x_low.float(), grad.float(), weight_low.shape[-2:],
                                                *ctx.geometry[:3])
        if needs_bias and ctx.has_bias:
            grad_bias = grad.sum((0, 2, 3), dtype=torch.float32)
        return grad_x, grad_weight, grad_bias, None, None, None


def _memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


def depthwise_weight_grad(x: Tensor, grad: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                          padding: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """The weight gradient of ``conv2d(x, weight, stride, padding, dilation, groups=C)``: ``x`` Tensor[B, C, H, W]
    and ``grad`` Tensor[B, C, H', W'] (the output's gradient) -> Tensor[C, 1, kH, kW] in float32.

    Each weight's gradient is the correlation of the padded input with the output gradient, image by image: one
    depthwise convolution over B·C channels whose kernels are the output gradients, summed over the batch in
    float32. oneDNN runs that forward kernel several times faster than its own depthwise weight-gradient kernel
    (on one core of an AMX CPU, 16 against 44 ms in float32 for a [32, 40, 32, 32] map)."""
    batch, channels, _, _ = x.shape
    out_h, out_w = grad.shape[-2:]
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    # channels-last [1, B·C, H, W]: the layout oneDNN's depthwise kernel vectorises over
    images = padded.permute(2, 3, 0, 1).reshape(1, *padded.shape[-2:], batch * channels).permute(0, 3, 1, 2)
    kernels = grad.reshape(batch * channels, 1, out_h, out_w)
    # output offset o of an input row is o = stride·h + dilation·i: a kernel dilated by the stride, read every
    # dilation-th offset
    sums = F.conv2d(images, kernels, groups=batch * channels, dilation=tuple(stride))
    span_h, span_w = [dilation[d] * (kernel_size[d] - 1) + 1 for d in (0, 1)]
    sums = sums[..., :span_h:dilation[0], :span_w:dilation[1]]
    return sums.reshape(batch, channels, *kernel_size).sum(0, dtype=torch.float32).unsqueeze(1)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(dim, dim, kernel_size, groups=dim)`` (same parameters, same state dict) that trains faster under
    CPU bf16 autocast.

    oneDNN's bf16 kernel for a depthwise convolution's weight gradient is slow: in a ConvNeXt-Atto training step at
    128 px it took half the step, and made bf16 training no faster than float32. Under CPU bf16 autocast with
    autograd on, this layer computes the same forward (the same bf16 operands and kernel) and input gradient, and
    the weight and bias gradients with :func:`depthwise_weight_grad` as float32 sums of the same bf16 values
    (closer to exact than autocast's, which rounds them to bf16). Elsewhere (float32, inference, a GPU, traced or
    compiled) it is ``nn.Conv2d`` exactly: in float32 training the same route gained only ~6%.

    ``x``: ``Tensor[B, C, H, W] -> Tensor[B, C, H', W']`` in the input's memory format.
    """

    def __init__(self, dim: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                 bias: bool = True):
        super().__init__(dim, dim, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=dim,
                         bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self._splits_backward(x):
            return super().forward(x)
        return _Bf16DepthwiseConv.apply(x, self.weight, self.bias, list(self.stride), list(self.padding),
                                        list(self.dilation))

    def _splits_backward(self, x: Tensor) -> bool:
        return (not is_traced() and x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple))
