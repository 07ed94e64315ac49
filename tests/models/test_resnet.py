"""ResNet against torchvision and timm: sizes, checkpoints, logits, feature maps, the timm interface."""

import pytest
import timm
import torch
import torchvision
from model_helpers import (
    assert_grad_checkpointing_changes_nothing,
    assert_pool_built_and_reset_give_reference_outputs,
    assert_rebuilds_from_its_checkpoint,
    assert_same_outputs,
    checkpointed_step,
    images,
)
from safetensors.torch import save_file
from torch import nn

from visionzoo.models import create_model
from visionzoo.models.resnet import ResNet

NAMES = ("resnet18", "resnet34", "resnet50", "resnet101")


def randomize_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine parameters, so that a checkpoint test sees every buffer."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


@pytest.fixture(scope="module")
def torchvision_resnet50(tmp_path_factory):
    """A torchvision resnet50 with random weights and BN statistics, and its state dict saved as .pth."""
    torch.manual_seed(0)
    reference = randomize_batch_norm(torchvision.models.resnet50(), 0).eval()
    path = tmp_path_factory.mktemp("torchvision") / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.mark.parametrize("name", NAMES)
def test_parameters_and_keys_equal_torchvision(name):
    ours = create_model(name)
    reference = getattr(torchvision.models, name)()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    reference_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours_shapes == reference_shapes


def test_torchvision_resnet50_checkpoint_gives_torchvision_logits(torchvision_resnet50):
    reference, path = torchvision_resnet50
    ours = create_model("resnet50", checkpoint=path).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.std() > 1.0  # random BN statistics: a model that ignored them would differ
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_timm_resnet18_checkpoint_loads_and_matches_timm(tmp_path):
    torch.manual_seed(2)
    reference = randomize_batch_norm(timm.create_model("resnet18"), 2).eval()
    path = tmp_path / "model.safetensors"  # the format of timm's Hugging Face weights
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    ours = create_model("resnet18", checkpoint=path).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), reference.forward_features(x), atol=1e-4, rtol=1e-5)
        features = ours.forward_features(x)
        torch.testing.assert_close(
            ours.forward_head(features, pre_logits=True), reference.forward_head(features, pre_logits=True)
        )
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=1e-5)
    assert ours.num_features == reference.num_features == 512


def test_features_only_maps_equal_torchvision_intermediates(torchvision_resnet50):
    reference, path = torchvision_resnet50
    ours = create_model("resnet50", checkpoint=path, features_only=True, out_indices=(0, 1, 2, 3, 4)).eval()
    names = ("relu", "layer1", "layer2", "layer3", "layer4")  # torchvision's top-level relu is the stem's alone
    expected = {}
    hooks = [getattr(reference, name).register_forward_hook(lambda m, i, out, name=name: expected.update({name: out}))
             for name in names]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference(x)
        maps = ours(x)
    for hook in hooks:
        hook.remove()
    assert len(maps) == 5
    for got, name in zip(maps, names, strict=True):
        torch.testing.assert_close(got, expected[name], atol=1e-4, rtol=1e-5)
    # feature_info describes the maps it returns
    assert ours.feature_info.channels() == [m.shape[1] for m in maps] == [64, 256, 512, 1024, 2048]
    assert ours.feature_info.reduction() == [64 // m.shape[-1] for m in maps] == [2, 4, 8, 16, 32]
    assert ours.feature_info.module_name() == list(names)
    assert not hasattr(ours, "fc")


def test_torchvisions_fx_feature_extractor_takes_ours_as_torchvisions():
    """torch.fx tracing (torchvision's create_feature_extractor) failed on the input check ('symbolically traced
    variables cannot be used as inputs to control flow'), where torchvision's and timm's ResNets trace; the check is
    one recorded call now, still run on the real input."""
    from torchvision.models.feature_extraction import create_feature_extractor

    reference = randomize_batch_norm(torchvision.models.resnet18(), 1).eval()
    ours = create_model("resnet18").eval()
    ours.load_state_dict(reference.state_dict())
    nodes = {"layer2": "c3", "layer4": "c5"}
    x = images(2, 3, 64, 64, seed=2)
    extractor = create_feature_extractor(ours, nodes)
    with torch.no_grad():
        got, expected = extractor(x), create_feature_extractor(reference, nodes)(x)
    assert got.keys() == expected.keys() == {"c3", "c5"}
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="takes 3-channel images, got 1"):
        extractor(x[:, :1])


