"""ConvNeXt against timm: sizes and keys, checkpoints (.pth/.safetensors, timm's 1×1-conv MLPs, the
official facebookresearch layout), logits in training and inference (the chunked block path), feature
maps, the small configs, stochastic depth and layer scale, bad inputs and the classifier."""

import re

import pytest
import timm
import timm.data
import torch
from model_helpers import (
    assert_export_runs_at_other_batch_sizes,
    assert_fx_traces,
    assert_grad_checkpointing_changes_nothing,
    assert_pool_built_and_reset_give_reference_outputs,
    assert_rebuilds_from_its_checkpoint,
    assert_same_outputs,
    assert_trace_runs_at_other_batch_sizes,
    checkpointed_step,
    count,
    images,
)
from safetensors.torch import save_file
from timm.models.convnext import ConvNeXt as TimmConvNeXt

import visionzoo.models.convnext as convnext
from visionzoo.layers.drop import DropPath
from visionzoo.models import create_model
from visionzoo.models.convnext import ConvNeXtBlock

TIMM_NAMES = (
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
)
TIMM_TAGS = {  # the weights our registry names, as timm tags
    "convnext_atto": "d2_in1k", "convnext_femto": "d1_in1k", "convnext_pico": "d1_in1k", "convnext_nano": "d1h_in1k",
    "convnext_tiny": "fb_in1k", "convnext_small": "fb_in1k", "convnext_base": "fb_in1k", "convnext_large": "fb_in1k",
}
CONV_MLP = {"convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano"}  # timm: 1×1-conv MLPs
ATOL = 1e-4



