"""VQGAN: the tokenizer interface, the straight-through gradient, the owned discriminator, bad input; taming-transformers'
checkpoints (Lightning .ckpt files, the official f16 configs, pretrained=True) against taming's own modules."""

import re
import sys
import types

import numpy as np
import pytest
import torch
from taming_reference import TamingVQModel
from torch import nn

from served_file import served_file
from visionzoo.checkpoint import CheckpointError
from visionzoo.generative.vqgan import VQGAN, AttnBlock, taming_vqgan_args
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


# ------------------------------------------------------------------ taming-transformers' files and models
# a taming ddconfig small enough for a test, with attention inside a level (8 px at resolution 32) as the f16 models
TAMING_SMALL = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=32, z_channels=16,
                    embed_dim=8, num_codes=64)


class _FakeModelCheckpoint:  # pickled under Lightning's module name, as Lightning 1.0 keyed its callbacks
    pass


def taming_ckpt(path, model: nn.Module, monkeypatch) -> None:
    """Save ``model`` as a Lightning 1.0 ``last.ckpt`` of taming's: the state dict with its loss module's weights,
    optimizer states, and the callbacks keyed by Lightning's ModelCheckpoint class."""
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = sys.modules["pytorch_lightning.callbacks.model_checkpoint"]
    _FakeModelCheckpoint.__module__, _FakeModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = _FakeModelCheckpoint
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    state["loss.discriminator.main.2.running_mean"] = torch.zeros(128)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    state["loss.logvar"] = torch.zeros(())
    torch.save({"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.0.8", "state_dict": state,
                "callbacks": {_FakeModelCheckpoint: {"best_model_score": torch.tensor(0.5), "best_model_path": "x"}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
                "lr_schedulers": []}, path)


def seeded_taming(sizes=TAMING_SMALL, in_chans=3) -> TamingVQModel:
    torch.manual_seed(0)
    model = TamingVQModel(**sizes, in_chans=in_chans)
    with torch.no_grad():  # taming's uniform(-1/n, 1/n) codebook would leave all vectors near one code
        model.quantize.embedding.weight.normal_()
        for module in model.modules():  # GroupNorm affine off its identity init, so a misplaced norm shows
            if isinstance(module, nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model.eval()


def test_a_taming_checkpoint_gives_tamings_codes_and_reconstructions(tmp_path, monkeypatch):
    reference = seeded_taming()
    path = tmp_path / "last.ckpt"
    taming_ckpt(path, reference, monkeypatch)
    ours = create_model("vqgan", checkpoint=path, **TAMING_SMALL, ema_decay=None, out_act="clamp").eval()
    images = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(1))  # not the ddconfig's resolution
    with torch.no_grad():
        theirs, their_indices = reference(images * 2 - 1)
        reconstruction, indices, _, _ = ours(images)
        assert torch.equal(indices.flatten(), their_indices) and len(indices.unique()) > 10
        torch.testing.assert_close(reconstruction, ((theirs + 1) / 2).clamp(0, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(indices), reconstruction)
    # one per residual block of the 8-px level: 1 in the encoder, 2 in the decoder (one more block per level)
    assert [sum(isinstance(m, AttnBlock) for m in part) for part in (ours.encoder.down, ours.decoder.up)] == [1, 2]


def test_a_taming_checkpoint_into_an_ema_codebook_starts_its_averages_at_the_codes(tmp_path, monkeypatch):
    reference = seeded_taming()
    taming_ckpt(tmp_path / "last.ckpt", reference, monkeypatch)
    ours = create_model("vqgan", checkpoint=tmp_path / "last.ckpt", **TAMING_SMALL, out_act="clamp")
    assert torch.equal(ours.quantizer.codebook, reference.quantize.embedding.weight)
    assert torch.equal(ours.quantizer.ema_sum / ours.quantizer.ema_count[:, None], ours.quantizer.codebook)

    torch.manual_seed(5)
    fresh = create_model("vqgan", **TAMING_SMALL, out_act="clamp")
    torch.manual_seed(5)
    loaded = create_model("vqgan", checkpoint=tmp_path / "last.ckpt", **TAMING_SMALL, out_act="clamp")
    for key, value in fresh.discriminator.state_dict().items():  # taming's loss.discriminator is not loaded
        assert torch.equal(loaded.discriminator.state_dict()[key], value), key


def test_the_official_f16_configs_are_tamings_sizes(tmp_path, monkeypatch):
    sizes = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256,
                 z_channels=256, embed_dim=256)
    for name, codes in (("vqgan_imagenet_f16_1024", 1024), ("vqgan_imagenet_f16_16384", 16384)):
        reference = TamingVQModel(**sizes, num_codes=codes)
        ours = create_model(name)
        ours_count = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith("discriminator."))
        assert ours_count == sum(p.numel() for p in reference.parameters())
        assert ours.out_act == "clamp" and ours.quantizer.ema_decay is None
        assert get_model_entry(name).pretrained.url.startswith("https://heibox.uni-heidelberg.de/d/")
    path = tmp_path / "last.ckpt"
    taming_ckpt(path, reference, monkeypatch)  # all of the last one's keys map onto ours
    create_model("vqgan_imagenet_f16_16384", checkpoint=path)