@pytest.mark.parametrize("size", [(64, 64), (65, 97)])  # and sides that are no multiple of the stride 32
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_features_only_by_default_gives_timms_five_maps(name, size):
    """Without out_indices our extractor gave the four stage outputs (C2-C5), where timm's gives the stem's map too:
    maps[1] was then C3 for us and C2 for timm, and feature_info.channels() lacked the stem's 64."""
    torch.manual_seed(3)
    reference = randomize_batch_norm(timm.create_model(name, features_only=True), 3).eval()
    ours = create_model(name, features_only=True).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert ours.feature_info.channels() == reference.feature_info.channels()
    assert ours.feature_info.reduction() == reference.feature_info.reduction() == [2, 4, 8, 16, 32]
    x = images(2, 3, *size, seed=4)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x))


def test_features_only_out_indices_and_timm_feature_info():
    ours = create_model("resnet50", features_only=True, out_indices=(0, 2, 3))
    reference = timm.create_model("resnet50", features_only=True, out_indices=(0, 2, 3))
    assert ours.feature_info.channels() == reference.feature_info.channels() == [64, 512, 1024]
    assert ours.feature_info.reduction() == reference.feature_info.reduction() == [2, 8, 16]
    assert ours.feature_info.channels(1) == reference.feature_info.channels(1) == 256  # of every map: layer1's
    # stages after the last requested one are left out, as timm does
    assert hasattr(ours, "layer3") and not hasattr(ours, "layer4")
    maps = ours(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (512, 8, 8), (1024, 4, 4)]
    with pytest.raises(ValueError, match="out_indices"):
        create_model("resnet18", features_only=True, out_indices=(1, 5))


def test_forward_is_head_of_features_and_reset_classifier():
    torch.manual_seed(6)
    model = randomize_batch_norm(create_model("resnet18", num_classes=7), 6).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 2, 2)
        torch.testing.assert_close(model(x), model.fc(features.mean(dim=(2, 3))))
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
        model.reset_classifier(3)
        assert model.num_classes == 3 and model(x).shape == (2, 3)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)


def test_zero_init_residual_makes_blocks_identities_like_torchvision():
    torch.manual_seed(7)
    ours = create_model("resnet50", zero_init_residual=True).eval()
    reference = torchvision.models.resnet50(zero_init_residual=True)
    zeroed = {k for k, v in ours.state_dict().items() if k.endswith("weight") and v.ndim == 1 and not v.any()}
    expected = {k for k, v in reference.state_dict().items() if k.endswith("weight") and v.ndim == 1 and not v.any()}
    assert zeroed == expected and len(zeroed) == 16
    x = torch.rand(1, 256, 8, 8)  # non-negative, as after a ReLU
    with torch.no_grad():
        torch.testing.assert_close(ours.layer1[1](x), x)
    plain = create_model("resnet50")
    assert plain.layer1[1].bn3.weight.min() == 1.0


def zeroed_norm_weights(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()}


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("zero_init_last", [True, False])
def test_zero_init_last_initialises_as_timms(name, zero_init_last):
    """timm's switch (create_model(name, zero_init_last=...)) was refused as an unknown argument. With it, the
    weights start as timm's: each block's last batch norm (BasicBlock bn2, Bottleneck bn3) at zero or not, the
    others at one, convs kaiming-normal (fan_out), fc torch's default; compared per tensor by statistics."""
    torch.manual_seed(0)
    ours = create_model(name, zero_init_last=zero_init_last)
    reference = timm.create_model(name, zero_init_last=zero_init_last)
    expected = zeroed_norm_weights(reference)
    assert zeroed_norm_weights(ours) == expected and len(expected) == (8 if name == "resnet18" else 16) * zero_init_last
    reference_state = reference.state_dict()
    for key, value in ours.state_dict().items():
        other = reference_state[key]
        if value.ndim > 1 or key.startswith("fc."):  # random: the same spread
            torch.testing.assert_close(value.std(), other.std(), rtol=0.05, atol=0, msg=key)
        else:  # batch norms: their constants
            assert torch.equal(value, other), key
    assert ours.fc.weight.abs().max() <= ours.fc.in_features ** -0.5  # torch's default: uniform in ±1/sqrt(fan_in)