def randomise(model, seed):
    """Random biases, norms and layer scales (gamma ~ 0.3, not timm's 1e-6, so that every block counts)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("gamma"):
                param.copy_(0.3 * noise)
            elif name.endswith("bias") or "norm" in name:
                param.add_(0.1 * noise)
    return model


@pytest.fixture(scope="module")
def timm_tiny(tmp_path_factory):
    """timm's convnext_tiny with random weights, saved as .pth and .safetensors."""
    torch.manual_seed(0)
    reference = randomise(timm.create_model("convnext_tiny"), seed=1).eval()
    folder = tmp_path_factory.mktemp("timm")
    state = reference.state_dict()
    torch.save(state, folder / "convnext_tiny.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "convnext_tiny.safetensors"))
    return reference, folder


@pytest.fixture(scope="module")
def timm_atto(tmp_path_factory):
    """timm's convnext_atto (1×1-conv MLP) with random weights, saved as .pth."""
    torch.manual_seed(2)
    reference = randomise(timm.create_model("convnext_atto"), seed=3).eval()
    path = tmp_path_factory.mktemp("timm") / "convnext_atto.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


# --- sizes, keys, configs -----------------------------------------------------------------------

@pytest.mark.parametrize("name", TIMM_NAMES)
def test_parameter_counts_and_keys_equal_timm(name):
    with torch.device("meta"):
        ours, reference = create_model(name), timm.create_model(name)
    assert count(ours) == count(reference)
    own = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert own.keys() == theirs.keys()
    if name in CONV_MLP:  # timm's [O, I, 1, 1] is our linear [O, I]; everything else is equal
        mlp = {k for k in theirs if re.search(r"\.mlp\.fc[12]\.weight$", k)}
        assert mlp and all(theirs[k] == own[k] + (1, 1) for k in mlp)
        theirs = {k: own[k] if k in mlp else v for k, v in theirs.items()}
    assert own == theirs


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_default_cfg_equals_timm(name):
    with torch.device("meta"):
        cfg = create_model(name).default_cfg
        expected = timm.create_model(f"{name}.{TIMM_TAGS[name]}").pretrained_cfg
    for key in ("hf_hub_id", "mean", "std", "input_size", "pool_size", "crop_pct", "interpolation", "first_conv",
                "classifier", "num_classes"):
        assert cfg[key] == expected[key], key


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_test_time_size_is_timms(name):
    """timm's ConvNeXt weights are evaluated at a larger test size (288×288, crop 0.95 or 1.0: test_input_size and
    test_crop_pct in their pretrained_cfg), which timm.data.resolve_data_config(use_test_size=True) reads; ours had
    neither, so the same call gave 224×224 at crop 0.875 for our model and another accuracy than timm reports."""
    with torch.device("meta"):
        ours = create_model(name)
        theirs = timm.create_model(f"{name}.{TIMM_TAGS[name]}")
    for key in ("test_input_size", "test_crop_pct"):
        assert ours.default_cfg[key] == theirs.pretrained_cfg[key], key
    assert timm.data.resolve_data_config(model=ours, use_test_size=True) == \
        timm.data.resolve_data_config(model=theirs, use_test_size=True)


def _timm_twin(name, num_classes):
    """timm's ConvNeXt of the same sizes with the 4×4 stem (our *_64 configs), or for ``convnext_atto_32``
    (a 2×2 stem, which timm would follow with a stride-2 stage) the 4×4-stem twin that gives the same
    logits on the 2× nearest-upsampled image once its stem kernel is ours spread over 2×2 blocks / 4."""
    depths, dims = convnext._SIZES[name.rsplit("_", 1)[0]]
    return TimmConvNeXt(depths=depths, dims=dims, patch_size=4, num_classes=num_classes)


@pytest.mark.parametrize("name, size, maps", [
    ("convnext_atto_32", 32, (16, 8, 4, 2)),
    ("convnext_atto_64", 64, (16, 8, 4, 2)),
    ("convnext_femto_64", 64, (16, 8, 4, 2)),
])
def test_small_configs_equal_timm_and_train(name, size, maps):
    torch.manual_seed(4)
    ours = randomise(create_model(name, num_classes=6), seed=5).eval()
    reference = _timm_twin(name, 6).eval()
    state = ours.state_dict()
    x = images(4, 3, size, size, seed=6)
    if name.endswith("_32"):
        kernel = state["stem.0.weight"]
        assert kernel.shape == (40, 3, 2, 2)
        state["stem.0.weight"] = kernel.repeat_interleave(2, 2).repeat_interleave(2, 3) / 4
        assert count(ours) == count(reference) - 40 * 3 * (16 - 4)
        reference_x = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
    else:
        assert count(ours) == count(reference)
        reference_x = x
    reference.load_state_dict(state, strict=True)
    assert ours.default_cfg["input_size"] == (3, size, size)
    with torch.no_grad():
        expected = reference(reference_x)
        assert expected.std() > 0.1
        torch.testing.assert_close(ours(x), expected, atol=ATOL, rtol=1e-5)
    # train mode: forward and backward reach every parameter
    ours.train()
    logits = ours(x)
    assert logits.shape == (4, 6)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 and p.grad.isfinite().all() for p in ours.parameters())
    features = create_model(name, features_only=True)
    assert [m.shape[-1] for m in features(x)] == list(maps)
    assert features.feature_info.reduction() == [size // m for m in maps]


# --- timm checkpoints and logits ----------------------------------------------------------------

def _modes(model, x, modes=("grad", "train-grad", "no_grad", "inference_mode")):
    """Logits with autograd (eval and train mode: the plain block path) and without it (no_grad and
    inference_mode: the chunked path)."""
    out = {}
    for mode in modes:
        model.train(mode == "train-grad")
        if mode in ("grad", "train-grad"):
            out[mode] = model(x).detach()
        else:
            with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
                out[mode] = model(x).clone()
    model.eval()
    return out


@pytest.mark.parametrize("suffix, modes", [
    (".pth", ("grad", "train-grad", "no_grad", "inference_mode")),
    (".safetensors", ("no_grad",)),
])
def test_timm_checkpoint_gives_timm_logits_with_and_without_autograd(timm_tiny, suffix, modes):
    reference, folder = timm_tiny
    ours = create_model("convnext_tiny", checkpoint=folder / f"convnext_tiny{suffix}")
    x = images(1, 3, 224, 224, seed=7)
    with torch.no_grad():
        expected = reference(x)
        their_features = reference.forward_features(x)
    assert expected.std() > 0.1
    for mode, got in _modes(ours, x, modes).items():
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5, msg=lambda m, mode=mode: f"{mode}: {m}")
    if suffix == ".pth":
        with torch.no_grad():
            features = ours.forward_features(x)
            assert features.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(features, their_features, atol=ATOL, rtol=1e-5)
            torch.testing.assert_close(ours.forward_head(features, pre_logits=True),
                                       reference.forward_head(features, pre_logits=True), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("size, channels_last", [((200, 232), False), ((224, 224), True), ((97, 130), True)])
def test_odd_sizes_and_channels_last_inputs_give_timm_logits(timm_tiny, size, channels_last):
    reference, folder = timm_tiny
    ours = create_model("convnext_tiny", checkpoint=folder / "convnext_tiny.pth")
    x = images(1, 3, *size, seed=8)
    with torch.no_grad():
        expected = reference(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for mode, got in _modes(ours, x, ("grad", "inference_mode")).items():
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5, msg=lambda m, mode=mode: f"{mode}: {m}")


def test_timm_conv_mlp_checkpoint_is_reshaped_and_gives_timm_logits(timm_atto):
    reference, path = timm_atto
    ours = create_model("convnext_atto", checkpoint=path)
    theirs = reference.state_dict()
    fc1 = "stages.2.blocks.3.mlp.fc1.weight"
    assert theirs[fc1].shape == (640, 160, 1, 1) and ours.state_dict()[fc1].shape == (640, 160)
    assert torch.equal(ours.state_dict()[fc1], theirs[fc1][:, :, 0, 0])
    x = images(2, 3, 96, 96, seed=9)
    with torch.no_grad():
        expected = reference(x)
    for mode, got in _modes(ours, x).items():
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5, msg=lambda m, mode=mode: f"{mode}: {m}")


