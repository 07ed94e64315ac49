"""PatchGAN discriminator, hinge and non-saturating losses, the adaptive weight."""

import math

import pytest
import torch

from visionzoo.generative.patchgan import (
    PatchGAN,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    nonsaturating_d_loss,
    nonsaturating_g_loss,
)


def test_patch_grid_and_initialisation():
    torch.manual_seed(0)
    assert PatchGAN(1, 8, n_layers=2)(torch.randn(2, 1, 32, 32)).shape == (2, 1, 6, 6)
    network = PatchGAN(3, 16, n_layers=3)
    assert network(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert network.layers[0].weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_each_image_is_judged_alone():
    # GroupNorm, not BatchNorm: an image's logits do not depend on the rest of its batch, in training mode too.
    torch.manual_seed(0)
    network = PatchGAN(3, 8, n_layers=2).train()
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(network(images)[:1], network(images[:1]))


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="sides >= 24"):
        PatchGAN(3, 8, n_layers=3)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="n_layers"):
        PatchGAN(3, 8, n_layers=0)


def test_images_of_other_channels_are_refused_by_name():
    # Used to be conv2d's "expected input[1, 1, 32, 32] to have 3 channels".
    with pytest.raises(ValueError, match=r"takes Tensor\[B, 3, H, W\] with sides >= 12, got \(1, 1, 32, 32\)"):
        PatchGAN(3, 8, n_layers=2)(torch.randn(1, 1, 32, 32))


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2], mean 5/6; relu(1 + fake) = [0, 1, 2], mean 1.
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_d_loss(torch.full((2, 1, 3, 3), 5.0), torch.full((2, 1, 3, 3), -5.0)).item() == 0
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)


def test_nonsaturating_losses_on_known_logits():
    zeros = torch.zeros(4)
    assert nonsaturating_d_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    assert nonsaturating_g_loss(zeros).item() == pytest.approx(math.log(2))
    assert nonsaturating_d_loss(torch.tensor([3.0]), torch.tensor([-3.0])).item() == pytest.approx(math.log1p(math.exp(-3)))


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(3, 4))
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    rec = (weight * a).pow(2).sum()  # gradient 2 a² w
    gan = (weight * b).sum()  # gradient b
    expected = (2 * a.pow(2) * weight).norm() / (b.norm() + 1e-4)
    result = adaptive_weight(rec, gan, weight)
    assert result.item() == pytest.approx(expected.item(), rel=1e-5) and not result.requires_grad
    (rec + result * gan).backward()  # both graphs were kept for the update
    assert weight.grad is not None


def test_adaptive_weight_is_clamped():
    weight = torch.nn.Parameter(torch.ones(2))
    rec = (weight * 1e3).sum()
    gan = (weight * 0.0).sum()
    assert adaptive_weight(rec, gan, weight).item() == 1e4
