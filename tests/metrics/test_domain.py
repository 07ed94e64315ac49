"""Domain features: the classifier learns its data, is cached once, and serves `visionzoo fid --features domain`."""

import os
import re
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from visionzoo.cli import main
from visionzoo.metrics import domain
from visionzoo.metrics.domain import DomainFeatures, domain_features, train_domain_classifier
from visionzoo.metrics.fid import FID


def test_the_classifier_learns_digits():
    model, accuracy = train_domain_classifier("digits", 16, 1, steps=150)
    assert accuracy > 0.9  # chance is 0.1
    assert not model.training


def test_training_ignores_the_callers_autocast_grad_mode_and_random_stream():
    # The perceptual loss first builds the network inside a bf16 training step; it once learnt in bf16 there.
    plain, plain_accuracy = train_domain_classifier("digits", 16, 1, steps=20)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        inside, inside_accuracy = train_domain_classifier("digits", 16, 1, steps=20)
    torch.testing.assert_close(torch.rand(3), expected_draw)
    assert inside_accuracy == plain_accuracy
    for (name, a), b in zip(plain.state_dict().items(), inside.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_shapes_targets_mark_every_class_and_colour_present():
    target = {"labels": torch.tensor([1, 3]), "colors": torch.tensor([0, 6])}
    multi_hot = domain.domain_targets("shapes", target)
    assert multi_hot.nonzero().flatten().tolist() == [0, 2, 6, 12]


def test_features_and_maps_have_the_documented_shapes():
    model = DomainFeatures(3, 13, stem_stride=2).eval()
    images = torch.rand(2, 3, 64, 64)
    maps = model.feature_maps(images)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8)]
    torch.testing.assert_close(model(images), maps[-1].mean(dim=(2, 3)))
    with pytest.raises(ValueError, match=r"Tensor\[B, 3, H, W\]"):
        model(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 8 px"):
        model(torch.rand(2, 3, 4, 4))


def test_domain_features_train_once_then_load_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))
    calls = []

    def quick(data, image_size, in_chans):
        calls.append(data)
        return train_domain_classifier(data, image_size, in_chans, steps=5)

    monkeypatch.setattr(domain, "train_domain_classifier", quick)
    images = torch.rand(4, 1, 16, 16)
    first = domain_features("digits", 16)
    second = domain_features("Digits", 16)
    assert calls == ["digits"]
    assert (tmp_path / "domain" / "digits-16px-1ch-v2.safetensors").is_file()
    torch.testing.assert_close(first(images), second(images))
    assert not any(p.requires_grad for p in second.parameters())
    with pytest.raises(ValueError, match="domain features exist for digits, shapes"):
        domain_features("cifar", 32)
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        domain_features("digits", 16, checkpoint=tmp_path / "nowhere.safetensors")


def test_a_cached_network_is_refused_for_another_image_size_or_data(tmp_path, monkeypatch, capsys):
    # before: a 16 px network loaded as a 32 px one (or a 64 px Shapes one at 32 px, another stem stride) and gave
    # numbers comparable with nothing
    from test_coco_eval_command import one_line_error

    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(domain, "train_domain_classifier",
                        lambda data, size, chans: train_domain_classifier(data, size, chans, steps=2))
    domain_features("digits", 16)
    (cached,) = (tmp_path / "domain").iterdir()
    assert domain_features("digits", 16, checkpoint=cached).image_size == 16
    with pytest.raises(ValueError, match=f"{cached} holds domain features trained on 16 px images, not 32"):
        domain_features("digits", 32, checkpoint=cached)
    with pytest.raises(ValueError, match=f"{cached} holds domain features of digits, not shapes"):
        domain_features("shapes", 16, in_chans=1, checkpoint=cached)
    folder = write_folder(tmp_path / "a", 0)
    one_line_error(capsys, ["fid", str(folder), str(folder), "--features", "domain", "--data", "digits",
                            "--checkpoint", str(cached)], str(cached), "not 32 (--img-size 16)")


