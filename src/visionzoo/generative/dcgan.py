"""DCGAN (Radford, Metz, Chintala 2016): an all-convolutional generator and discriminator.

The generator maps a latent ``z ~ N(0, I)`` to a 4×4 map with a 4×4 transposed convolution, then
doubles the side with 4×4 stride-2 transposed convolutions (BatchNorm, ReLU) up to the image size,
halving the width each time, and ends in a tanh. The discriminator mirrors it: 4×4 stride-2
convolutions with LeakyReLU(0.2), BatchNorm on every layer but the first, down to 4×4, then a 4×4
convolution to one logit. Weights start from N(0, 0.02), BatchNorm scales from N(1, 0.02), as in the
paper. Images are in [0, 1] outside the module and in [-1, 1] inside it.

``DCGAN`` holds both networks (one checkpoint); ``model(z)`` generates, ``model.discriminate(images)``
scores, ``model.generate(count, generator)`` samples. The training objective lives in
:mod:`visionzoo.train.gan`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from visionzoo.models._registry import register_model
from visionzoo.utils import check_argument_types, check_generator, eval_mode, is_integer

IN_CHANS = (1, 3)
MIN_SIZE = 16


def is_drawable_size(img_size: int) -> bool:
    """Whether a DCGAN draws images of side ``img_size``: a power of two of at least ``MIN_SIZE``."""
    return img_size >= MIN_SIZE and not img_size & (img_size - 1)


def _check_size(img_size: int) -> int:
    """The number of stride-2 stages between 4×4 and ``img_size`` (a power of two ≥ 16)."""
    if not is_drawable_size(img_size):
        raise ValueError(f"DCGAN img_size must be a power of two of at least {MIN_SIZE}, got {img_size}")
    return img_size.bit_length() - 3


class Generator(nn.Module):
    """Tensor[B, latent_dim] → Tensor[B, out_chans, img_size, img_size] in [-1, 1] (tanh).

    ``width`` is the channel count of the last hidden layer; each earlier one doubles it
    (``width * img_size / 8`` channels at 4×4).
    """

    def __init__(self, latent_dim: int, out_chans: int, img_size: int, width: int):
        super().__init__()
        stages = _check_size(img_size)
        channels = [width * 2 ** (stages - 1 - index) for index in range(stages)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, channels[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        for a, b in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(channels[-1], out_chans, 4, 2, 1), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z[:, :, None, None])


class Discriminator(nn.Module):
    """Tensor[B, in_chans, img_size, img_size] in [-1, 1] → logits Tensor[B] (real > 0).

    ``width`` is the channel count of the first layer; each later one doubles it.
    """

    def __init__(self, in_chans: int, img_size: int, width: int):
        super().__init__()
        stages = _check_size(img_size)
        channels = [width * 2 ** index for index in range(stages)]
        layers: list[nn.Module] = [nn.Conv2d(in_chans, channels[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for a, b in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(channels[-1], 1, 4, 1, 0)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images).flatten()


def init_weights(module: nn.Module) -> None:
    """The paper's initialisation: (transposed) convolutions N(0, 0.02), BatchNorm scale N(1, 0.02), biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(nn.Module):
    """A DCGAN generator and discriminator for square images in [0, 1].

    Args:
        in_chans: image channels, 1 or 3.
        img_size: image side, a power of two of at least 16.
        latent_dim: size of the latent ``z ~ N(0, I)``.
        generator_width: channels of the generator's last hidden layer (doubling towards 4×4).
        discriminator_width: channels of the discriminator's first layer (doubling towards 4×4).
    """

    @check_argument_types
    def __init__(self, in_chans: int = 1, img_size: int = 32, latent_dim: int = 100, generator_width: int = 64,
                 discriminator_width: int = 64):
        super().__init__()
        if in_chans not in IN_CHANS:
            raise ValueError(f"DCGAN in_chans must be 1 or 3, got {in_chans}")
        _check_size(img_size)
        for name, value in (("latent_dim", latent_dim), ("generator_width", generator_width),
                            ("discriminator_width", discriminator_width)):
            if value < 1:
                raise ValueError(f"DCGAN {name} must be positive, got {value}")
        self.in_chans = in_chans
        self.img_size = img_size
        self.latent_dim = latent_dim
        self.generator = Generator(latent_dim, in_chans, img_size, generator_width)
        self.discriminator = Discriminator(in_chans, img_size, discriminator_width)
        self.apply(init_weights)

    def forward(self, z: Tensor) -> Tensor:
        """Latents Tensor[B, latent_dim] → images Tensor[B, in_chans, img_size, img_size] in [0, 1]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"DCGAN takes latents Tensor[B, {self.latent_dim}], got {tuple(z.shape)}")
        return (self.generator(z) + 1) / 2

    def discriminate(self, images: Tensor) -> Tensor:
        """Images Tensor[B, in_chans, img_size, img_size] in [0, 1] → logits Tensor[B] (real > 0)."""
        expected = (self.in_chans, self.img_size, self.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"DCGAN's discriminator takes Tensor[B, {', '.join(map(str, expected))}] images, "
                             f"got {tuple(images.shape)}")
        return self.discriminator(images * 2 - 1)

    def sample_latents(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` latents from N(0, I) drawn from ``generator`` (None: the global RNG): float32
        Tensor[count, latent_dim] on the model's device."""
        check_generator(generator)
        device = next(self.parameters()).device
        source = device if generator is None else generator.device
        return torch.randn(int(count), self.latent_dim, generator=generator, device=source).to(device)

    @torch.no_grad()
    def generate(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` images Tensor[count, in_chans, img_size, img_size] in [0, 1]; the randomness is ``generator``'s.

        Runs in eval mode (BatchNorm's running statistics) and gives the model back in its own mode: in training
        mode the batch would be normalised by its own statistics and move the running ones.
        """
        if not is_integer(count) or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        with eval_mode(self):
            return self(self.sample_latents(count, generator))


@register_model(task="gan", input_size=(1, 32, 32))
def dcgan(**kwargs) -> DCGAN:
    """DCGAN with the paper's widths (64 channels next to the image, doubling towards 4×4) and a 100-d latent."""
    return DCGAN(**kwargs)
