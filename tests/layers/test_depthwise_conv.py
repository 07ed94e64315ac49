import pytest
import torch
import torch.nn.functional as F

from visionzoo.layers import DepthwiseConv2d
from visionzoo.layers.depthwise_conv import depthwise_weight_grad


@pytest.mark.parametrize("kernel, stride, padding, dilation, size", [
    (7, 1, 3, 1, 9), (3, 2, 1, 1, 8), (3, 1, 2, 2, 7), (5, 2, 0, 1, 11), (7, 1, 3, 1, 2), (3, 3, 1, 2, 10),
])
def test_weight_grad_equals_autograd(kernel, stride, padding, dilation, size):
    torch.manual_seed(0)
    x = torch.randn(3, 4, size, size, dtype=torch.float64)
    weight = torch.randn(4, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    out = F.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=4)
    grad = torch.randn_like(out)
    expected, = torch.autograd.grad(out, weight, grad)
    got = depthwise_weight_grad(x, grad, (kernel, kernel), (stride,) * 2, (padding,) * 2, (dilation,) * 2)
    assert got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_weight_grad_of_a_channels_last_map():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 1, 7, 7, requires_grad=True)
    out = F.conv2d(x, weight, padding=3, groups=6)
    grad = torch.randn_like(out)
    expected, = torch.autograd.grad(out, weight, grad)
    got = depthwise_weight_grad(x, grad, (7, 7), (1, 1), (3, 3), (1, 1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def _layer_pair(**kwargs):
    torch.manual_seed(0)
    ours = DepthwiseConv2d(8, 7, padding=3, **kwargs)
    plain = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8, **kwargs)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def _grads(layer, x, bf16):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = layer(x)
    out.float().mul(torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out, x.grad, layer.weight.grad, layer.bias.grad


def test_bf16_training_forward_and_input_grad_equal_autocast_conv():
    ours, plain = _layer_pair()
    x = torch.randn(4, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    out, grad_x, _, _ = _grads(ours, x, bf16=True)
    out_ref, grad_x_ref, _, _ = _grads(plain, x, bf16=True)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, out_ref)
    assert grad_x.dtype == torch.float32
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=0, atol=0)


def test_bf16_weight_grads_are_as_close_to_exact_as_autocast_conv():
    """The weight and bias gradients of the bf16 operands, against float64 sums of the same operands: ours are
    float32 sums of bf16 partial sums, no further than autocast's bf16-rounded ones."""
    ours, plain = _layer_pair()
    x = torch.randn(4, 8, 10, 10).contiguous(memory_format=torch.channels_last)
    _, _, grad_w, grad_b = _grads(ours, x, bf16=True)
    _, _, grad_w_ref, grad_b_ref = _grads(plain, x, bf16=True)
    # the exact gradient of the same bf16 operands
    x64 = x.bfloat16().double()
    w64 = ours.weight.detach().bfloat16().double().requires_grad_()
    b64 = ours.bias.detach().bfloat16().double().requires_grad_()
    out = F.conv2d(x64, w64, b64, padding=3, groups=8)
    upstream = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape)
    # the bf16 output's gradient is the upstream one rounded to bf16, as autograd passes it
    exact_w, exact_b = torch.autograd.grad(out, (w64, b64), upstream.bfloat16().double())
    ours_error = (grad_w.double() - exact_w).abs().max()
    autocast_error = (grad_w_ref.double() - exact_w).abs().max()
    assert grad_w.dtype == torch.float32 and grad_b.dtype == torch.float32
    assert ours_error <= autocast_error
    assert (grad_b.double() - exact_b).abs().max() <= (grad_b_ref.double() - exact_b).abs().max()


def test_elsewhere_it_is_nn_conv2d():
    ours, plain = _layer_pair()
    x = torch.randn(2, 8, 9, 9)
    for bf16 in (False, True):
        if bf16:
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                assert torch.equal(ours(x), plain(x))
        else:
            out, grad_x, grad_w, grad_b = _grads(ours, x, bf16=False)
            out_ref, grad_x_ref, grad_w_ref, grad_b_ref = _grads(plain, x, bf16=False)
            assert torch.equal(out, out_ref) and torch.equal(grad_w, grad_w_ref) and torch.equal(grad_x, grad_x_ref)


def test_state_dict_is_nn_conv2d_s():
    ours, plain = _layer_pair()
    assert ours.state_dict().keys() == plain.state_dict().keys()
    assert ours.groups == ours.in_channels == ours.out_channels == 8
