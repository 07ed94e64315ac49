"""ViT-VQGAN: shapes at 32 and 64 px, encode/decode round trip, factorised l2-normalised codes, gradients,
bad input, and a few steps of the "vqgan" task."""

import json

import pytest
import torch
import torch.nn.functional as F

from visionzoo.generative.vit_vqgan import ViTVQGAN
from visionzoo.layers import sincos_pos_embed_2d
from visionzoo.models import create_model, get_model_entry
from visionzoo.train import TrainConfig
from visionzoo.train.run import load_for_inference, run_training
from visionzoo.train.vqgan import VQGANTask

TINY = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, num_codes=64, code_dim=8, disc_width=8)


@pytest.mark.parametrize(("name", "size", "chans", "grid"), [
    ("vit_vqgan", 32, 1, 8), ("vit_vqgan", 32, 3, 8), ("vit_vqgan_64", 64, 3, 8), ("vit_vqgan_64", 64, 1, 8),
    ("vit_vqgan", 64, 3, 16),  # any multiple of the patch: the positions are computed for the grid
])
def test_shapes_and_encode_decode_give_the_forward_reconstruction(name, size, chans, grid):
    torch.manual_seed(0)
    model = create_model(name, in_chans=chans, **TINY).eval()
    images = torch.rand(2, chans, size, size)
    with torch.no_grad():
        reconstruction, indices, loss, stats = model(images)
        assert reconstruction.shape == images.shape and indices.shape == (2, grid, grid)
        assert indices.dtype == torch.int64 and 0 <= indices.min() and indices.max() < 64
        assert torch.equal(model.encode(images), indices)
        torch.testing.assert_close(model.decode(indices), reconstruction)
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1 and loss >= 0
    assert 1 <= stats["perplexity"] <= 64 and 0 < stats["usage"] <= 1
    assert model.quantizer.num_codes == 64 and model.in_chans == chans


def test_encode_in_training_mode_does_not_move_the_codebook():
    torch.manual_seed(0)
    model = create_model("vit_vqgan", in_chans=1, **TINY)  # training mode, as built
    images = torch.rand(2, 1, 16, 16)
    codebook = model.quantizer.codebook.clone()
    first = model.encode(images)
    assert torch.equal(model.encode(images), first) and torch.equal(model.quantizer.codebook, codebook)
    with torch.no_grad():
        assert torch.equal(model.eval()(images)[1], first)


def test_registered_sizes():
    assert get_model_entry("vit_vqgan").task == get_model_entry("vit_vqgan_64").task == "vqgan"
    model = create_model("vit_vqgan")
    assert model.quantizer.num_codes >= 512 and model.quantizer.code_dim == 8 and model.quantizer.l2_normalize
    assert model.patch_size == 4 and create_model("vit_vqgan_64").patch_size == 8


def test_codes_are_unit_vectors_in_the_low_dimensional_lookup_space():
    torch.manual_seed(1)
    model = ViTVQGAN(in_chans=1, **TINY)
    images = torch.rand(4, 1, 32, 32)
    model(images)  # a training forward: EMA update and dead-code restarts move the codebook
    quantizer = model.quantizer.eval()
    with torch.no_grad():
        tokens = model.encoder(images * 2 - 1)  # [B, N, 32]
        looked_up = F.normalize(quantizer.project_in(tokens), dim=-1)  # [B, N, 8]
        indices = model.encode(images).flatten(1)
        codes = quantizer.code_vectors()
    assert codes.shape == (64, 8) and looked_up.shape == (4, 64, 8)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(64))
    # the nearest unit code is the one of largest cosine similarity with the projected token
    assert torch.equal(indices, (looked_up @ codes.T).argmax(-1))
    decoded = quantizer.decode_indices(indices)
    torch.testing.assert_close(decoded, quantizer.project_out(codes[indices]))


