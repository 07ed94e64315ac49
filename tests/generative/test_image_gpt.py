"""Image GPT: k-means palette, pixel ↔ token round trip, completion, learning on 8×8 Digits, linear probes."""

import math

import pytest
import torch

from visionzoo.generative.image_gpt import (
    kmeans,
    layer_features,
    plot_probe_curve,
    probe_accuracies,
    raw_pixel_probe,
)
from visionzoo.models import create_model
from visionzoo.train import TrainConfig
from visionzoo.train.run import load_for_inference, run_training

TINY = dict(embed_dim=32, depth=3, num_heads=2)


def test_kmeans_finds_separated_clusters_and_is_seeded():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.1, 0.1, 0.1], [0.9, 0.2, 0.2], [0.3, 0.8, 0.5]])
    points = (centres[:, None] + 0.02 * torch.randn(3, 200, 3, generator=generator)).reshape(-1, 3)
    found = kmeans(points, 3, generator=torch.Generator().manual_seed(1))
    assert torch.cdist(found, centres).min(1).values.max() < 0.01
    assert torch.equal(found, kmeans(points, 3, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="M >= k"):
        kmeans(points[:2], 3)


def test_palette_fit_and_pixel_token_round_trip():
    model = create_model("image_gpt_small", in_chans=3, img_size=4, palette_size=4, **TINY)
    colours = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    ids = torch.randint(0, 4, (20, 4, 4), generator=torch.Generator().manual_seed(0))
    images = colours[ids].permute(0, 3, 1, 2)
    model.fit_palette(images, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.palette, colours)  # darkest first
    tokens = model.tokens(images)
    assert tokens.shape == (20, 16) and torch.equal(tokens, ids.flatten(1))  # raster order
    assert torch.equal(model.images_from_tokens(tokens), images)
    for dtype in (torch.uint8, torch.int16):  # uint8 was read as a boolean mask, int16 refused by indexing
        assert torch.equal(model.images_from_tokens(tokens.to(dtype)), images)
    noisy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    nearest = torch.cdist(noisy.permute(0, 2, 3, 1).reshape(-1, 3), colours).argmin(1).reshape(20, 16)
    assert torch.equal(model.tokens(noisy), nearest)
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, 4, 4\]"):
        model.tokens(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"Tensor\[B, 16\]"):
        model.images_from_tokens(torch.zeros(2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"Image GPT tokens must be Tensor\[1, 16\] in 0\.\.3, .* values -1\.\.0"):
        model.images_from_tokens(torch.tensor([[-1] + [0] * 15]))  # not the last palette colour, silently
    with pytest.raises(ValueError, match="palette_size >= 2, got 1, 4, 0"):
        create_model("image_gpt_small", img_size=4, palette_size=0, **TINY)  # not the default 16, silently


def test_complete_keeps_the_top_half():
    torch.manual_seed(0)
    model = create_model("image_gpt_small", in_chans=1, img_size=6, **TINY).eval()
    images = torch.rand(3, 1, 6, 6)
    completed = model.complete(images, torch.Generator().manual_seed(0), top_k=5)
    assert completed.shape == images.shape
    quantised = model.images_from_tokens(model.tokens(images))
    assert torch.equal(completed[..., :3, :], quantised[..., :3, :])
    assert not torch.equal(completed[..., 3:, :], quantised[..., 3:, :])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Image GPT trained for 60 steps on 8×8 Digits (a few seconds)."""
    out = tmp_path_factory.mktemp("image_gpt") / "run"
    config = TrainConfig(out=str(out), max_steps=60, batch_size=32, lr=3e-3, overwrite=True, progress=False,
                         checkpoint_every=10**9, precision="fp32")
    setup, result = run_training("image_gpt_small", "digits", config, 8, TINY)
    return setup, result, out


def test_a_tiny_image_gpt_learns_digits(trained):
    setup, result, out = trained
    model = setup.model.eval()
    assert model.palette.shape == (16, 1) and model.gpt.num_classes == 0
    val = torch.stack([image for image, _ in setup.splits["val"]])
    counts = torch.bincount(model.tokens(val).flatten(), minlength=16).float()
    unigram = float(-(counts / counts.sum() * (counts / counts.sum()).clamp_min(1e-12).log()).sum())
    # Well below the uniform log 16 and below the entropy of the palette histogram: it uses the context.
    assert result.metrics["nll"] < 0.7 * math.log(16) and result.metrics["nll"] < unigram - 0.2
    assert result.metrics["bits"] == pytest.approx(result.metrics["nll"] / math.log(2))
    assert (out / "samples.png").is_file() and (out / "completions.png").is_file()
    reloaded = load_for_inference("image_gpt_small", out / "checkpoint.safetensors")
    assert torch.equal(reloaded.model.palette, model.palette)  # the palette travels in the checkpoint


def test_linear_probes_give_one_accuracy_per_layer_and_a_curve(trained, tmp_path):
    setup, _, _ = trained
    model = setup.model
    train = setup.splits["train"]
    test = setup.splits["test"]
    train_images = torch.stack([train[i][0] for i in range(400)])
    train_labels = [train[i][1] for i in range(400)]
    test_images = torch.stack([test[i][0] for i in range(len(test))])
    test_labels = [test[i][1] for i in range(len(test))]
    features = layer_features(model, test_images, batch_size=64)
    assert len(features) == TINY["depth"] + 1 and all(f.shape == (len(test), 32) for f in features)
    accuracies = probe_accuracies(model, train_images, train_labels, test_images, test_labels)
    assert len(accuracies) == TINY["depth"] + 1
    assert all(0 <= a <= 1 for a in accuracies) and max(accuracies) > 0.3  # ten classes: chance is 0.1
    raw = raw_pixel_probe(train_images, train_labels, test_images, test_labels)
    assert 0.8 < raw <= 1
    path = plot_probe_curve(accuracies, raw, tmp_path / "probe.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seeds = plot_probe_curve([accuracies, [a * 0.9 for a in accuracies]], None, tmp_path / "seeds.png")
    assert seeds.stat().st_size > 1000
    with pytest.raises(ValueError, match="list per layer"):
        plot_probe_curve([[[0.5]]], None, tmp_path / "bad.png")


@pytest.mark.parametrize("fill, span", [(255.0, "these span [0"), (float("nan"), "these hold 1 NaN value"),
                                       (-1.0, "these span [-1, ")])
def test_images_outside_0_1_are_refused_not_read_as_the_brightest_colour(fill, span):
    """Images of 0..255 (a uint8 loader's, as floats) used to become the brightest palette colour everywhere, and
    NaN images the first colour: complete() and layer_features() gave pictures and probes of no input at all."""
    torch.manual_seed(0)
    model = create_model("image_gpt_small", img_size=4, **TINY)
    images = torch.rand(2, 1, 4, 4)
    images[0, 0, 0, 0] = fill
    for call in (model.tokens, model.complete, lambda x: layer_features(model, x)):
        with pytest.raises(ValueError, match=r"Image GPT takes images in \[0, 1\]; these ") as error:
            call(images)
        assert span in str(error.value)
    assert model.tokens(images.clamp(0, 1).nan_to_num(0.5)).shape == (2, 16)


def test_an_empty_batch_gives_empty_tokens_features_and_completions_and_a_probe_refuses_it():
    """tokens() of no images ended in torch's "cannot reshape tensor of 0 elements into shape [0, -1, 1, 1]", and
    layer_features() gave no layers at all, so probe_accuracies() with no test images returned [] without a word."""
    torch.manual_seed(0)
    model = create_model("image_gpt_small", img_size=4, **TINY)
    empty, images = torch.rand(0, 1, 4, 4), torch.rand(4, 1, 4, 4)
    assert model.tokens(empty).shape == (0, 16)
    assert model.complete(empty).shape == (0, 1, 4, 4)
    assert [tuple(layer.shape) for layer in layer_features(model, empty)] == [(0, 32)] * 4
    with pytest.raises(ValueError, match="test_features is empty"):
        probe_accuracies(model, images, [0, 1, 0, 1], empty, [])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused_naming_it(batch_size):
    """layer_features(batch_size=0) ended in Python's "range() arg 3 must not be zero", -1 gave no layers at all."""
    model = create_model("image_gpt_small", img_size=4, **TINY)
    with pytest.raises(ValueError, match="layer_features' batch_size must be a positive integer"):
        layer_features(model, torch.rand(2, 1, 4, 4), batch_size=batch_size)


@pytest.mark.parametrize("fill", [255.0, float("nan")])
def test_fit_palette_refuses_images_outside_0_1_and_keeps_its_palette(fill):
    """A palette fitted on 0..255 images got colours up to 255 (samples then drawn in 0..255), and one NaN pixel made
    a palette colour NaN, without a word."""
    model = create_model("image_gpt_small", img_size=4, **TINY)
    before = model.palette.clone()
    images = torch.rand(4, 1, 4, 4)
    images[0, 0, 0, 0] = fill
    with pytest.raises(ValueError, match=r"Image GPT takes images in \[0, 1\]; these (span|hold 1 NaN value)"):
        model.fit_palette(images)
    assert torch.equal(model.palette, before)


def test_a_probe_plot_path_without_a_suffix_returns_the_png_written(tmp_path):
    """plot_probe_curve(acc, raw, "runs/probes") returned Path("runs/probes"), which did not exist: matplotlib had
    written runs/probes.png. The path returned is now the file written."""
    path = plot_probe_curve([0.2, 0.5, 0.4], 0.3, tmp_path / "probes")
    assert path == tmp_path / "probes.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probes.png"]


def test_a_palette_larger_than_the_pixels_is_refused_naming_palette_size():
    """fit_palette of more colours than pixels stopped with "k-means of 40 clusters needs points Tensor[M, C] with
    M >= k, got (32, 1)", naming neither palette_size nor the images."""
    model = create_model("image_gpt_small", img_size=4, palette_size=40, **TINY)
    with pytest.raises(ValueError, match=r"Image GPT's palette_size=40 needs at least 40 pixels to fit its colours "
                                         r"to, got 32 \(2 images of 4 x 4\)"):
        model.fit_palette(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="palette_size=40 needs at least 40 pixels to fit its colours to, got "
                                         "max_pixels=20"):
        model.fit_palette(torch.rand(3, 1, 4, 4), max_pixels=20)
    model.fit_palette(torch.rand(3, 1, 4, 4))  # 48 pixels: enough
    assert model.palette.shape == (40, 1)


def test_layer_features_gives_the_model_back_in_its_mode_also_after_an_error():
    """layer_features switched the model to eval mode and back only when it returned: after an error (images
    outside [0, 1]) a model that was training stayed in eval mode, so training went on with its dropout off."""
    torch.manual_seed(0)
    model = create_model("image_gpt_small", img_size=4, drop=0.1, **TINY).train()
    with pytest.raises(ValueError, match=r"images in \[0, 1\]"):
        layer_features(model, torch.full((2, 1, 4, 4), 2.0))
    assert model.training and all(part.training for part in model.modules())
    layer_features(model, torch.rand(2, 1, 4, 4))
    assert model.training


def test_generate_samples_images_and_the_same_seed_gives_the_same_images():
    """A Python user sampling an Image GPT found no generate (DCGAN has one): it took model.gpt.generate and
    model.images_from_tokens, as the training task does."""
    torch.manual_seed(0)
    model = create_model("image_gpt", img_size=8, num_classes=3, **TINY).train()
    images = model.generate(3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, model.generate(3, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(images, model.generate(3, generator=torch.Generator().manual_seed(1)))
    assert model.training  # sampled in eval mode (no dropout from the global RNG), given back in its own
    labelled = model.generate(2, generator=torch.Generator().manual_seed(0), labels=torch.tensor([0, 2]), top_k=2)
    assert labelled.shape == (2, 1, 8, 8)
    for count in (0, 1.5, "2"):
        with pytest.raises(ValueError, match="count must be a positive integer"):
            model.generate(count)


def test_a_seed_given_for_a_generator_is_refused_naming_the_argument():
    """fit_palette(images, generator=0) failed inside torch.randint with its list of signatures; generate and
    complete with "'int' object has no attribute 'device'"."""
    model = create_model("image_gpt", img_size=8, **TINY)
    images = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"k-means' generator must be a torch.Generator or None, got 0"):
        model.fit_palette(images, generator=0)
    for call in (lambda: model.generate(2, generator=0), lambda: model.complete(images, generator=0)):
        with pytest.raises(ValueError, match=r"generator must be a torch.Generator or None, got 0"):
            call()