def test_pretrained_downloads_tamings_share_link_once(tmp_path, monkeypatch):
    reference = seeded_taming()
    payload = tmp_path / "last.ckpt"
    taming_ckpt(payload, reference, monkeypatch)
    small = {key: value for key, value in TAMING_SMALL.items() if key != "num_codes"}
    with served_file(payload, monkeypatch, tmp_path) as requests:
        for _ in range(2):
            ours = create_model("vqgan_imagenet_f16_1024", pretrained=True, **small, num_codes=64).eval()
    assert requests == ["/d/8088892a516d4e3baf92/files/?p=%2Fckpts%2Flast.ckpt&dl=1"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["vqgan_imagenet_f16_1024.ckpt"]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(images)[0], ((reference(images * 2 - 1)[0] + 1) / 2).clamp(0, 1),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra, message", [
    ({"quantize.used": torch.arange(64)}, "remapped indices"),
    ({"quantize.proj.weight": torch.zeros(64, 16, 1, 1)}, "Gumbel"),
])
def test_taming_files_this_vqgan_cannot_be_are_refused_by_what_they_hold(tmp_path, extra, message):
    state = {**seeded_taming().state_dict(), **extra}
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=message):
        create_model("vqgan", checkpoint=tmp_path / "model.pth", **TAMING_SMALL, ema_decay=None)


def test_a_taming_file_of_other_sizes_is_refused_naming_the_keys(tmp_path):
    torch.save(seeded_taming().state_dict(), tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys|shape"):
        create_model("vqgan", checkpoint=tmp_path / "model.pth", **{**TAMING_SMALL, "attn_resolutions": ()},
                     ema_decay=None)


@pytest.mark.parametrize("arguments, message", [
    (dict(attn_resolutions=(16,)), "needs the resolution"),
    (dict(attn_resolutions=(12,), resolution=32), r"attn_resolutions \[12\] are no level's map side"),
    (dict(out_act="sigmoid"), "out_act must be one of"),
])
def test_taming_arguments_that_cannot_be_built_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        VQGAN(**{**TINY, **arguments})


def test_inference_runs_channels_last_and_gives_the_codes_and_images_of_the_autograd_path():
    torch.manual_seed(0)
    model = create_model("vqgan", **TAMING_SMALL, ema_decay=None, out_act="clamp").eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with_grad, codes_with_grad, _, _ = model(images)
    seen = []
    model.decoder.conv_out.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0]))
    with torch.no_grad():
        without_grad, codes, _, _ = model(images)
    assert seen[-1].is_contiguous(memory_format=torch.channels_last) and not seen[-1].is_contiguous()
    assert torch.equal(codes, codes_with_grad)
    torch.testing.assert_close(without_grad, with_grad.detach(), atol=1e-5, rtol=1e-5)


