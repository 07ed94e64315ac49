"""The perceptual distance: LPIPS equals the lpips package's, VGG16 taps equal torchvision's, distances behave,
feature networks plug in."""

import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from visionzoo.checkpoint import CheckpointError
from visionzoo.constants import IMAGENET_MEAN, IMAGENET_STD
from visionzoo.generative.perceptual import (
    VGG16_TAPS,
    PerceptualLoss,
    VGG16Features,
    build_perceptual_loss,
    read_lpips_weights,
)
from visionzoo.metrics import domain
from visionzoo.metrics.domain import DomainFeatures


@pytest.fixture(scope="module")
def torchvision_vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()


@pytest.fixture(scope="module")
def vgg16_file(torchvision_vgg16, tmp_path_factory):
    """The seeded VGG16's ``features.*`` in torchvision's layout (its classifier, 470 MB, left out)."""
    path = tmp_path_factory.mktemp("vgg16") / "vgg16_features.pth"
    torch.save({k: v for k, v in torchvision_vgg16.state_dict().items() if k.startswith("features.")}, path)
    return path


@pytest.fixture(scope="module")
def lpips_package(torchvision_vgg16):
    """``(lpips.LPIPS over the seeded VGG16 with the package's learnt weights, the path of those weights)``."""
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():  # torchvision's about the lpips package's use of its old `pretrained` argument
        warnings.simplefilter("ignore", UserWarning)
        reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)  # pnet_rand: no download
    trunk = {f"features.{index}": layer for index, layer in enumerate(torchvision_vgg16.features)}
    for name, tensor in reference.net.state_dict().items():  # keys slice{s}.{features index}.{weight|bias}
        _, index, kind = name.split(".")
        tensor.copy_(getattr(trunk[f"features.{index}"], kind))
    return reference, Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def test_lpips_equals_the_lpips_package_in_distance_and_gradient(lpips_package, vgg16_file):
    reference, weights_file = lpips_package
    ours = build_perceptual_loss(checkpoint=vgg16_file, lpips_weights=weights_file)
    assert [len(w) for w in ours.layer_weights()] == [64, 128, 256, 512, 512]
    torch.manual_seed(1)
    for height, width in ((64, 64), (100, 72)):
        x, y = torch.rand(3, 3, height, width), torch.rand(3, 3, height, width)
        y[1] = 0.5  # a grey image
        x[2], y[2] = 0.5, 0.55  # two greys
        x.requires_grad_(True)
        distance = ours(x, y)
        expected = reference(x, y, normalize=True).flatten()  # normalize: images in [0, 1], as ours
        torch.testing.assert_close(distance, expected, rtol=1e-5, atol=0)
        assert (distance > 0).all()
        grad, = torch.autograd.grad(distance.sum(), x)
        expected_grad, = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5 * expected_grad.abs().max().item())
    with torch.no_grad():  # a grey-level image is LPIPS of its three-channel copy
        single = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
        expected = reference(*(image.expand(-1, 3, -1, -1) for image in single), normalize=True).flatten()
        torch.testing.assert_close(ours(*single), expected, rtol=1e-5, atol=0)


def test_without_lpips_weights_vgg16_gives_the_lpips_packages_baseline(lpips_package, vgg16_file):
    reference, _ = lpips_package
    baseline = build_perceptual_loss(checkpoint=vgg16_file)
    assert baseline.layer_weights() is None
    torch.manual_seed(2)
    x, y = torch.rand(2, 3, 48, 40), torch.rand(2, 3, 48, 40)
    reference.lpips = False  # what LPIPS(lpips=False) sets: every channel weighs 1
    try:
        with torch.no_grad():
            expected = reference(x, y, normalize=True).flatten()
    finally:
        reference.lpips = True
    torch.testing.assert_close(baseline(x, y), expected, rtol=1e-5, atol=0)


def test_lpips_weights_of_another_layout_are_refused_naming_the_file(lpips_package, vgg16_file, tmp_path):
    _, weights_file = lpips_package
    alexnet = weights_file.with_name("alex.pth")  # the same keys, AlexNet's widths
    with pytest.raises(CheckpointError, match=rf"checkpoint {alexnet} holds no LPIPS weights for VGG16 \(lin1.model.1."
                                              r"weight has shape \[1, 192, 1, 1\], expected \[1, 128, 1, 1\];"):
        read_lpips_weights(alexnet)
    with pytest.raises(CheckpointError, match=r"missing keys lin0.model.1.weight, .*unexpected keys features.0.bias"):
        read_lpips_weights(vgg16_file)
    partial = tmp_path / "lin0.pth"
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, partial)
    with pytest.raises(CheckpointError, match=r"missing keys lin1.model.1.weight, lin2.model.1.weight, lin3.model.1."
                                              r"weight, lin4.model.1.weight\); expected lin0"):
        read_lpips_weights(partial)
    with pytest.raises(FileNotFoundError):
        read_lpips_weights(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="LPIPS weights .*vgg.pth weigh VGG16's channels: give the VGG16 checkpoint"):
        build_perceptual_loss(data="digits", image_size=32, in_chans=1, lpips_weights=weights_file)