def _official_name(key):
    """timm's key -> the facebookresearch/ConvNeXt release's (``downsample_layers``, ``dwconv``, ...)."""
    key = re.sub(r"^stem\.", "downsample_layers.0.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
    key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc1.", ".pwconv1.").replace(".mlp.fc2.", ".pwconv2.")
    key = re.sub(r"^head\.norm\.", "norm.", key)
    return re.sub(r"^head\.fc\.", "head.", key)


@pytest.mark.parametrize("wrapped", [False, True])
def test_official_facebookresearch_layout_loads(timm_tiny, tmp_path, wrapped):
    reference, _ = timm_tiny
    official = {_official_name(k): v for k, v in reference.state_dict().items()}
    assert {"downsample_layers.0.0.weight", "downsample_layers.3.1.weight", "stages.2.8.pwconv1.weight",
            "stages.3.2.gamma", "norm.weight", "head.weight"} <= set(official)
    assert not any(k.startswith(("stem.", "head.fc", "head.norm")) or ".blocks." in k for k in official)
    path = tmp_path / "convnext_tiny_1k_224_ema.pth"
    torch.save({"model": official} if wrapped else official, path)
    ours = create_model("convnext_tiny", checkpoint=path).eval()
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = images(1, 3, 224, 224, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)


# --- feature maps ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(96, 128), (65, 97)])  # and sides that are no multiple of the stride 32
@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 3), (0, 1)])
def test_features_only_equals_timm(timm_atto, out_indices, size):
    _, path = timm_atto
    reference = timm.create_model("convnext_atto", features_only=True, out_indices=out_indices, pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path))).eval()
    ours = create_model("convnext_atto", features_only=True, out_indices=out_indices, checkpoint=path).eval()
    assert ours.feature_info.channels() == reference.feature_info.channels()
    assert ours.feature_info.reduction() == reference.feature_info.reduction()
    assert ours.feature_info.module_name() == reference.feature_info.module_name()
    assert len(ours.stages) == max(out_indices) + 1
    x = images(2, 3, *size, seed=11)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected) == len(out_indices)
    for index, (ours_map, their_map) in enumerate(zip(got, expected)):
        assert ours_map.shape == their_map.shape
        torch.testing.assert_close(ours_map, their_map, atol=ATOL, rtol=1e-5, msg=lambda m, i=index: f"map {i}: {m}")


def test_features_only_loads_timm_feature_extractor_keys(tmp_path):
    torch.manual_seed(12)
    reference = randomise(timm.create_model("convnext_atto", features_only=True), seed=13).eval()
    assert any(k.startswith("stem_0.") for k in reference.state_dict())
    path = tmp_path / "features.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("convnext_atto", features_only=True, checkpoint=path).eval()
    x = images(1, 3, 64, 64, seed=14)
    with torch.no_grad():
        for got, expected in zip(ours(x), reference(x)):
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_features_only_rejects_bad_out_indices():
    for bad in [(), (0, 4), (-5,), 0]:
        with pytest.raises(ValueError, match="out_indices"):
            create_model("convnext_atto", features_only=True, out_indices=bad)


