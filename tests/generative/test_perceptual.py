"""The LPIPS-style perceptual distance: VGG16 taps equal torchvision's, distances behave, feature networks plug in."""

import pytest
import torch
import torchvision

from visionzoo.checkpoint import CheckpointError
from visionzoo.generative.perceptual import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16_TAPS,
    PerceptualLoss,
    VGG16Features,
    build_perceptual_loss,
)
from visionzoo.metrics import domain
from visionzoo.metrics.domain import DomainFeatures


def test_vgg16_taps_equal_torchvisions_intermediate_outputs(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16().eval()
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