def test_gradients_reach_the_encoder_and_the_last_layer():
    torch.manual_seed(2)
    model = ViTVQGAN(in_chans=3, **TINY)
    images = torch.rand(2, 3, 32, 32)
    reconstruction, _, vq_loss, _ = model(images)
    (F.mse_loss(reconstruction, images) + vq_loss).backward()
    last = model.last_layer_weight()
    assert last is model.decoder.head[-1].weight and last.shape == (4 * 4 * 3, 64)
    assert last.grad is not None and last.grad.abs().sum() > 0
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert all(p.grad is None for p in model.discriminator.parameters())  # the forward never runs it


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_cast_to_half_precision_reconstructs_as_in_float32(dtype):
    """The float32 sin-cos positions promoted the tokens of a model cast as a whole, whose LayerNorms then failed
    ('mixed dtype (CPU): expect parameter to have scalar type of Float'); they now take the tokens' dtype."""
    torch.manual_seed(0)
    model = create_model("vit_vqgan").eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, expected_codes = model(images)[:2]
        model.to(dtype)
        reconstruction, codes = model(images.to(dtype))[:2]
        decoded = model.decode(codes)
    assert reconstruction.dtype == decoded.dtype == dtype
    assert (codes == expected_codes).float().mean() > 0.9
    same = (codes == expected_codes).all(dim=(1, 2))
    assert same.any()
    torch.testing.assert_close(reconstruction[same].float(), expected[same], atol=0.02, rtol=0)
    torch.testing.assert_close(decoded, reconstruction)


def test_bad_input_is_one_clear_error():
    model = ViTVQGAN(in_chans=3, **TINY)
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        model.encode(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="multiples of the patch size 4"):
        model(torch.rand(2, 3, 30, 32))
    with pytest.raises(ValueError, match=r"Tensor\[B, h, w\]"):
        model.decode(torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible by 4"):
        ViTVQGAN(embed_dim=30, num_heads=2)
    with pytest.raises(ValueError, match="decoder_depth=0"):
        ViTVQGAN(decoder_depth=0)


def test_three_steps_of_the_vqgan_task_train_the_codec_and_the_discriminator(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=3, batch_size=8, lr=1e-3, overwrite=True,
                         progress=False, eval_every=0, checkpoint_every=10**9, precision="fp32")
    torch.manual_seed(0)
    untrained = create_model("vit_vqgan", in_chans=1, **TINY)
    torch.manual_seed(0)  # the run builds the same initial weights
    # the GAN loss from step 1 on; no perceptual network (it would train the domain classifier first)
    setup, result = run_training("vit_vqgan", "digits", config, 32, TINY,
                                 options={"disc_start": 1, "perceptual_weight": 0.0})
    assert isinstance(setup.task, VQGANTask) and isinstance(setup.model, ViTVQGAN) and result.steps == 3
    trained = setup.model.state_dict()
    for prefix in ("encoder.patch_embed.proj.weight", "decoder.head.2.weight", "discriminator."):
        name = next(key for key in trained if key.startswith(prefix))
        assert not torch.equal(trained[name], untrained.state_dict()[name]), name
    scores = result.metrics  # the final evaluation on the val split
    assert {"psnr", "codebook_usage", "perplexity"} <= set(scores)
    assert scores["psnr"] > 5 and 0 < scores["codebook_usage"] <= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "split" not in record]
    assert [record["discriminator/disc_active"] for record in steps] == [0.0, 1.0, 1.0]
    assert all(record["discriminator/d_loss"] > 0 and record["autoencoder/adaptive_weight"] > 0
               for record in steps[1:])
    reloaded = load_for_inference("vit_vqgan", tmp_path / "run" / "checkpoint.safetensors").model.eval()
    images = torch.stack([setup.splits["val"][i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(reloaded.encode(images), setup.model.eval().encode(images))


def test_patch_content_is_not_drowned_by_the_positions_on_low_contrast_images():
    """Shapes' 8×8 patches vary little; unnormalised, their embeddings vary across tokens ~3× less than the
    sin-cos positions, the first codes encode mostly position and training collapses to one code."""
    from visionzoo.data import create_dataset

    torch.manual_seed(0)
    shapes = create_dataset("shapes", "train", image_size=64)
    images = torch.stack([shapes[i][0] for i in range(8)])
    encoder = create_model("vit_vqgan_64", in_chans=3).encoder
    with torch.no_grad():
        raw = encoder.patch_embed(images * 2 - 1)
        tokens = encoder.embed_norm(raw)
    positions = sincos_pos_embed_2d((8, 8), tokens.shape[-1])
    content = tokens - tokens.mean((0, 1), keepdim=True)
    assert content.std() > positions.std()
    assert (raw - raw.mean((0, 1), keepdim=True)).std() < 0.5 * positions.std()  # what the normalisation fixes