# --- the chunked inference path ------------------------------------------------------------------

@pytest.mark.parametrize("ls_init_value", [0.5, None])
@pytest.mark.parametrize("chunk", [1 << 18, 1000, 37])
def test_block_chunked_path_equals_plain_path(monkeypatch, ls_init_value, chunk):
    monkeypatch.setattr(convnext, "_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(15)
    block = randomise(ConvNeXtBlock(24, ls_init_value=ls_init_value), seed=16).eval()
    assert (block.gamma is None) == (ls_init_value is None)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = images(3, 24, 13, 11, seed=17).contiguous(memory_format=layout)
        plain = block(x)  # autograd on: the plain path
        with torch.no_grad():
            chunked = block(x)
        assert chunked.shape == plain.shape == x.shape
        torch.testing.assert_close(chunked, plain.detach(), atol=1e-5, rtol=1e-5)
        assert torch.equal(x, images(3, 24, 13, 11, seed=17))  # the input is left alone


def test_where_freed_memory_is_kept_the_residual_runs_in_chunks_of_32_mib(monkeypatch):
    """As the ViT block's MLP: once visionzoo.utils.keep_freed_memory() has run, a large product costs no page faults,
    and convnext_tiny in bf16 at batch 32 ran 1.2x faster with 32 MiB chunks than with 2^21 elements."""
    import visionzoo.utils as utils

    monkeypatch.setattr(convnext, "_CHUNK_ELEMENTS", 96 * 100)  # chunks of 100 pixels
    torch.manual_seed(18)
    block = randomise(ConvNeXtBlock(24), seed=19).eval()  # hidden width 96
    rows = []
    block.mlp.fc1.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    x = images(2, 24, 15, 15, seed=20)  # 450 pixels
    with torch.inference_mode():
        expected = block(x)
        assert rows == [100] * 4 + [50]
        monkeypatch.setattr(utils, "_freed_memory_kept", True)
        rows.clear()
        got = block(x)
        assert rows == [450]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_trace_or_export_runs_at_other_batch_sizes(monkeypatch):
    """The pixel chunks were unrolled by torch.jit.trace: traced on 2 images, a block left the rows beyond them
    without their residual, and convnext_atto's logits at batch 8 were 1.74 off; torch.export with a dynamic batch
    failed ('your code specialized it to be a constant (2)')."""
    monkeypatch.setattr(convnext, "_CHUNK_ELEMENTS", 160 * 64)
    torch.manual_seed(0)
    model = randomise(create_model("convnext_atto_32").eval(), seed=1)
    x = images(5, 3, 32, 32, seed=2)
    assert_trace_runs_at_other_batch_sizes(model, x)
    assert_export_runs_at_other_batch_sizes(model, x)


@pytest.mark.parametrize("name, size", [("convnext_atto_32", 35), ("convnext_tiny", 224)])
def test_torch_fx_traces_and_torchvisions_feature_extractor_takes_it(name, size):
    """torch.fx.symbolic_trace, and with it torchvision's create_feature_extractor, failed on the input check
    ('symbolically traced variables cannot be used as inputs to control flow'), where timm's ConvNeXt traces; the
    traced graph gives the eager logits, the stages' nodes forward_intermediates' maps (the last forward_features'),
    the traced feature extractor its maps, and a wrong input is still refused."""
    torch.manual_seed(0)
    model, x = randomise(create_model(name).eval(), seed=1), images(2, 3, size, size, seed=2)
    with torch.no_grad():
        features, maps = model.forward_intermediates(x, [1, 2])
    assert_fx_traces(model, x, {"stages.1": maps[0], "stages.2": maps[1], "stages.3": features})
    with pytest.raises(ValueError, match="takes 3-channel images, got 1"):
        torch.fx.symbolic_trace(model)(x[:, :1])
    assert_fx_traces(create_model(name, features_only=True, out_indices=(0, 2)).eval(), x)


def test_chunked_path_in_bfloat16_is_close_to_plain():
    torch.manual_seed(18)
    block = randomise(ConvNeXtBlock(16), seed=19).eval().to(torch.bfloat16)
    x = images(2, 16, 9, 9, seed=20).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    plain = block(x).detach()
    with torch.inference_mode():
        chunked = block(x)
    assert chunked.dtype == torch.bfloat16
    torch.testing.assert_close(chunked.float(), plain.float(), atol=2e-2, rtol=2e-2)


# --- stochastic depth and layer scale ---------------------------------------------------------

def test_layer_scale_and_drop_path_rates_follow_timm():
    with torch.device("meta"):
        ours = create_model("convnext_tiny", drop_path_rate=0.3)
        reference = timm.create_model("convnext_tiny", drop_path_rate=0.3)
    for stage, their_stage in zip(ours.stages, reference.stages):
        for block, their_block in zip(stage.blocks, their_stage.blocks):
            rate = block.drop_path.drop_prob if isinstance(block.drop_path, DropPath) else 0.0
            their_rate = getattr(their_block.drop_path, "drop_prob", 0.0)
            assert rate == pytest.approx(their_rate, abs=1e-7)
    rates = [b.drop_path.drop_prob for b in ours.stages[3].blocks]
    assert rates[-1] == pytest.approx(0.3) and isinstance(ours.stages[0].blocks[0].drop_path, torch.nn.Identity)
    model = create_model("convnext_atto")
    gammas = [b.gamma for s in model.stages for b in s.blocks]
    assert len(gammas) == 12 and all(torch.equal(g, torch.full_like(g, 1e-6)) for g in gammas)
    with torch.device("meta"):
        no_scale = create_model("convnext_tiny", ls_init_value=None)
        # timm.create_model drops None arguments: build timm's class directly
        their_no_scale = TimmConvNeXt(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), ls_init_value=None)
    assert not any(k.endswith("gamma") for k in no_scale.state_dict())
    assert no_scale.state_dict().keys() == their_no_scale.state_dict().keys()