def test_layer_weights_must_fit_the_feature_maps():
    loss = PerceptualLoss(lambda images: [images, images[..., ::2, ::2]], [torch.ones(3), torch.ones(4)])
    with pytest.raises(ValueError, match=r"layer weights are for \[3, 4\] channels, the feature network gives maps "
                                         r"of \[3, 3\]"):
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"layer_weights\[0\] must be a Tensor\[C\]"):
        PerceptualLoss(lambda images: [images], [torch.ones(1, 3, 1, 1)])


def test_layer_weights_weigh_each_channel_of_each_map():
    torch.manual_seed(0)
    weights = [torch.rand(3), torch.rand(3)]
    loss = PerceptualLoss(lambda images: [images, images[..., ::2, ::2]], weights)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    unit = torch.nn.functional.normalize
    expected = sum((unit(a, dim=1) - unit(b, dim=1)).pow(2).mul(w.view(1, 3, 1, 1)).sum(1).mean((1, 2))
                   for a, b, w in ((x, y, weights[0]), (x[..., ::2, ::2], y[..., ::2, ::2], weights[1])))
    torch.testing.assert_close(loss(x, y), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a training step's: the weighing stays in float32
        torch.testing.assert_close(loss(x, y), expected)
    assert loss.to(torch.float64).layer_weights()[0].dtype == torch.float64  # buffers: they follow .to()


def test_vgg16_taps_equal_torchvisions_intermediate_outputs(tmp_path, torchvision_vgg16):
    reference = torchvision_vgg16
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)  # torchvision's file layout, classifier included
    ours = VGG16Features.from_torchvision(path)
    assert not any(p.requires_grad for p in ours.parameters()) and not ours.training
    images = torch.rand(2, 3, 32, 32)
    x = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = []
    with torch.no_grad():
        for index, layer in enumerate(reference.features):
            x = layer(x)
            if index in VGG16_TAPS:
                expected.append(x)
        taps = ours(images)
        assert [t.shape[1] for t in taps] == [64, 128, 256, 512, 512]
        for tap, want in zip(taps, expected):
            torch.testing.assert_close(tap, want)
        grey = images[:, :1]
        torch.testing.assert_close(ours(grey)[2], ours(grey.expand(-1, 3, -1, -1))[2])
    loss = build_perceptual_loss(checkpoint=path)
    assert loss(images, images).abs().max() < 1e-6 and (loss(images, images.flip(-1)) > 0).all()


def test_a_checkpoint_of_another_layout_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        VGG16Features.from_torchvision(path)
    with pytest.raises(FileNotFoundError):
        VGG16Features.from_torchvision(tmp_path / "absent.pth")


def test_distance_is_zero_for_identical_images_and_grows_with_noise():
    torch.manual_seed(0)
    loss = PerceptualLoss(DomainFeatures(1).feature_maps)
    images = torch.rand(4, 1, 16, 16)
    assert loss(images, images).shape == (4,) and loss(images, images).abs().max() < 1e-6
    noise = torch.randn_like(images)
    distances = [loss(images, images + level * noise).mean().item() for level in (0.01, 0.1, 0.5)]
    assert 0 < distances[0] < distances[1] < distances[2]


def test_the_feature_network_is_frozen_and_the_gradient_reaches_the_images():
    torch.manual_seed(0)
    network = DomainFeatures(3)
    loss = PerceptualLoss(network.feature_maps).train()
    assert loss.network is network and not network.training and not any(p.requires_grad for p in network.parameters())
    fake = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss(fake, torch.rand(2, 3, 16, 16)).sum().backward()
    assert fake.grad.abs().sum() > 0 and all(p.grad is None for p in network.parameters())


def test_any_function_of_feature_maps_plugs_in():
    loss = PerceptualLoss(lambda images: [images, images[..., ::2, ::2]])
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    unit = torch.nn.functional.normalize
    expected = (unit(x, dim=1) - unit(y, dim=1)).pow(2).sum(1).mean((1, 2))
    expected = expected + (unit(x[..., ::2, ::2], dim=1) - unit(y[..., ::2, ::2], dim=1)).pow(2).sum(1).mean((1, 2))
    torch.testing.assert_close(loss(x, y), expected)
    assert loss.network is None
    with pytest.raises(ValueError, match="one shape"):
        loss(x, y[:1])


def test_the_default_network_is_the_domain_classifier(monkeypatch):
    built = []

    def stand_in(data, image_size, in_chans):
        built.append((data, image_size, in_chans))
        return DomainFeatures(in_chans)

    monkeypatch.setattr(domain, "domain_features", stand_in)
    loss = build_perceptual_loss(data="digits", image_size=32, in_chans=1)
    assert built == [("digits", 32, 1)] and isinstance(loss.network, DomainFeatures)
    with pytest.raises(ValueError, match="VGG16 checkpoint"):
        build_perceptual_loss(data="digits")
