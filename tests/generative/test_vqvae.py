"""VQ-VAE: shapes, encode/decode round trip, bad input; the reconstruction task trains, evaluates and draws."""

import contextlib
import json
import math

import pytest
import torch
from torchvision.transforms.functional import to_pil_image

from visionzoo.cli import main
from visionzoo.models import create_model
from visionzoo.train import TrainConfig
from visionzoo.train.reconstruction import ReconstructionTask, psnr
from visionzoo.train.run import run_training

TINY = dict(channels=16, res_channels=8, embed_dim=8, num_codes=32)


def test_encode_decode_give_the_forward_reconstruction():
    torch.manual_seed(0)
    model = create_model("vqvae_small", in_chans=1, **TINY).eval()
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        reconstruction, indices, loss, stats = model(images)
        assert indices.shape == (2, 8, 8) and reconstruction.shape == images.shape
        assert torch.equal(model.encode(images), indices)
        torch.testing.assert_close(model.decode(indices), reconstruction)
    assert 0 <= reconstruction.min() and reconstruction.max() <= 1 and loss >= 0
    assert 1 <= stats["perplexity"] <= 32 and 0 < stats["usage"] <= 1


def test_encode_in_training_mode_does_not_move_the_codebook():
    torch.manual_seed(0)
    model = create_model("vqvae_small", in_chans=1, **TINY)  # training mode, as built
    images = torch.rand(2, 1, 32, 32)
    codebook = model.quantizer.codebook.clone()
    first = model.encode(images)
    assert torch.equal(model.encode(images), first) and torch.equal(model.quantizer.codebook, codebook)
    with torch.no_grad():
        assert torch.equal(model.eval()(images)[1], first)


def test_a_collapsed_codebook_is_reported(caplog):
    torch.manual_seed(0)
    model = create_model("vqvae_small", in_chans=1, **TINY).eval()
    images = [(torch.rand(1, 32, 32), 0) for _ in range(4)]
    task = ReconstructionTask()
    inputs = []
    handle = model.quantizer.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        model(torch.stack([image for image, _ in images]))
    handle.remove()
    vectors = inputs[0].permute(0, 2, 3, 1).reshape(-1, TINY["embed_dim"])
    model.quantizer.codebook.copy_(vectors[torch.randperm(len(vectors))[:32]])  # codes spread over the encoder's output
    with torch.no_grad(), caplog.at_level("WARNING", logger="visionzoo.train.reconstruction"):
        healthy = task.evaluate(model, images, 2, contextlib.nullcontext)
        assert healthy["perplexity"] >= 2 and not caplog.records
        model.quantizer.codebook.zero_()  # every distance ties: all tokens take code 0
        collapsed = task.evaluate(model, images, 2, contextlib.nullcontext)
    assert collapsed["perplexity"] == pytest.approx(1.0) and collapsed["codebook_usage"] == pytest.approx(1 / 32)
    assert "collapsed: 1 of 32 codes" in caplog.text


def test_bad_images_are_one_clear_error():
    model = create_model("vqvae_small", **TINY)
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.rand(2, 3, 30, 32))
    with pytest.raises(ValueError, match="downsample"):
        create_model("vqvae_small", downsample=0)


def test_decode_refuses_flat_or_out_of_range_codes():
    model = create_model("vqvae_small", in_chans=1, **TINY).eval()
    with pytest.raises(ValueError, match=r"decode takes code indices Tensor\[B, h, w\], got \(2, 64\)"):
        model.decode(torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match=r"code indices must be in 0\.\.31"):
        model.decode(torch.full((1, 2, 2), -1))


def test_psnr_per_image():
    images = torch.zeros(2, 1, 4, 4)
    noisy = images.clone()
    noisy[0] += 0.1  # mse 0.01: 20 dB
    noisy[1, :, :2] += 1.0  # mse 0.5: 3.01 dB
    assert psnr(noisy, images).tolist() == pytest.approx([20.0, 10 * math.log10(2)], rel=1e-5)