def test_drop_path_acts_in_training_even_without_autograd():
    torch.manual_seed(21)
    model = randomise(create_model("convnext_atto_64", num_classes=5, drop_path_rate=0.5), seed=22)
    x = images(8, 3, 64, 64, seed=23)
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    torch.manual_seed(24)
    model.train()
    trained = model(x).detach()
    torch.manual_seed(24)
    with torch.no_grad():
        trained_no_grad = model(x)
    assert not torch.allclose(trained, evaluated, atol=1e-3)  # some branches were dropped
    torch.testing.assert_close(trained_no_grad, trained, atol=1e-5, rtol=1e-5)  # the same draws, same result


def test_initialisation_follows_timm():
    """The same distributions as timm (its RNG order differs, so compare statistics): truncated normal
    std 0.02 for convs and linears, zero biases, the head scaled by ``head_init_scale``, norms at 1/0."""
    torch.manual_seed(25)
    ours = create_model("convnext_atto", head_init_scale=0.5)
    reference = timm.create_model("convnext_atto", head_init_scale=0.5)
    theirs = reference.state_dict()
    for key, value in ours.state_dict().items():
        expected = theirs[key].reshape(value.shape)
        if value.numel() >= 4096:
            assert value.std().item() == pytest.approx(expected.std().item(), rel=0.1), key
            assert value.mean().abs() < 3 * value.std() / value.numel() ** 0.5 + 1e-6, key
        elif key.endswith(("bias", "gamma")) or "norm" in key:
            assert torch.equal(value, expected), key
    assert ours.head.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(ours.head.fc.bias == 0)


# --- bad inputs and the classifier ------------------------------------------------------------------

@pytest.mark.parametrize("shape, message", [
    ((1, 1, 64, 64), r"3-channel images, got 1 channels"),
    ((1, 4, 64, 64), r"in_chans=4"),
    ((1, 3, 24, 64), r"24×64 is too small.*32-fold.*32×32"),
    ((1, 3, 2, 2), r"smaller than one 4×4 stem patch"),
    ((3, 64, 64), r"Tensor\[B, C, H, W\]"),
])
@pytest.mark.parametrize("features_only", [False, True])
def test_bad_inputs_raise_one_clear_value_error(shape, message, features_only):
    model = create_model("convnext_atto", features_only=features_only).eval()
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