def test_resnet_keeps_torchvisions_init_unless_asked():
    """Our ResNets are torchvision's (their weights, preprocessing and zero_init_residual=False), so by default no
    batch norm starts at zero; zero_init_last is timm's name for zero_init_residual, and giving both is refused."""
    assert not zeroed_norm_weights(create_model("resnet18"))
    assert zeroed_norm_weights(create_model("resnet18", zero_init_residual=True)) == zeroed_norm_weights(
        create_model("resnet18", zero_init_last=True))
    with pytest.raises(ValueError, match="zero_init_residual or zero_init_last, not both"):
        create_model("resnet18", zero_init_residual=True, zero_init_last=True)
    with pytest.raises(ValueError, match="zero_init_last must be a bool"):
        create_model("resnet18", zero_init_last="no")


@pytest.mark.parametrize("residual, last", [(True, True), (False, True), (True, False), (False, False)])
def test_giving_zero_init_residual_and_zero_init_last_is_refused_whatever_their_values(residual, last):
    """zero_init_residual=True with zero_init_last was refused, while zero_init_residual=False with
    zero_init_last=True was taken and zeroed the batch norms that the first argument said to leave alone."""
    with pytest.raises(ValueError, match="give zero_init_residual or zero_init_last, not both"):
        create_model("resnet18", zero_init_residual=residual, zero_init_last=last)
    assert not zeroed_norm_weights(create_model("resnet18", zero_init_residual=False))


def test_small_input_stem_keeps_keys_and_stride_eight():
    standard = create_model("resnet18")
    small = create_model("resnet18", small_input=True, in_chans=1, num_classes=10)
    assert set(small.state_dict()) == set(standard.state_dict())
    assert small.conv1.weight.shape == (64, 1, 3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert small.feature_info.reduction() == [1, 1, 2, 4, 8]
    assert small.forward_features(torch.randn(2, 1, 32, 32)).shape == (2, 512, 4, 4)
    features = create_model("resnet18", small_input=True, features_only=True)
    maps = features(torch.randn(1, 3, 32, 32))
    assert [32 // m.shape[-1] for m in maps] == features.feature_info.reduction() == [1, 1, 2, 4, 8]


def test_drop_rate_acts_in_training_only():
    torch.manual_seed(8)
    model = create_model("resnet18", num_classes=5, drop_rate=0.5)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = features.mean(dim=(2, 3))
        torch.testing.assert_close(model.forward_head(features), model.fc(pooled))
        model.train()
        dropped = model.forward_head(features, pre_logits=True)
    assert (dropped == 0).any()
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], 2 * pooled[kept])


def test_resnet_rejects_wrong_stage_count():
    from visionzoo.models.resnet import BasicBlock

    with pytest.raises(ValueError, match="4 stage depths"):
        ResNet(BasicBlock, (2, 2, 2))


@pytest.mark.parametrize("features_only", [False, True])
def test_wrong_channels_or_rank_raise_one_clear_error(features_only):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=4, small_input=True, features_only=features_only).eval()
    with pytest.raises(ValueError, match=r"takes 3-channel images, got 1 channels .*in_chans=1"):
        model(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"Tensor\[B, C, H, W\], got a tensor of shape \(3, 16, 16\)"):
        model(torch.randn(3, 16, 16))
    gray = create_model("resnet18", num_classes=4, small_input=True, in_chans=1, features_only=features_only).eval()
    out = gray(torch.randn(2, 1, 16, 16))
    assert (out[-1] if features_only else out).shape[:2] == ((2, 512) if features_only else (2, 4))


@pytest.mark.parametrize("features_only", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 0, 32), (2, 3, 32, 0)])
def test_an_image_without_pixels_is_refused_by_name(shape, features_only):
    """A side of 0 failed inside conv2d ("Calculated padded input size per channel ... can't be greater")."""
    model = create_model("resnet18", features_only=features_only).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=rf"image {shape[2]}×{shape[3]} has no pixels"):
        model(torch.zeros(shape))


TIMM_POOLS = ("avg", "max", "avgmax", "catavgmax", "fast", "fastavg", "fastmax", "fastavgmax", "fastcatavgmax", "",
              "AVGMAX")


@pytest.mark.parametrize("global_pool", TIMM_POOLS)
def test_every_timm_global_pool_at_create_model_and_reset_classifier_gives_timms_logits(global_pool):
    num_classes = 0 if global_pool == "" else 5
    torch.manual_seed(8)
    reference = randomize_batch_norm(timm.create_model("resnet18", num_classes=num_classes,
                                                       global_pool=global_pool), 8).eval()
    x = images(2, 3, 64, 96, seed=9)
    built, reset = assert_pool_built_and_reset_give_reference_outputs(reference, "resnet18", num_classes,
                                                                      global_pool, x)
    for ours in (built, reset):
        assert ours.global_pool == global_pool.lower()
        assert (ours.num_features, ours.head_hidden_size) == (reference.num_features, reference.head_hidden_size)
    if num_classes:
        reset.reset_classifier(4)  # the pool is kept, and with it the classifier's width
        assert reset.global_pool == global_pool.lower() and reset.fc.weight.shape == (4, reference.head_hidden_size)


