"""DCGAN: shapes and range at 32 and 64 px, clear errors for bad sizes, the paper's initialisation, seeded sampling."""

import numpy as np
import pytest
import torch
from torch import nn

from visionzoo.generative.dcgan import DCGAN
from visionzoo.models import create_model, get_model_entry

TINY = dict(latent_dim=8, generator_width=4, discriminator_width=4)


@pytest.mark.parametrize("img_size", [32, 64])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_generated_images_and_logits_have_the_right_shapes_and_range(img_size, in_chans):
    torch.manual_seed(0)
    model = create_model("dcgan", in_chans=in_chans, img_size=img_size, **TINY)
    images = model.generate(3, torch.Generator().manual_seed(0))
    assert images.shape == (3, in_chans, img_size, img_size)
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0
    assert model.discriminate(images).shape == (3,)
    assert (model.in_chans, model.img_size, model.latent_dim) == (in_chans, img_size, 8)


def test_widths_double_towards_the_4x4_map():
    model = DCGAN(in_chans=3, img_size=64, generator_width=64, discriminator_width=32)
    first_g = model.generator.layers[0]
    assert (first_g.in_channels, first_g.out_channels) == (100, 512)
    convs = [m for m in model.discriminator.layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 1]
    batch_norms = [m for m in model.discriminator.layers if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == 3, "every discriminator layer but the first (and the logit) has BatchNorm"


def test_bad_sizes_and_inputs_are_clear_errors():
    for size in (8, 48, 0):
        with pytest.raises(ValueError, match=f"power of two of at least 16, got {size}"):
            DCGAN(img_size=size)
    with pytest.raises(ValueError, match="in_chans must be 1 or 3, got 2"):
        DCGAN(in_chans=2)
    with pytest.raises(ValueError, match="latent_dim must be positive, got 0"):
        DCGAN(latent_dim=0)
    model = DCGAN(img_size=16, **TINY)
    with pytest.raises(ValueError, match=r"latents Tensor\[B, 8\], got \(2, 100\)"):
        model(torch.randn(2, 100))
    with pytest.raises(ValueError, match=r"Tensor\[B, 1, 16, 16\] images, got \(2, 3, 16, 16\)"):
        model.discriminate(torch.rand(2, 3, 16, 16))
    # A float count used to fail inside torch.randn, a missing generator with "'NoneType' object has no attribute".
    for count in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"count must be a positive integer, got {count!r}"):
            model.generate(count, torch.Generator())
    assert model.generate(np.int64(2), torch.Generator()).shape[0] == 2
    torch.manual_seed(1)
    unseeded = model.generate(2)
    torch.manual_seed(1)
    assert torch.equal(model.generate(2, None), unseeded)


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    model = DCGAN(in_chans=3, img_size=64)
    checked = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        weight = None if weight is None else weight.detach()
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and weight.numel() > 100_000:
            assert abs(float(weight.mean())) < 1e-3 and float(weight.std()) == pytest.approx(0.02, rel=0.03)
            checked += 1
        if isinstance(module, nn.BatchNorm2d) and weight.numel() >= 256:
            assert float(weight.mean()) == pytest.approx(1.0, abs=0.005)
            assert float(weight.std()) == pytest.approx(0.02, rel=0.25)
            checked += 1
        if getattr(module, "bias", None) is not None:
            assert not module.bias.any()
    assert checked == 7 + 4


def test_the_same_seed_gives_the_same_images():
    model = DCGAN(img_size=16, **TINY).eval()
    first = model.generate(4, torch.Generator().manual_seed(3))
    assert torch.equal(first, model.generate(4, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, model.generate(4, torch.Generator().manual_seed(4)))


def test_generate_in_training_mode_samples_as_in_eval_and_leaves_the_running_statistics():
    """In training mode generate used to normalise by the batch's statistics and move BatchNorm's running ones."""
    torch.manual_seed(0)
    model = DCGAN(img_size=16, **TINY)
    expected = model.eval().generate(4, torch.Generator().manual_seed(3))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    torch.testing.assert_close(model.generate(4, torch.Generator().manual_seed(3)), expected)
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    assert all(module.training for module in model.modules())


def test_registered_for_the_gan_task():
    entry = get_model_entry("dcgan")
    assert entry.task == "gan" and entry.default_cfg["input_size"] == (1, 32, 32)


@pytest.mark.parametrize("seed", [0, np.int64(3), "0"])
def test_a_seed_given_for_the_generator_is_refused_naming_the_argument(seed):
    """generate(2, generator=0) failed with "AttributeError: 'int' object has no attribute 'device'"."""
    model = DCGAN(**TINY)
    for call in (model.generate, model.sample_latents):
        with pytest.raises(ValueError, match=r"generator must be a torch.Generator or None, got .* \(seed one with "
                                             r"torch.Generator\(\).manual_seed"):
            call(2, generator=seed)