def test_smallest_input_is_taken():
    model = create_model("convnext_atto").eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
        assert model(torch.zeros(1, 3, 39, 45)).shape == (1, 1000)  # floored like timm
    features = create_model("convnext_atto_32", features_only=True, out_indices=(0, 1)).eval()
    with torch.no_grad():  # stride 4 is the deepest map: 4 pixels are enough
        assert [m.shape[-1] for m in features(torch.zeros(1, 3, 4, 4))] == [2, 1]


def test_reset_classifier():
    torch.manual_seed(26)
    model = create_model("convnext_atto_64", num_classes=10).eval()
    x = images(2, 3, 64, 64, seed=27)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(7)
        assert model.num_classes == 7 and model.get_classifier() is model.head.fc
        assert model.head.fc.weight.shape == (7, 320) and torch.all(model.head.fc.bias == 0)
        assert model.head.fc.weight.std() < 0.03
        torch.testing.assert_close(model(x), model.head.fc(pooled))
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), torch.nn.Identity) and model.num_classes == 0
        torch.testing.assert_close(model(x), pooled)
    assert model.num_features == 320


@pytest.mark.parametrize("global_pool, num_classes", [
    *[(name, 5) for name in ("avg", "max", "avgmax", "fast", "fastavg", "fastmax", "fastavgmax", "FASTMAX")],
    ("", 5),  # no pooling: a 1×1-conv classifier, logits per position
    ("", 0),  # the normalised map
])
def test_every_timm_global_pool_at_create_model_and_reset_classifier_gives_timms_logits(global_pool, num_classes):
    depths, dims = convnext._SIZES["convnext_atto"]
    torch.manual_seed(28)
    reference = randomise(TimmConvNeXt(depths=depths, dims=dims, num_classes=num_classes, global_pool=global_pool),
                          seed=28).eval()
    x = images(2, 3, 64, 96, seed=29)
    models = assert_pool_built_and_reset_give_reference_outputs(reference, "convnext_atto_64", num_classes,
                                                                global_pool, x)
    for ours in models:
        assert ours.head.global_pool == global_pool.lower()
        assert (ours.num_features, ours.head_hidden_size) == (reference.num_features, reference.head_hidden_size)
    with torch.no_grad():
        got, expected = models[1](x), reference(x)
    assert got.shape == ((2, 5, 2, 3) if global_pool == "" and num_classes else expected.shape)


@pytest.mark.parametrize("num_classes, global_pool", [(0, None), (5, "max"), (0, "")])
def test_reset_classifier_with_reset_other_removes_the_head_norm_as_timm(num_classes, global_pool):
    depths, dims = convnext._SIZES["convnext_atto"]
    torch.manual_seed(30)
    reference = randomise(TimmConvNeXt(depths=depths, dims=dims, num_classes=10), seed=30).eval()
    ours = create_model("convnext_atto_64", num_classes=10).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.reset_classifier(num_classes, global_pool, reset_other=True)
    reference.reset_classifier(num_classes, global_pool, reset_other=True)
    assert isinstance(ours.head.norm, torch.nn.Identity)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 64, 64, seed=31)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("global_pool", ["catavgmax", "fastcatavgmax"])
def test_a_pool_that_doubles_the_width_is_refused_by_name_as_timm_does(global_pool):
    message = rf"global_pool='{global_pool}' doubles the pooled width.*use one of \('avg', 'max', 'avgmax', 'fast'"
    with pytest.raises(ValueError, match=message):
        create_model("convnext_atto_64", global_pool=global_pool)
    with pytest.raises(ValueError, match=message):
        create_model("convnext_atto_64").reset_classifier(5, global_pool)
    with pytest.raises(ValueError, match=r"global_pool must be one of .*got 'token'"):
        create_model("convnext_atto_64", global_pool="token")


@pytest.mark.parametrize("arguments, message", [
    (dict(depths=[2, "a", 2, 2]), "depths must be a sequence of integers, got [2, 'a', 2, 2]"),
    (dict(dims=[40, 80, 160, 320.5]), "dims must be a sequence of integers, got [40, 80, 160, 320.5]"),
    (dict(dims=5), "dims must be a sequence of integers, got 5"),
])
def test_sequence_arguments_given_junk_are_refused_by_name(arguments, message):
    """depths=[2, "a", 2, 2] failed with "unsupported operand type(s) for +: 'int' and 'str'", a fractional width with
    "out_channels must be divisible by groups", dims=5 with "object of type 'int' has no len()"."""
    with pytest.raises(ValueError, match=re.escape(f"ConvNeXt: {message}")):
        create_model("convnext_atto_32", **arguments)