TAMING_YAML = """
model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 8
    n_embed: 64
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 16
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult: [1, 2, 2]
      num_res_blocks: 1
      attn_resolutions: [8]
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params: {disc_start: 10000, disc_weight: 0.8, codebook_weight: 1.0}
"""


def test_tamings_model_yaml_gives_the_arguments_of_its_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "model.yaml").write_text(TAMING_YAML)
    reference = seeded_taming()
    taming_ckpt(tmp_path / "last.ckpt", reference, monkeypatch)
    args = taming_vqgan_args(tmp_path / "model.yaml")
    assert args == {**{key: value for key, value in TAMING_SMALL.items()}, "in_chans": 3, "dropout": 0.0,
                    "ema_decay": None, "dead_code_threshold": 0.0, "out_act": "clamp"}
    ours = create_model("vqgan", checkpoint=tmp_path / "last.ckpt", **args).eval()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(images)[0], ((reference(images * 2 - 1)[0] + 1) / 2).clamp(0, 1),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (("target: taming.models.vqgan.VQModel", "target: taming.models.vqgan.GumbelVQ"), "is not taming.models.vqgan.VQModel"),
    (("double_z: false", "double_z: true"), "KL autoencoder"),
    (("    n_embed: 64\n", ""), "lacks n_embed"),
    (("out_ch: 3", "out_ch: 1"), "out_ch 1 differs"),
])
def test_a_taming_config_this_vqgan_cannot_be_is_refused_naming_what(tmp_path, change, message):
    (tmp_path / "model.yaml").write_text(TAMING_YAML.replace(*change))
    with pytest.raises(ValueError, match=f"taming config {re.escape(str(tmp_path))}.*{message}"):
        taming_vqgan_args(tmp_path / "model.yaml")


def test_predict_pretrained_reconstructs_each_image_as_taming_reads_it(tmp_path, monkeypatch, capsys):
    """`predict --pretrained` refused taming's official VQGANs ("a vqgan model; ... classifiers and detectors"), where
    `predict --checkpoint` reconstructs a trained VQGAN's images. It reconstructs each image as taming-transformers
    reads it: the shorter side resized to the model's size, the centre square cropped, scaled to [-1, 1]."""
    import dataclasses
    import json

    from PIL import Image

    from visionzoo.cli import main
    from visionzoo.models import _registry as registry

    reference = seeded_taming()
    payload = tmp_path / "last.ckpt"
    taming_ckpt(payload, reference, monkeypatch)
    name = "vqgan_imagenet_f16_16384"
    entry = get_model_entry(name)

    def small(**kwargs):  # the official model at the served weights' sizes, and its side at theirs
        return entry.builder(**{**TAMING_SMALL, **kwargs})

    monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(
        entry, builder=small, default_cfg={**entry.default_cfg, "input_size": (3, 32, 32)}))
    pixels = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)  # 64 wide: the centre 32 are read
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    with served_file(payload, monkeypatch, tmp_path) as requests:
        assert main(["predict", name, "--pretrained", str(tmp_path / "wide.png"), "--out", str(tmp_path / "o")]) == 0
    assert len(requests) == 1
    (record,) = json.loads((tmp_path / "o" / "predictions.json").read_text())
    crop = torch.from_numpy(pixels[:, 16:48]).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        reconstruction, indices = reference(crop * 2 - 1)
    reconstruction = ((reconstruction + 1) / 2).clamp(0, 1)
    assert record["indices"] == indices.reshape(1, 8, 8)[0].tolist()
    mse = float((reconstruction - crop).pow(2).mean())
    assert abs(record["psnr"] - 10 * np.log10(1 / mse)) < 1e-3
    assert f"wide.png: PSNR {record['psnr']:.2f} dB" in capsys.readouterr().out
    assert Image.open(tmp_path / "o" / "wide.png").size == (128 * 2, 128)  # the crop and its reconstruction
