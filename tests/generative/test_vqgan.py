"""VQGAN: the tokenizer interface, the straight-through gradient, the owned discriminator, bad input."""

import re

import pytest
import torch

from visionzoo.generative.vqgan import VQGAN, AttnBlock
from visionzoo.models import create_model, get_model_entry

TINY = dict(ch=8, ch_mult=(1, 2), z_channels=8, embed_dim=8, num_codes=32, disc_width=8)


def test_tokenizer_interface():
    torch.manual_seed(0)
    model = create_model("vqgan", in_chans=1, **{**TINY, "ch_mult": (1, 2, 2)}).eval()
    assert get_model_entry("vqgan").task == "vqgan" and model.in_chans == 1 and model.quantizer.num_codes == 32
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        reconstruction, indices, loss, stats = model(images)
        assert reconstruction.shape == images.shape and indices.shape == (2, 8, 8) and indices.dtype == torch.int64
        assert torch.equal(model.encode(images), indices)
        torch.testing.assert_close(model.decode(indices), reconstruction)
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1 and loss.ndim == 0 and loss >= 0
    assert 1 <= stats["perplexity"] <= 32 and 0 < stats["usage"] <= 1


def test_encode_in_training_mode_does_not_move_the_codebook():
    torch.manual_seed(0)
    model = create_model("vqgan", in_chans=1, **TINY)  # training mode, as built
    images = torch.rand(2, 1, 16, 16)
    codebook = model.quantizer.codebook.clone()
    first = model.encode(images)
    assert torch.equal(model.encode(images), first) and torch.equal(model.quantizer.codebook, codebook)
    with torch.no_grad():
        assert torch.equal(model.eval()(images)[1], first)


def test_default_sizes_and_the_8x_variant():
    assert create_model("vqgan").quantizer.num_codes >= 512
    model = create_model("vqgan_f8", **{**TINY, "ch_mult": (1, 1, 1, 2)}).eval()
    with torch.no_grad():
        assert model.encode(torch.rand(1, 3, 64, 64)).shape == (1, 8, 8)


def test_factorised_l2_normalised_codes_as_an_option():
    torch.manual_seed(0)
    model = VQGAN(in_chans=3, **TINY, code_dim=4, l2_normalize=True).eval()
    assert model.quantizer.codebook.shape == (32, 4) and VQGAN(in_chans=3, **TINY).quantizer.codebook.shape == (32, 8)
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        reconstruction, indices, _, _ = model(images)
        torch.testing.assert_close(model.decode(indices), reconstruction)
    torch.testing.assert_close(model.quantizer.code_vectors().norm(dim=1), torch.ones(32))


def test_the_gradient_passes_the_quantizer_and_reaches_the_last_layer():
    torch.manual_seed(0)
    model = VQGAN(in_chans=3, **TINY)
    reconstruction = model(torch.rand(2, 3, 16, 16))[0]
    reconstruction.mean().backward()
    assert model.last_layer_weight() is model.decoder.conv_out.weight
    assert model.last_layer_weight().grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # straight through the nearest-code lookup
    assert all(p.grad is None for p in model.discriminator.parameters())  # the forward never calls it


def test_one_state_dict_holds_the_discriminator():
    model = VQGAN(in_chans=1, **TINY)
    keys = model.state_dict().keys()
    assert any(k.startswith("discriminator.") for k in keys) and any(k.startswith("decoder.") for k in keys)
    assert model.discriminator(torch.rand(2, 1, 16, 16) * 2 - 1).shape == (2, 1, 2, 2)


def test_attention_mixes_positions():
    torch.manual_seed(0)
    block = AttnBlock(8)
    x = torch.randn(1, 8, 4, 4)
    moved = x.clone()
    moved[..., 0, 0] += 1.0
    changed = (block(moved) - block(x)).abs().sum(1)[0]
    assert changed[3, 3] > 0  # one position's change reaches the far corner


def test_bad_input_is_one_clear_error():
    model = VQGAN(in_chans=3, **TINY)
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="multiples of 2"):
        model.encode(torch.rand(2, 3, 15, 16))
    with pytest.raises(ValueError, match=r"Tensor\[B, h, w\]"):
        model.decode(torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="ch_mult"):
        VQGAN(ch_mult=(1,))
    with pytest.raises(ValueError, match="in_chans"):
        VQGAN(in_chans=0)


@pytest.mark.parametrize("images", [torch.rand(2, 1, 32, 32) * 255, torch.rand(2, 1, 32, 32) * 2 - 1],
                         ids=["0..255", "taming's -1..1"])
@pytest.mark.parametrize("name, who", [("vqvae_small", "VQ-VAE"), ("vqgan", "VQGAN"), ("vit_vqgan", "ViT-VQGAN")])
def test_images_outside_0_1_are_refused_by_every_tokenizer(name, who, images):
    """Images of 0..255, or in [-1, 1] as taming-transformers' VQGAN takes them, were encoded as they were (mapped
    again to [-1, 1]) by VQ-VAE, VQGAN and ViT-VQGAN: codes and reconstructions of other images, without a word."""
    torch.manual_seed(0)
    model = create_model(name, in_chans=1)
    for call in (model, model.encode):
        with pytest.raises(ValueError, match=rf"^{re.escape(who)} takes images in \[0, 1\]; these span"):
            call(images)
    assert model.encode(images.clamp(0, 1)).shape == (2, 8, 8)