@pytest.mark.parametrize("kernel_size", [4, 0])
def test_a_kernel_size_that_is_even_or_not_positive_is_refused_when_built(kernel_size):
    """kernel_size=4 built a model whose forward failed with 'The size of tensor a (256) must match the size of tensor
    b (289)' (timm's fails the same way), kernel_size=0 one that failed in oneDNN ('could not create a primitive
    descriptor')."""
    with pytest.raises(ValueError, match=f"kernel_size must be odd and positive .*got {kernel_size}"):
        create_model("convnext_atto_32", kernel_size=kernel_size)


# --- gradient checkpointing ---------------------------------------------------------------------

def test_grad_checkpointing_changes_neither_outputs_nor_gradients():
    torch.manual_seed(60)
    model = randomise(create_model("convnext_atto_64", num_classes=5, drop_path_rate=0.3), seed=61)
    assert_grad_checkpointing_changes_nothing(model, images(2, 3, 64, 64, seed=62))
    features = create_model("convnext_atto_64", features_only=True, out_indices=(1, 2))
    assert_grad_checkpointing_changes_nothing(features, images(2, 3, 64, 64, seed=62))


def test_grad_checkpointing_gives_timms_outputs_and_gradients():
    torch.manual_seed(63)
    ours = randomise(create_model("convnext_atto_64", num_classes=6), seed=64)
    reference = _timm_twin("convnext_atto_64", 6)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = images(2, 3, 64, 64, seed=65)
    out, grads, recomputed = checkpointed_step(ours, x, True)
    expected, expected_grads, expected_recomputed = checkpointed_step(reference, x, True)
    assert recomputed > 0 and expected_recomputed > 0
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], atol=1e-5, rtol=1e-4, msg=key)


# --- forward_intermediates and prune_intermediate_layers ----------------------------------------

STAGE_INTERMEDIATES_CASES = [
    dict(),
    dict(indices=2, norm=True),
    dict(indices=[0, -1], norm=True, intermediates_only=True),
    dict(indices=[1], stop_early=True),
    dict(indices=[0, 1], stop_early=True, norm=True, intermediates_only=True),
]


def _timm_convnext_twin(seed=96):
    torch.manual_seed(seed)
    ours = randomise(create_model("convnext_atto_64", num_classes=6), seed=seed)
    reference = _timm_twin("convnext_atto_64", 6)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("kwargs", STAGE_INTERMEDIATES_CASES)
def test_forward_intermediates_equal_timms(kwargs):
    ours, reference = _timm_convnext_twin()
    x = images(2, 3, 64, 64, seed=97)
    with torch.no_grad():
        assert_same_outputs(ours.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs))
    assert_same_outputs(ours.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs))
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("indices, size", [([0], 4), ([1], 8), ([2], 16), ([0, 1], 15), ([-2], 16)])
def test_forward_intermediates_stopping_early_takes_images_its_stages_can_as_timms(indices, size):
    """With stop_early an image too small for the later stages was refused ('needs at least 32×32')."""
    ours, reference = _timm_convnext_twin()
    x = images(2, 3, size, size, seed=98)
    with torch.no_grad():
        assert_same_outputs(ours.forward_intermediates(x, indices, stop_early=True),
                            reference.forward_intermediates(x, indices, stop_early=True))
        with pytest.raises(ValueError, match=r"at least 32×32"):
            ours.forward_intermediates(x, indices)


@pytest.mark.parametrize("indices, prune_norm, prune_head", [(1, False, True), (2, True, False), ([0, 2], False, False),
                                                             ([1], False, True)])
def test_prune_intermediate_layers_equals_timms(indices, prune_norm, prune_head):
    ours, reference = _timm_convnext_twin()
    assert ours.prune_intermediate_layers(indices, prune_norm, prune_head) == \
        reference.prune_intermediate_layers(indices, prune_norm, prune_head)
    assert ours.num_features == reference.num_features
    x = images(2, 3, 64, 64, seed=98)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x))
        assert_same_outputs(ours.forward_intermediates(x, indices), reference.forward_intermediates(x, indices))
    assert ours.state_dict().keys() == reference.state_dict().keys()


