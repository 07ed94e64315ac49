"""PatchGAN discriminator (Isola et al. 2017, pix2pix's NLayerDiscriminator) and the GAN losses of VQGAN.

The discriminator is a stack of 4×4 convolutions with LeakyReLU(0.2): ``n_layers`` of stride 2, one
of stride 1 and a 1-channel 4×4 output, so each output logit judges one overlapping patch (70×70
pixels for ``n_layers=3``) as real or fake. Weights start as pix2pix's: N(0, 0.02) for convolutions,
N(1, 0.02) for norm scales.

Normalisation: GroupNorm, not pix2pix's BatchNorm (taming offers BatchNorm or ActNorm). A VQGAN step
calls the discriminator on a batch of reconstructions, whose logits serve the generator loss and then
its own, and on a batch of real images for its own loss. In training mode BatchNorm
would normalise each of those all-real or all-fake batches by its own statistics, which lets the
discriminator tell the batches apart by their statistics rather than by their patches, and the
generator step would move its running statistics with fakes alone. GroupNorm judges every image on
its own, identically in both optimizer steps and in evaluation, and keeps nothing across batches.

Losses on logits (any shape, e.g. Tensor[B, 1, h, w]): :func:`hinge_d_loss` (VQGAN's default) and
:func:`nonsaturating_d_loss` for the discriminator, :func:`hinge_g_loss` and :func:`nonsaturating_g_loss`
for the generator; :func:`adaptive_weight` balances the generator's GAN loss against the
reconstruction loss by their gradient norms at the decoder's last layer (Esser et al., eq. 7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionzoo.layers.norm import GroupNorm


class PatchGAN(nn.Module):
    """Tensor[B, in_chans, H, W] (images in [-1, 1]) → logits Tensor[B, 1, h, w], one per patch.

    For H = W = 32: h = w = 6 with ``n_layers=2``, 2 with ``n_layers=3``; sides under ``3 * 2**n_layers``
    would leave no patch.

    Args:
        in_chans: image channels.
        width: channels of the first layer; doubled at each later layer up to 8× (pix2pix's ``ndf``).
        n_layers: stride-2 convolutions (pix2pix: 3).
    """

    def __init__(self, in_chans: int = 3, width: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1 or width < 1:
            raise ValueError(f"PatchGAN needs n_layers >= 1 and width >= 1, got n_layers={n_layers}, width={width}")
        self.in_chans = in_chans
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for index in range(1, n_layers + 1):
            out = width * min(2 ** index, 8)
            stride = 2 if index < n_layers else 1
            # No bias: the norm's shift replaces it.
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                       GroupNorm(math.gcd(32, out), out), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        minimum = 3 * 2 ** self.n_layers
        if images.dim() != 4 or images.shape[1] != self.in_chans or min(images.shape[-2:]) < minimum:
            raise ValueError(f"PatchGAN with {self.n_layers} layers takes Tensor[B, {self.in_chans}, H, W] with sides "
                             f">= {minimum}, got {tuple(images.shape)}")
        return self.layers(images)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's hinge loss ``(mean relu(1 - real) + mean relu(1 + fake)) / 2``: logits of any shape → scalar."""
    return 0.5 * (F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean())


def nonsaturating_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The original GAN's discriminator loss, binary cross-entropy on logits: ``(mean softplus(-real) +
    mean softplus(fake)) / 2``; logits of any shape → scalar."""
    return 0.5 * (F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """The generator's loss paired with the hinge loss (taming's): ``-mean fake``; logits of any shape → scalar."""
    return -fake_logits.float().mean()


def nonsaturating_g_loss(fake_logits: Tensor) -> Tensor:
    """The non-saturating generator loss ``mean softplus(-fake)`` (= -log sigmoid(fake)); logits of any shape → scalar."""
    return F.softplus(-fake_logits.float()).mean()


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer: Tensor, eps: float = 1e-4,
                    max_weight: float = 1e4) -> Tensor:
    """``‖∇ rec_loss‖ / (‖∇ gan_loss‖ + eps)``, the gradients taken at ``last_layer``, clamped to
    ``[0, max_weight]`` and detached: a scalar Tensor.

    ``rec_loss`` and ``gan_loss`` are scalars whose graphs reach ``last_layer`` (the decoder's last
    weight); both graphs are kept for the backward pass that follows.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return _norm_ratio(rec_grad, gan_grad, eps, max_weight)


def adaptive_weight_from_output_grads(output: Tensor, rec_grad: Tensor, gan_grad: Tensor, last_layer: Tensor,
                                      eps: float = 1e-4, max_weight: float = 1e4) -> Tensor:
    """:func:`adaptive_weight` from the two losses' gradients at ``output`` (the decoder's output, computed
    from ``last_layer``; ``rec_grad`` and ``gan_grad`` shaped like it) instead of from the losses.

    Backpropagating each loss to the output once, then from the output to ``last_layer`` only (a few
    cheap nodes), spares the perceptual network's and the discriminator's second backward pass: the
    caller reuses ``rec_grad + weight * gan_grad`` for the update. ``output``'s graph is kept.
    """
    rec, gan = (torch.autograd.grad(output, last_layer, grad_outputs=grad, retain_graph=True)[0]
                for grad in (rec_grad, gan_grad))
    return _norm_ratio(rec, gan, eps, max_weight)


def _norm_ratio(rec_grad: Tensor, gan_grad: Tensor, eps: float, max_weight: float) -> Tensor:
    weight = rec_grad.float().norm() / (gan_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