def test_a_short_run_on_digits_improves_the_reconstruction_and_uses_codes(tmp_path, capsys):
    config = TrainConfig(out=str(tmp_path / "run"), max_steps=60, batch_size=32, lr=2e-3, overwrite=True,
                         progress=False, eval_every=0, checkpoint_every=10**9, precision="fp32")
    torch.manual_seed(0)
    untrained = create_model("vqvae_small", in_chans=1, **TINY).eval()
    setup, result = run_training("vqvae_small", "digits", config, 32, TINY)
    task, model = setup.task, setup.model.eval()
    assert isinstance(task, ReconstructionTask) and result.steps == 60
    before = task.evaluate(untrained, setup.splits["val"], 128, contextlib.nullcontext)
    after = task.evaluate(model, setup.splits["val"], 128, contextlib.nullcontext)
    assert after["psnr"] > before["psnr"] + 5 and after["codebook_usage"] > 0.2
    assert set(after) == {"psnr", "mse", "codebook_usage", "perplexity"}
    image = setup.splits["val"][0][0]
    prediction = task.predict(model, image[None], contextlib.nullcontext)[0]
    assert prediction["psnr"] == pytest.approx(float(psnr(prediction["reconstruction"][None], image[None])), rel=1e-4)
    assert task.draw(image, prediction).size == (256, 128)
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    to_pil_image(image).save(tmp_path / "digit.png")
    assert main(["predict", "vqvae_small", "--checkpoint", str(checkpoint), str(tmp_path / "digit.png"),
                 "--out", str(tmp_path / "pred")]) == 0
    assert "dB through" in capsys.readouterr().out
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())[0]
    assert record["psnr"] > 10 and len(record["indices"]) == 8 and (tmp_path / "pred" / "digit.png").is_file()


def test_a_checkpoint_evaluated_on_data_of_other_channels_is_refused_naming_both(tmp_path):
    """Built for Shapes' 3 channels instead, it used to fail as "does not fit model vqvae_small: 3 shape mismatches"."""
    from visionzoo.checkpoint import save_checkpoint
    from visionzoo.train.run import load_for_inference

    model = create_model("vqvae_small", in_chans=1, **TINY)
    path = tmp_path / "vqvae.safetensors"
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()},
                    {"model": {"name": "vqvae_small", "args": {"in_chans": 1, **TINY}},
                     "run": {"data": "digits", "img_size": 16, "in_chans": 1}})
    with pytest.raises(ValueError, match="vqvae_small from .* was trained with in_chans 1, the shapes images here have 3"):
        load_for_inference("vqvae_small", path, data="shapes")
    assert load_for_inference("vqvae_small", path).model.in_chans == 1


def test_an_img_size_the_tokenizer_cannot_cut_into_codes_is_refused_before_the_run(tmp_path, capsys):
    """It used to start the run ("training vqvae_small for 1 steps ...") and fail at the first step."""
    run = tmp_path / "run"
    argv = ["train", "vqvae_small", "--data", "digits", "--img-size", "18", "--max-steps", "1", "--no-progress",
            "--out", str(run), *[a for k, v in TINY.items() for a in ("--model-arg", f"{k}={v}")]]
    assert main(argv) == 2
    assert capsys.readouterr().err == ("visionzoo train: error: vqvae_small takes no 18 px images (image sides must be "
                                       "multiples of 4 (2**downsample), got (18, 18)): give another --img-size, "
                                       "such as its registered 64\n")
    assert not run.exists()


def test_a_patch_size_that_does_not_divide_the_img_size_is_refused_naming_a_size_it_takes(tmp_path, capsys):
    """It said "vit_vqgan_64 takes no 12 px images (...): give another --img-size", naming no size it takes."""
    run = tmp_path / "run"
    assert main(["train", "vit_vqgan_64", "--data", "digits", "--img-size", "12", "--max-steps", "1", "--no-progress",
                 "--out", str(run)]) == 2
    assert capsys.readouterr().err == (
        "visionzoo train: error: vit_vqgan_64 takes no 12 px images (image sides must be multiples of the patch size "
        "8, got (12, 12)): give another --img-size, such as its registered 64\n")
    assert not run.exists()


class _Overshooting(torch.nn.Module):
    """A tokenizer whose reconstruction leaves [0, 1] (a decoder without a squashing output)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.5))
        self.quantizer = torch.nn.Module()
        self.quantizer.num_codes = 4

    def forward(self, images):
        reconstruction = images * self.scale - 0.25
        indices = torch.zeros(len(images), 2, 2, dtype=torch.long)
        return reconstruction, indices, torch.zeros(()), {}


def test_evaluation_scores_the_clamped_reconstruction_that_predict_scores_and_draws():
    """eval scored the raw reconstruction, predict the one clamped to [0, 1] that it draws: one image, two PSNRs."""
    torch.manual_seed(0)
    images = torch.rand(3, 1, 8, 8)
    task, model = ReconstructionTask(), _Overshooting().eval()
    scores = task.evaluate(model, [(image, 0) for image in images], 2, contextlib.nullcontext)
    predictions = task.predict(model, images, contextlib.nullcontext)
    shown = torch.stack([prediction["reconstruction"] for prediction in predictions])
    assert shown.min() == 0 and shown.max() == 1  # the clamp bit
    assert scores["psnr"] == pytest.approx(sum(p["psnr"] for p in predictions) / 3, rel=1e-6)
    assert scores["mse"] == pytest.approx(float((shown - images).pow(2).mean()), rel=1e-6)