@pytest.mark.parametrize("features_only", [False, True])
def test_an_empty_batch_gives_empty_outputs_with_and_without_autograd_as_timm(features_only):
    torch.manual_seed(51)
    model = create_model("convnext_atto", features_only=features_only, num_classes=10).eval()
    reference = timm.create_model("convnext_atto", features_only=features_only, num_classes=10).eval()
    x = images(0, 3, 64, 64)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out, expected = model(x), reference(x)
        shapes = [tuple(y.shape) for y in out] if features_only else tuple(out.shape)
        assert shapes == ([tuple(y.shape) for y in expected] if features_only else tuple(expected.shape)), grad
        assert shapes == ([(0, 40, 16, 16), (0, 80, 8, 8), (0, 160, 4, 4), (0, 320, 2, 2)] if features_only else (0, 10))


def test_sizes_given_to_create_model_override_the_names_as_timms():
    """create_model('convnext_atto', depths=...) failed with "ConvNeXt.__init__() got multiple values for
    argument 'depths'"; timm's builders let keyword arguments override their sizes."""
    sizes = dict(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64))
    torch.manual_seed(60)
    reference = timm.create_model("convnext_atto", num_classes=5, **sizes).eval()
    ours = create_model("convnext_atto", num_classes=5, **sizes).eval()
    ours.load_state_dict(convnext.checkpoint_filter(reference.state_dict(), ours))
    assert count(ours) == count(reference)
    x = images(2, 3, 64, 64, seed=61)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x), atol=ATOL)
    features = create_model("convnext_atto", features_only=True, depths=(1, 1, 2, 1))
    assert features.feature_info.channels() == [40, 80, 160, 320]
    assert [len(stage.blocks) for stage in features.stages] == [1, 1, 2, 1]


def test_the_feature_extractor_names_its_layout_in_output_fmt():
    """timm's feature extractors name their maps' layout (output_fmt, 'NCHW' for ConvNeXt); ours had no such
    attribute (AttributeError for code written for timm)."""
    assert create_model("convnext_atto", features_only=True).output_fmt == \
        timm.create_model("convnext_atto", features_only=True).output_fmt == "NCHW"


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("features_only", [False, True])
def test_output_stride_dilates_the_last_stages_as_timms(output_stride, features_only, tmp_path):
    """create_model('convnext_atto', output_stride=16) (timm's dilated ConvNeXt, for segmentation) was refused:
    "convnext_atto takes no argument 'output_stride'". timm's weights now give timm's maps, reductions and logits
    (its stride-1 downsample: a 2×2 conv padded as 'same', dilated from the second dilated stage on; dilated
    depthwise convs), and a checkpoint rebuilds the dilated model."""
    torch.manual_seed(101)
    kwargs = dict(features_only=True) if features_only else dict(num_classes=6)
    reference = randomise(timm.create_model("convnext_atto", output_stride=output_stride, **kwargs), seed=101).eval()
    ours = create_model("convnext_atto", output_stride=output_stride, **kwargs).eval()
    ours.load_state_dict(convnext.checkpoint_filter(reference.state_dict(), ours), strict=True)
    assert [info["reduction"] for info in ours.feature_info] == [info["reduction"] for info in reference.feature_info]
    assert ours.feature_info.reduction()[-1] == output_stride
    x = images(2, 3, 61, 67, seed=102)  # odd sizes: the 'same' padding of an even kernel is one-sided
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x), atol=ATOL)
    assert ours.model_args["output_stride"] == output_stride
    assert_rebuilds_from_its_checkpoint(ours, x, tmp_path)


@pytest.mark.parametrize("output_stride", [4, 12, 64])
def test_an_output_stride_timm_refuses_is_refused_by_name(output_stride):
    with pytest.raises(AssertionError):  # timm's: assert output_stride in (8, 16, 32)
        timm.create_model("convnext_atto", output_stride=output_stride)
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\)"):
        create_model("convnext_atto", output_stride=output_stride)
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\)"):
        create_model("convnext_atto", features_only=True, output_stride=output_stride)