@pytest.mark.parametrize("global_pool, message", [
    ("token", r"global_pool must be one of \('avg', 'max', 'avgmax', 'catavgmax', 'fast'.*got 'token'"),
    ("", "global_pool='' \\(no pooling\\) needs num_classes=0"),  # timm's fc fails on the map at forward
])
def test_a_pool_timm_refuses_or_cannot_run_is_refused_by_name(global_pool, message):
    with pytest.raises(ValueError, match=message):
        create_model("resnet18", global_pool=global_pool)
    with pytest.raises(ValueError, match=message):
        create_model("resnet18").reset_classifier(5, global_pool)


# --- gradient checkpointing ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_grad_checkpointing_changes_neither_outputs_nor_gradients(name):
    torch.manual_seed(70)
    model = create_model(name, num_classes=5, small_input=True, drop_rate=0.2)
    assert_grad_checkpointing_changes_nothing(model, images(2, 3, 32, 32, seed=71))
    features = create_model(name, features_only=True, out_indices=(0, 2), small_input=True)
    assert_grad_checkpointing_changes_nothing(features, images(2, 3, 32, 32, seed=71))


def test_grad_checkpointing_gives_timms_outputs_and_gradients():
    torch.manual_seed(72)
    reference = randomize_batch_norm(timm.create_model("resnet18", num_classes=10), 73)
    ours = create_model("resnet18", num_classes=10)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 64, 64, seed=74)
    out, grads, recomputed = checkpointed_step(ours, x, True)
    expected, expected_grads, expected_recomputed = checkpointed_step(reference, x, True)
    assert recomputed > 0 and expected_recomputed > 0
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], atol=1e-5, rtol=1e-4, msg=key)


# --- forward_intermediates and prune_intermediate_layers ----------------------------------------

def _timm_resnet_twin(seed=75):
    torch.manual_seed(seed)
    reference = randomize_batch_norm(timm.create_model("resnet18", num_classes=10), seed)
    ours = create_model("resnet18", num_classes=10)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(indices=2, norm=True),
    dict(indices=[0, -1], intermediates_only=True),
    dict(indices=[0], stop_early=True),
    dict(indices=[1, 3], stop_early=True, intermediates_only=True),
])
def test_forward_intermediates_equal_timms(kwargs):
    ours, reference = _timm_resnet_twin()
    x = images(2, 3, 64, 64, seed=76)
    with torch.no_grad():
        assert_same_outputs(ours.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs))
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("indices, prune_head", [(1, True), ([0], False), ([1, 2], False), (3, True), ([4], False)])
def test_prune_intermediate_layers_equals_timms(indices, prune_head):
    ours, reference = _timm_resnet_twin()
    assert ours.prune_intermediate_layers(indices, prune_head=prune_head) == \
        reference.prune_intermediate_layers(indices, prune_head=prune_head)
    assert ours.num_features == reference.num_features
    x = images(2, 3, 64, 64, seed=77)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x))
        assert_same_outputs(ours.forward_intermediates(x, indices), reference.forward_intermediates(x, indices))
    assert ours.state_dict().keys() == reference.state_dict().keys()


def test_get_classifier_by_name_and_in_chans_as_timm():
    with torch.device("meta"):
        ours, reference = create_model("resnet18", in_chans=1), timm.create_model("resnet18", in_chans=1)
    assert ours.get_classifier(name_only=True) == reference.get_classifier(name_only=True) == "fc"
    assert ours.get_classifier() is ours.fc and ours.in_chans == reference.in_chans == 1