def test_the_cached_domain_network_gets_the_mode_open_gives_under_the_umask(tmp_path, monkeypatch):
    """It was written 0o600 (safetensors' mode), unreadable to the group of a shared cache whatever the umask."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))
    monkeypatch.setattr(domain, "train_domain_classifier",
                        lambda data, size, chans: train_domain_classifier(data, size, chans, steps=2))
    previous = os.umask(0o022)
    try:
        domain_features("digits", 16)
    finally:
        os.umask(previous)
    (path,) = (tmp_path / "domain").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def write_folder(folder, seed, count=6, size=20):
    folder.mkdir()
    generator = np.random.default_rng(seed)
    for index in range(count):
        pixels = (generator.random((size, size)) * (255 - 100 * seed)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index}.png")
    return folder


def test_fid_command_with_domain_features_equals_the_fid_class(tmp_path, capsys):
    torch.manual_seed(0)
    model = DomainFeatures(1, 10).eval()
    weights = tmp_path / "digits-domain.safetensors"
    save_file(model.state_dict(), weights)
    folder_a, folder_b = write_folder(tmp_path / "a", 0), write_folder(tmp_path / "b", 1)
    assert main(["fid", str(folder_a), str(folder_b), "--features", "domain", "--data", "digits",
                 "--img-size", "16", "--checkpoint", str(weights)]) == 0
    printed = float(capsys.readouterr().out.split("FID:")[1])

    from visionzoo.train.run import load_images

    fid = FID(model)
    for folder, real in ((folder_a, True), (folder_b, False)):
        fid.update(load_images(sorted(folder.iterdir()), 16, 1), real=real)
    assert printed == pytest.approx(fid.compute(), rel=1e-5)
    assert printed > 0


def test_fid_command_bad_domain_arguments_are_one_line(tmp_path, capsys):
    folder = write_folder(tmp_path / "a", 0)
    assert main(["fid", str(folder), str(folder), "--features", "domain"]) != 0
    assert "--features domain needs --data" in capsys.readouterr().err
    assert main(["fid", str(folder), str(folder), "--data", "digits"]) != 0
    assert capsys.readouterr().err == ("visionzoo fid: error: --data applies to --features domain, not to "
                                       "Inception's features; add --features domain\n")
    # before: "--data and --img-size choose the domain features; add --features domain", naming a --data not given,
    # which --features domain then asked for
    assert main(["fid", str(folder), str(folder), "--img-size", "32"]) != 0
    assert capsys.readouterr().err == ("visionzoo fid: error: --img-size applies to --features domain, not to "
                                       "Inception's features; add --features domain --data digits (or shapes)\n")
    assert main(["fid", str(folder), str(folder), "--data", "shapes", "--img-size", "32"]) != 0
    assert capsys.readouterr().err == ("visionzoo fid: error: --data and --img-size apply to --features domain, not "
                                       "to Inception's features; add --features domain\n")
    # before: --resize clean was ignored and gave the legacy number
    assert main(["fid", str(folder), str(folder), "--features", "domain", "--data", "digits", "--resize", "clean"]) != 0
    assert "--resize clean chooses how Inception's input is resized" in capsys.readouterr().err


def _refused_before_training(tmp_path, monkeypatch, capsys, data, size, reason):
    """domain_features(data, size) and `fid --features domain --data DATA --img-size SIZE` refuse the size with
    ``reason`` before any domain classifier is trained or cached."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("a domain classifier was trained")

    monkeypatch.setattr(domain, "train_domain_classifier", refuse)
    with pytest.raises(ValueError, match=f"{re.escape(reason)}, got image_size {size}"):
        domain_features(data, size)
    folder = write_folder(tmp_path / "a", 0)
    assert main(["fid", str(folder), str(folder), "--features", "domain", "--data", data, "--img-size",
                 str(size)]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("size", [1, 3])
def test_an_image_size_below_the_networks_smallest_is_refused_before_training(tmp_path, monkeypatch, capsys, size):
    """fid --features domain --img-size 2 logged "training the digits domain classifier at 2 px", loaded the train
    split, then failed in the first step with "domain features need images of at least 4 px, got (2, 2)", naming no
    option."""
    error = _refused_before_training(tmp_path, monkeypatch, capsys, "digits", size,
                                     "domain features need images of at least 4 px")
    assert error == f"visionzoo fid: error: --img-size {size}: domain features need images of at least 4 px\n"
    assert not (tmp_path / "domain").exists()


@pytest.mark.parametrize("size", [4, 15])
def test_a_shapes_image_size_below_its_smallest_scene_is_refused_before_training(tmp_path, monkeypatch, capsys, size):
    """fid --features domain --data shapes --img-size 4 logged "training the shapes domain classifier at 4 px", then
    failed with "Shapes image_size must be at least 16, got 4", naming no option."""
    error = _refused_before_training(tmp_path, monkeypatch, capsys, "shapes", size,
                                     "domain features of shapes need images of at least 16 px")
    assert error == (f"visionzoo fid: error: --img-size {size}: domain features of shapes need images of at least "
                     "16 px (Shapes' smallest scenes)\n")
    assert not (tmp_path / "domain").exists()


def test_an_image_size_beyond_any_tensor_is_out_of_memory_not_a_traceback(tmp_path, monkeypatch, capsys):
    """fid --features domain --img-size 10**20 ended in torch's traceback "upsample_bilinear2d(): argument
    'output_size' failed to unpack the object at pos 1 with error "Overflow when unpacking long long", where
    --img-size 100000 (too large for the machine) already said "out of memory: ..." in one line."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path))
    folder = write_folder(tmp_path / "a", 0)
    assert main(["fid", str(folder), str(folder), "--features", "domain", "--data", "digits", "--img-size",
                 str(10**20)]) == 2
    assert capsys.readouterr().err == ("visionzoo fid: error: out of memory: an allocation failed; lower --img-size, "
                                       "--batch-size or the number of images\n")


def test_fid_refuses_images_outside_the_unit_range():
    fid = FID(DomainFeatures(1, 10))
    with pytest.raises(ValueError, match=r"images in \[0, 1\]; these span \[0, 255\]"):
        fid.update(torch.full((2, 1, 16, 16), 255.0).index_fill_(2, torch.tensor([0]), 0.0), real=True)
    fid.update(torch.rand(1, 1, 16, 16), real=True)
    fid.update(torch.rand(3, 1, 16, 16), real=False)
    with pytest.raises(ValueError, match="at least 2 real images, has 1"):
        fid.compute()



def test_fid_command_names_an_empty_folder_and_an_unreadable_image(tmp_path, capsys):
    weights = tmp_path / "digits-domain.safetensors"
    save_file(DomainFeatures(1, 10).state_dict(), weights)
    good = write_folder(tmp_path / "good", 0)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    domain_args = ["--features", "domain", "--data", "digits", "--img-size", "16", "--checkpoint", str(weights)]
    assert main(["fid", str(tmp_path / "empty"), str(good), *domain_args]) == 2
    err = capsys.readouterr().err
    assert "holds 0 image files (1 other file is not read: notes.txt; FID reads" in err and "needs at least 2" in err
    broken = write_folder(tmp_path / "broken", 0)
    (broken / "9.png").write_bytes(b"not a png")
    assert main(["fid", str(good), str(broken), *domain_args]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "9.png cannot be read" in error


def test_features_refuse_images_of_another_size_than_they_were_trained_on(tmp_path):
    weights = tmp_path / "digits-domain.safetensors"
    save_file(DomainFeatures(1, 10).state_dict(), weights)
    model = domain_features("digits", 32, checkpoint=weights)
    assert model.image_size == 32
    fid = FID(model)
    with pytest.raises(ValueError, match="trained on 32×32 images, got \\(8, 8\\); resize them to 32 px"):
        fid.update(torch.rand(4, 1, 8, 8), real=True)
    fid.update(torch.rand(4, 1, 32, 32), real=True)
    assert fid.real.count == 4
    assert len(model.feature_maps(torch.rand(1, 1, 16, 16))) == 3  # the perceptual loss' maps take any size


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_features_take_images_of_any_float_dtype(dtype):
    torch.manual_seed(0)
    model = DomainFeatures(1, 10).eval()
    images = torch.rand(3, 1, 16, 16).to(dtype)
    with torch.no_grad():
        expected = model(images.float())
        torch.testing.assert_close(model(images), expected)
    fid = FID(model)
    fid.update(images, real=True)
    assert fid.real.count == 3


def test_fid_command_names_a_checkpoint_that_is_not_domain_features(tmp_path, capsys):
    from test_coco_eval_command import one_line_error

    folder = write_folder(tmp_path / "a", 0)
    good = tmp_path / "good.safetensors"
    save_file(DomainFeatures(1, 10).state_dict(), good)
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:300])
    other_model = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, other_model)
    rgb = tmp_path / "rgb.safetensors"
    save_file(DomainFeatures(3, 10).state_dict(), rgb)
    narrow = tmp_path / "narrow.safetensors"
    save_file(DomainFeatures(1, 10, widths=(4, 8, 8)).state_dict(), narrow)
    for checkpoint, message in ((text, "is not a domain-features file (safetensors)"),
                                (truncated, "is not a domain-features file (safetensors)"),
                                (other_model, "lacks the tensors stages.0.0.weight and head.weight"),
                                (rgb, "of 3-channel images; digits needs 1"),
                                (narrow, "size mismatch for stages.0.0.weight")):
        one_line_error(capsys, ["fid", str(folder), str(folder), "--features", "domain", "--data", "digits",
                                "--img-size", "16", "--checkpoint", str(checkpoint)], str(checkpoint), message)


@pytest.mark.parametrize("scale, dtype, span", [(255, torch.uint8, r"\[0, 255\]"), (255, torch.float32, r"\[0, 255\]"),
                                                (2, torch.float32, r"\[-1, 1\]")])
def test_features_called_directly_refuse_images_outside_the_unit_range(scale, dtype, span):
    # before: DomainFeatures gave features of uint8, 0..255 or [-1, 1] images without a word (FID.update refused
    # them, but features taken directly for kernel_inception_distance were of other images: a silently wrong KID)
    torch.manual_seed(0)
    model = DomainFeatures(1, 10).eval()
    images = torch.rand(2, 1, 16, 16)
    images[0, 0, 0, 0], images[1, 0, 0, 0] = 0.0, 1.0
    if scale == 2:
        images = images * 2 - 1
    else:
        images = (images * 255).round().to(dtype)
    for call in (model, model.logits):
        with pytest.raises(ValueError, match=rf"DomainFeatures takes images in \[0, 1\]; these span {span}"):
            call(images)
    assert len(model.feature_maps(torch.rand(1, 1, 16, 16) * 2 - 1)) == 3  # the perceptual loss' maps of any decoder output


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=32.0), "domain_features' image_size must be an integer, got 32.0"),
    (dict(image_size="32"), "domain_features' image_size must be an integer, got '32'"),
    (dict(image_size=None), "domain_features' image_size must be an integer, got None"),
    (dict(image_size=32, in_chans=0), "domain_features' in_chans must be an integer >= 1, got 0"),
    (dict(image_size=32, in_chans=1.0), "domain_features' in_chans must be an integer >= 1, got 1.0"),
])
def test_sizes_and_channels_that_are_not_whole_numbers_are_refused_by_name(tmp_path, monkeypatch, kwargs, message):
    # before: image_size=32.0 was taken as another size than 32 (a network cached as digits-32.0, trained anew for a
    # minute, whose fingerprint "image_size=32.0" refused statistics made at 32); "32" and None raised TypeError
    # "'<' not supported between instances of 'str' and 'int'"; in_chans=0 was read as the data's default
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(domain, "train_domain_classifier", lambda *args: pytest.fail("trained a network"))
    weights = tmp_path / "digits-domain.safetensors"
    save_file(DomainFeatures(1, 10).state_dict(), weights)
    with pytest.raises(ValueError, match=re.escape(message)):
        domain_features("digits", checkpoint=weights, **kwargs)
    assert domain_features("digits", np.int64(32), in_chans=np.int64(1), checkpoint=weights).image_size == 32


@pytest.mark.parametrize("data", [None, 3, "mnist"])
def test_a_data_name_that_is_not_a_domain_is_refused_by_name(data):
    # before: None and 3 raised AttributeError "'NoneType' object has no attribute 'lower'"
    with pytest.raises(ValueError, match=re.escape(f"domain features exist for digits, shapes, not {data!r}")):
        domain_features(data, 32)


def test_features_without_autograd_run_channels_last_and_equal_the_autograd_path():
    torch.manual_seed(0)
    network = DomainFeatures(in_chans=3, num_outputs=4, stem_stride=2).eval()
    seen = []
    network.stages[0][0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with_grad = network(images)
    with torch.no_grad():
        without_grad = network(images)
    assert seen[0].is_contiguous() and seen[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(without_grad, with_grad.detach(), atol=1e-5, rtol=1e-5)