def test_stage_depths_given_to_create_model_override_the_names_as_timms():
    """create_model('resnet18', layers=(1, 1, 1, 1)) was refused ('takes no argument'), where timm's builders
    (and our ViT's, Swin's and ConvNeXt's) let keyword arguments override a name's sizes."""
    torch.manual_seed(62)
    reference = timm.create_model("resnet50", layers=(1, 2, 1, 1), num_classes=5).eval()
    ours = create_model("resnet50", layers=(1, 2, 1, 1), num_classes=5).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=1e-5)
    features = create_model("resnet18", layers=(1, 1, 1, 1), features_only=True, out_indices=(2,))
    assert [len(features.layer1), len(features.layer2)] == [1, 1]
    with pytest.raises(ValueError, match=r"4 stage depths of at least 1 block, got layers=\(2, 0, 2, 2\)"):
        create_model("resnet18", layers=(2, 0, 2, 2))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_drop_path_rate_follows_timm(name):
    """create_model('resnet50', drop_path_rate=0.05), timm's ResNet-strikes-back recipe, was refused ('takes no
    argument drop_path_rate'); stochastic depth now drops each block's residual branch as timm's: the same rates
    (rising linearly over all blocks), the same training outputs and gradients for the same seed, none in eval."""
    torch.manual_seed(0)
    reference = timm.create_model(name, num_classes=3, drop_path_rate=0.3, layers=(1, 2, 1, 1))
    ours = create_model(name, num_classes=3, drop_path_rate=0.3, layers=(1, 2, 1, 1))
    ours.load_state_dict(reference.state_dict())
    their_rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in (1, 2, 3, 4) for b in getattr(reference, f"layer{s}")]
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in (1, 2, 3, 4) for b in getattr(ours, f"layer{s}")]
    assert rates == pytest.approx(their_rates) and rates[-1] == pytest.approx(0.3) and rates[0] == 0.0
    x = images(4, 3, 32, 32, seed=5)
    outputs = []
    for model in (ours, reference):
        torch.manual_seed(7)
        out = model.train()(x)
        out.square().sum().backward()
        outputs.append((out, model.conv1.weight.grad))
    torch.testing.assert_close(outputs[0], outputs[1])
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x))
    features = create_model(name, features_only=True, drop_path_rate=0.3)
    assert features.layer4[-1].drop_path.drop_prob == pytest.approx(0.3)


def test_the_feature_extractor_names_its_layout_in_output_fmt():
    """As timm's feature extractors (output_fmt 'NCHW'); ours had no such attribute."""
    assert create_model("resnet18", features_only=True).output_fmt == \
        timm.create_model("resnet18", features_only=True).output_fmt == "NCHW"


@pytest.mark.parametrize("name, output_stride", [("resnet18", 16), ("resnet50", 8)])
@pytest.mark.parametrize("features_only", [False, True])
def test_output_stride_dilates_the_last_stages_as_timms(name, output_stride, features_only, tmp_path):
    """create_model('resnet50', output_stride=16) (timm's dilated ResNet, DeepLab's backbone) was refused: "resnet50
    takes no argument 'output_stride'". The same weights now give timm's maps, reductions and logits, and a
    checkpoint rebuilds the dilated model."""
    torch.manual_seed(81)
    kwargs = dict(features_only=True) if features_only else dict(num_classes=10)
    reference = randomize_batch_norm(timm.create_model(name, output_stride=output_stride, **kwargs), 81).eval()
    ours = create_model(name, output_stride=output_stride, **kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert [info["reduction"] for info in ours.feature_info] == [info["reduction"] for info in reference.feature_info]
    assert ours.feature_info.reduction()[-1] == output_stride
    x = images(2, 3, 64, 64, seed=82)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x))
    assert ours.model_args["output_stride"] == output_stride
    assert_rebuilds_from_its_checkpoint(ours, x, tmp_path)


@pytest.mark.parametrize("output_stride", [4, 12, 64, "16"])
def test_an_output_stride_timm_refuses_is_refused_by_name(output_stride):
    with pytest.raises(ValueError, match=r"output_stride must be (one of \(8, 16, 32\)|an integer)"):
        create_model("resnet18", output_stride=output_stride)
    with pytest.raises(ValueError, match="output_stride must be"):
        create_model("resnet50", features_only=True, output_stride=output_stride)
    with pytest.raises(AssertionError):  # timm's: assert output_stride in (8, 16, 32)
        timm.create_model("resnet18", output_stride=output_stride)


def test_bf16_inference_runs_channels_last_and_fp32_keeps_torchvisions_layout():
    """Under bf16 autocast without autograd the images go channels-last (the convolutions' fastest CPU layout: 2× a
    ResNet-50's images/s); fp32 keeps the contiguous layout and with it torchvision's rounding."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10).eval()
    seen = []
    model.conv1.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    images = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with_grad = model(images)
        with torch.no_grad():
            without_grad = model(images)
    assert seen[0].is_contiguous() and seen[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(without_grad.float(), with_grad.detach().float(), atol=0.05, rtol=0.05)
    with torch.no_grad():
        model(images)
    assert seen[2].is_contiguous()
