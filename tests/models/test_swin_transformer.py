"""Swin Transformer against timm: sizes, checkpoints (.pth/.safetensors, official layout), logits and
gradients, padded and other input sizes, the shifted-window mask, feature maps, and bad inputs."""

import re
from functools import partial

import pytest
import timm
import torch
import torch.nn.functional as F
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
from timm.layers import PatchEmbed as TimmPatchEmbed
from timm.models.swin_transformer import SwinTransformer as TimmSwinTransformer

import visionzoo.models.swin_transformer as swin
from visionzoo.checkpoint import CheckpointError
from visionzoo.models import create_model, get_model_entry
from visionzoo.models.swin_transformer import SwinTransformer, SwinTransformerBlock, checkpoint_filter_fn

TIMM_NAMES = (
    "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
    "swin_base_patch4_window12_384",
)
SMALL_CONFIGS = {  # our small sizes, as timm SwinTransformer arguments
    "swin_tiny_patch2_window4_32": dict(img_size=32, patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 6),
                                        num_heads=(3, 6, 12)),
    "swin_tiny_patch2_window4_64": dict(img_size=64, patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 2),
                                        num_heads=(3, 6, 12)),
}
ATOL = 1e-4



def randomise(model, seed):
    """Random biases, norms and relative position tables too (timm initialises them to 0, 1 and ~0)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
            elif name.endswith("relative_position_bias_table"):
                param.normal_(std=0.5)
    return model


@pytest.fixture(scope="module")
def timm_tiny(tmp_path_factory):
    """timm's swin_tiny_patch4_window7_224 with random weights, saved as .pth; an image and its features."""
    torch.manual_seed(0)
    reference = randomise(timm.create_model("swin_tiny_patch4_window7_224").eval(), 1)
    path = tmp_path_factory.mktemp("timm") / "swin_tiny.pth"
    torch.save(reference.state_dict(), path)
    x = images(1, 3, 224, 224, seed=1)
    with torch.no_grad():
        features = reference.forward_features(x)
    return reference, path, x, features


@pytest.fixture(scope="module")
def ours_tiny(timm_tiny):
    return create_model("swin_tiny_patch4_window7_224", checkpoint=timm_tiny[1]).eval()


@pytest.fixture(scope="module")
def timm_small(tmp_path_factory):
    """timm's SwinTransformer in our 32×32 size (10 classes) with random weights, saved as .safetensors."""
    torch.manual_seed(2)
    reference = randomise(TimmSwinTransformer(num_classes=10, **SMALL_CONFIGS["swin_tiny_patch2_window4_32"]), 3)
    path = tmp_path_factory.mktemp("timm") / "swin_small.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return reference.eval(), path


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_parameter_counts_and_keys_equal_timm(name):
    with torch.device("meta"):
        ours, reference = create_model(name), timm.create_model(name)
    assert count(ours) == count(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert ours.no_weight_decay() == reference.no_weight_decay()


def test_swin_tiny_count_is_the_issue_figure():
    with torch.device("meta"):
        assert count(create_model("swin_tiny_patch4_window7_224")) == 28_288_354


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_default_cfg_and_weights_are_timms(name):
    with torch.device("meta"):
        cfg, expected = create_model(name).default_cfg, timm.create_model(name).pretrained_cfg
    assert get_model_entry(name).pretrained.hf_hub_id == expected["hf_hub_id"] == cfg["hf_hub_id"]
    for key in ("mean", "std", "input_size", "pool_size", "crop_pct", "interpolation", "first_conv", "classifier"):
        assert cfg[key] == expected[key], key


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_small_configs_count_and_keys_equal_timm_built_with_the_same_sizes(name):
    with torch.device("meta"):
        ours, reference = create_model(name, num_classes=10), TimmSwinTransformer(num_classes=10, **SMALL_CONFIGS[name])
    assert count(ours) == count(reference) == {32: 3_050_164, 64: 1_268_356}[SMALL_CONFIGS[name]["img_size"]]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    size = SMALL_CONFIGS[name]["img_size"]
    assert ours.default_cfg["input_size"] == (3, size, size)
    assert ours.default_cfg["pool_size"] == (size // 8, size // 8)
    # shifted windows are active in stages 0 and 1; stage 2's map (4×4 at 32, 8×8 at 64) is one window or more
    shifts = [[block.plan(*stage.output_resolution, torch.device("cpu")).shift for block in stage.blocks]
              for stage in create_model(name).layers]
    assert shifts[0] == shifts[1] == [(0, 0), (2, 2)]
    assert shifts[2] == ([(0, 0)] * 6 if size == 32 else [(0, 0), (2, 2)])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_gives_timm_logits(timm_tiny, ours_tiny, tmp_path, suffix):
    reference, _, x, expected_features = timm_tiny
    ours = ours_tiny
    if suffix == ".safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
        ours = create_model("swin_tiny_patch4_window7_224", checkpoint=path).eval()
    with torch.no_grad():
        features = ours.forward_features(x)
        torch.testing.assert_close(features, expected_features, atol=ATOL, rtol=1e-5)
        logits = ours(x)
        torch.testing.assert_close(logits, reference.forward_head(expected_features), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(ours.forward_head(features, pre_logits=True),
                                   reference.forward_head(expected_features, pre_logits=True), atol=ATOL, rtol=1e-5)
    assert features.shape == (1, 7, 7, 768)
    assert logits.shape == (1, 1000) and logits.std() > 0.1
    assert ours.num_features == reference.num_features == 768


def test_official_layout_and_buffers_are_converted(timm_tiny, ours_tiny):
    reference, _, x, expected_features = timm_tiny
    official = {}
    for key, value in reference.state_dict().items():
        if ".downsample." in key:  # the original code merges patches at the end of the previous stage
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        official[key.replace("head.fc.", "head.")] = value
    official["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    converted = checkpoint_filter_fn(official, ours_tiny)
    own = ours_tiny.state_dict()
    assert converted.keys() == own.keys()
    assert all(torch.equal(converted[k], own[k]) for k in own)


def test_inference_path_equals_the_autograd_path_in_sub_batches(monkeypatch):
    """Without autograd a stage runs over sub-batches, in place; with it, over the batch."""
    torch.manual_seed(2)
    model = randomise(create_model("swin_tiny_patch2_window4_32", num_classes=10).eval(), 3)
    x = images(5, 3, 32, 32, seed=4)
    with torch.no_grad():
        whole = model(x)
    monkeypatch.setattr(swin, "_CHUNK_BYTES", 16 * 16 * 48 * 4 * 2)  # two images per sub-batch at stage 0
    with torch.no_grad():
        chunked = model(x)
    with_grad = model(x)
    assert with_grad.requires_grad
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_grad.detach(), whole, atol=1e-5, rtol=1e-5)


def test_a_trace_runs_at_other_batch_sizes(monkeypatch):
    """The stages' sub-batches were unrolled by torch.jit.trace: traced on 2 images, a model failed at batch 8 with
    'The size of tensor a (6) must match the size of tensor b (8)'."""
    monkeypatch.setattr(swin, "_CHUNK_BYTES", 16 * 16 * 48 * 4 * 2)  # two images per sub-batch at stage 0
    torch.manual_seed(2)
    model = randomise(create_model("swin_tiny_patch2_window4_32", num_classes=10).eval(), 3)
    assert_trace_runs_at_other_batch_sizes(model, images(5, 3, 32, 32, seed=4))


@pytest.mark.parametrize("name, size", [
    ("swin_tiny_patch2_window4_32", 32),
    ("swin_tiny_patch2_window4_32", 37),  # padded: the image to the patch, maps to the windows, odd maps to merge
    ("swin_tiny_patch4_window7_224", 224),
])
def test_torch_fx_traces_and_torchvisions_feature_extractor_takes_it(name, size):
    """torch.fx.symbolic_trace, and with it torchvision's create_feature_extractor, failed on the patch embedding's
    input check ('symbolically traced variables cannot be used as inputs to control flow'), where timm's Swin
    traces, and next on the window plan of each map; the traced graph (which has no input size) gives the eager
    logits at any size, the stages' nodes forward_intermediates' maps (NHWC), the traced feature extractor its maps,
    and a wrong input is still refused."""
    torch.manual_seed(2)
    model = randomise(create_model(name, num_classes=10).eval(), 3)
    x = images(1 if size == 224 else 2, 3, size, size, seed=4)
    with torch.no_grad():
        features, maps = model.forward_intermediates(x, [1, 2])
    nodes = {"layers.1": maps[0].permute(0, 2, 3, 1), "layers.2": maps[1].permute(0, 2, 3, 1), "norm": features}
    assert_fx_traces(model, x, nodes)
    with pytest.raises(ValueError, match="takes 3-channel images, got 1"):
        torch.fx.symbolic_trace(model)(x[:, :1])
    assert_fx_traces(create_model(name, features_only=True, out_indices=(0, 2)).eval(), x)


def test_a_torch_fx_graph_trains_as_the_model():
    """The traced graph in training mode gives the model's logits (the same dropout and stochastic depth draws) and
    the relative position tables get their gradients."""
    model = create_model("swin_tiny_patch2_window4_32", num_classes=10, drop_path_rate=0.2).train()
    traced, x = torch.fx.symbolic_trace(model), images(2, 3, 36, 36, seed=4)
    torch.manual_seed(5)
    expected = model(x)
    torch.manual_seed(5)
    got = traced(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert all(block.attn.relative_position_bias_table.grad.abs().sum() > 0
               for stage in model.layers for block in stage.blocks)


@pytest.mark.parametrize("size", [32, 36])  # 36: padded maps (18, 9, 5, 3 against 4-token windows)
@pytest.mark.parametrize("grad", [False, True])
def test_compiles_as_one_graph_and_exports(size, grad):
    """The window plan's boolean indexing (data-dependent sizes) and the bias cache (keyed on the table's storage)
    broke a compiled Swin into 25 graphs (fullgraph=True failed; timm's Swin compiles whole), and torch.export
    failed ('Cannot access data pointer of Tensor')."""
    torch.manual_seed(2)
    model = randomise(create_model("swin_tiny_patch2_window4_32", num_classes=10).eval(), 3)
    x = images(3, 3, size, size, seed=4)
    with torch.set_grad_enabled(grad):
        expected = model(x)
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), expected,
                                   atol=1e-5, rtol=1e-5)
    if not grad:
        assert_export_runs_at_other_batch_sizes(model, x)


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_small_config_logits_and_gradients_equal_timm(name):
    torch.manual_seed(5)
    reference = randomise(TimmSwinTransformer(num_classes=10, **SMALL_CONFIGS[name]), 6).eval()
    ours = create_model(name, num_classes=10).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    size = SMALL_CONFIGS[name]["img_size"]
    x = images(3, 3, size, size, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
    ours(x).logsumexp(-1).sum().backward()
    reference(x).logsumexp(-1).sum().backward()
    table = "layers.1.blocks.1.attn.relative_position_bias_table"  # of a shifted block
    grads = dict(ours.named_parameters())[table].grad, dict(reference.named_parameters())[table].grad
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(*grads, atol=1e-5, rtol=1e-4)


def test_drop_path_and_init_follow_timm():
    torch.manual_seed(8)
    sizes = SMALL_CONFIGS["swin_tiny_patch2_window4_32"]
    ours, reference = SwinTransformer(drop_path_rate=0.3, **sizes), TimmSwinTransformer(drop_path_rate=0.3, **sizes)
    rates = [[b.drop_path1.drop_prob if b.drop_path1.__class__.__name__ == "DropPath" else 0.0 for b in s.blocks]
             for s in ours.layers]
    expected = [[b.drop_path1.drop_prob if b.drop_path1.__class__.__name__ == "DropPath" else 0.0 for b in s.blocks]
                for s in reference.layers]
    assert rates == expected and rates[-1][-1] == pytest.approx(0.3)
    assert create_model("swin_tiny_patch2_window4_32").layers[0].blocks[1].drop_path1.drop_prob == pytest.approx(0.1 / 9)
    block = ours.layers[0].blocks[0]
    assert block.attn.relative_position_bias_table.std().item() == pytest.approx(0.02, rel=0.3)
    assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1) and torch.all(block.attn.qkv.bias == 0)
    assert block.norm1.eps == ours.norm.eps == ours.layers[1].downsample.norm.eps == 1e-5


def test_unpadded_timm_agrees_where_no_shifted_block_pads():
    """With one (unshifted) block per stage, timm's padding and ours coincide: 37×37 needs padding to the
    2×2 patch (38) and then at every stage to the 4×4 window (19 → 20, 10 → 12, 5 → 8)."""
    torch.manual_seed(9)
    sizes = dict(SMALL_CONFIGS["swin_tiny_patch2_window4_32"], depths=(1, 1, 1))
    reference = TimmSwinTransformer(num_classes=10, strict_img_size=False,
                                    embed_layer=partial(TimmPatchEmbed, dynamic_img_pad=True), **sizes)
    reference = randomise(reference, 10).eval()
    ours = SwinTransformer(num_classes=10, **sizes).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 37, 37, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
        assert ours.forward_features(x).shape == (2, 5, 5, 192)


def test_padding_a_map_equals_attention_on_the_explicitly_zero_padded_map():
    torch.manual_seed(12)
    y = images(2, 9, 10, 32, seed=13)
    padded = F.pad(y, (0, 0, 0, 2, 0, 3))  # 12×12: three 4×4 windows a side, as the block pads
    for shifted in (False, True):
        block = randomise(SwinTransformerBlock(32, 4, (4, 4), shifted=shifted), 14).eval()
        assert block.plan(9, 10, y.device).grid == (12, 12)
        assert block.plan(9, 10, y.device).shift == block.plan(12, 12, y.device).shift == ((2, 2) if shifted else (0, 0))
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                got, want = block.window_attention(y), block.window_attention(padded)[:, :9, :10]
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(8, 8), (9, 11)])
def test_shifted_windows_mask_the_tokens_the_roll_brings_together(size):
    """Token (0, 0) shares a shifted window with the far corner and the far edges, which the mask keeps
    out; its near neighbour is in its region. A map that needs padding is masked as well."""
    torch.manual_seed(15)
    block = randomise(SwinTransformerBlock(32, 4, (4, 4), shifted=True), 16).eval()
    height, width = size
    y = images(1, height, width, 32, seed=17)

    def changed(row, col, grad):
        edited = y.clone()
        edited[0, row, col] += 10.0
        with torch.set_grad_enabled(grad):
            return (block.window_attention(edited) - block.window_attention(y))[0, 0, 0].abs().max().item()

    for grad in (False, True):
        assert changed(1, 1, grad) > 1e-2
        for far in [(height - 1, width - 1), (height - 1, 0), (0, width - 1), (height - 1, 1), (1, width - 1)]:
            assert changed(*far, grad) < 1e-6, far
    unshifted = SwinTransformerBlock(32, 4, (4, 4), shifted=False)
    assert unshifted.plan(height, width, y.device).mask is None


def test_windows_fit_small_maps_as_timm_built_for_that_size(timm_tiny, ours_tiny):
    """At 112×112 the maps are 28, 14, 7, 4: stage 3's window shrinks to 4×4 (shift 0). Our 224 model run
    at 112 uses the central 4×4 offsets of its 7×7 tables, and equals timm built for 112 with those tables;
    built for 112 from the 224 file, both resample the tables by BEiT's recipe and agree too."""
    reference_224, path, _, _ = timm_tiny
    ours_224 = ours_tiny
    table = "layers.3.blocks.0.attn.relative_position_bias_table"
    cropped = ours_224.state_dict()
    for key in cropped:
        if key.startswith("layers.3.") and key.endswith("relative_position_bias_table"):
            cropped[key] = cropped[key].view(13, 13, 24)[3:10, 3:10].reshape(49, 24)
    reference = timm.create_model("swin_tiny_patch4_window7_224", img_size=112).eval()
    reference.load_state_dict(cropped, strict=True)
    x = images(1, 3, 112, 112, seed=18)
    with torch.no_grad():
        torch.testing.assert_close(ours_224(x), reference(x), atol=ATOL, rtol=1e-5)
    ours_112 = create_model("swin_tiny_patch4_window7_224", checkpoint=path, img_size=112).eval()
    timm_112 = timm.create_model("swin_tiny_patch4_window7_224", img_size=112, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert ours_112.state_dict()[table].shape == (7 * 7, 24)
    torch.testing.assert_close(ours_112.state_dict()[table], timm_112.state_dict()[table], atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(ours_112(x), timm_112(x), atol=ATOL, rtol=1e-5)
    assert not torch.allclose(reference_224.state_dict()[table].view(13, 13, 24)[3:10, 3:10].reshape(49, 24),
                              ours_112.state_dict()[table], atol=1e-3)  # resampled, not cropped


def test_any_input_size_is_padded(ours_tiny):
    model = create_model("swin_tiny_patch2_window4_32", num_classes=10).eval()
    features = create_model("swin_tiny_patch2_window4_32", features_only=True).eval()
    features.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("patch_embed", "layers"))})
    with torch.no_grad():
        for size, grids in (((36, 36), [(18, 18), (9, 9), (5, 5)]), ((33, 47), [(17, 24), (9, 12), (5, 6)]),
                            ((2, 2), [(1, 1)] * 3), ((5, 70), [(3, 35), (2, 18), (1, 9)])):
            x = images(1, 3, *size)
            assert model.forward_features(x).shape == (1, *grids[-1], 192)
            assert torch.isfinite(model(x)).all()
            maps = features(x)
            assert [tuple(m.shape[2:]) for m in maps] == grids and [m.shape[1] for m in maps] == [48, 96, 192]
            torch.testing.assert_close(model.norm(maps[-1].permute(0, 2, 3, 1)), model.forward_features(x))
        assert ours_tiny.forward_features(images(1, 3, 230, 230, seed=19)).shape == (1, 8, 8, 768)


def test_features_only_maps_equal_timm(timm_tiny):
    reference, path, x, _ = timm_tiny
    ours = create_model("swin_tiny_patch4_window7_224", checkpoint=path, features_only=True).eval()
    theirs = timm.create_model("swin_tiny_patch4_window7_224", features_only=True).eval()
    theirs.load_state_dict({k.replace("layers.", "layers_", 1): v for k, v in reference.state_dict().items()
                            if not k.startswith(("head", "norm"))})
    assert not hasattr(ours, "head") and not hasattr(ours, "norm")
    with torch.no_grad():
        maps, expected = ours(x), theirs(x)
    assert [tuple(m.shape) for m in maps] == [(1, 96, 56, 56), (1, 192, 28, 28), (1, 384, 14, 14), (1, 768, 7, 7)]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want.permute(0, 3, 1, 2), atol=ATOL, rtol=1e-5)
    for key in ("channels", "reduction", "module_name"):
        assert getattr(ours.feature_info, key)() == getattr(theirs.feature_info, key)(), key
    # timm's feature-extractor keys (layers_N) load through the filter
    converted = checkpoint_filter_fn(theirs.state_dict(), ours)
    assert all(torch.equal(converted[k], v) for k, v in ours.state_dict().items())


def test_classifier_weights_load_into_a_truncated_feature_extractor(timm_small):
    reference, path = timm_small
    ours = create_model("swin_tiny_patch2_window4_32", checkpoint=path, features_only=True, out_indices=(0, 1))
    x = images(2, 3, 32, 32, seed=20)
    with torch.no_grad():
        maps = ours.eval()(x)
        expected = reference.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert len(ours.layers) == 2 and not hasattr(ours, "norm")
    assert ours.feature_info.module_name() == ["layers.0", "layers.1"] and ours.feature_info.reduction() == [2, 4]
    assert [tuple(m.shape) for m in maps] == [(2, 48, 16, 16), (2, 96, 8, 8)]
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="out_indices"):
        create_model("swin_tiny_patch2_window4_32", features_only=True, out_indices=(3,))


def test_bias_cache_follows_the_table_and_dtype():
    torch.manual_seed(20)
    model = create_model("swin_tiny_patch2_window4_32", num_classes=10).eval()
    x = images(2, 3, 32, 32, seed=21)
    with torch.no_grad():
        before = model(x)
        for name, param in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.normal_(std=1.0)
        after = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    fresh = model(x)  # with autograd: nothing cached
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, fresh.detach(), atol=1e-5, rtol=1e-5)
    assert low.dtype == torch.bfloat16
    assert (low.float() - after).abs().max() < 0.05 * after.abs().max()


def test_bad_inputs_raise_one_clear_error_each():
    model = create_model("swin_tiny_patch2_window4_32")
    with pytest.raises(ValueError, match="3-channel images, got 1 channels"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than one 2×2 patch"):
        model(torch.zeros(1, 3, 0, 32))
    assert model.forward_features(torch.zeros(1, 3, 1, 32)).shape == (1, 1, 4, 192)  # padded to one patch, as timm's
    with pytest.raises(ValueError, match=r"Tensor\[B, C, H, W\]"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="global_pool"):
        create_model("swin_tiny_patch2_window4_32", global_pool="token")
    with pytest.raises(ValueError, match="one entry per stage"):
        SwinTransformer(depths=(2, 2), num_heads=(3,))


def test_reset_classifier_pooling_and_in_chans(timm_small):
    _, path = timm_small
    model = create_model("swin_tiny_patch2_window4_32", num_classes=7).eval()
    assert model.get_classifier() is model.head.fc and model.head.fc.out_features == 7
    x = images(2, 3, 32, 32, seed=22)
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0, global_pool="max")
        torch.testing.assert_close(model(x), features.amax(dim=(1, 2)))
        model.reset_classifier(5, global_pool="")
        assert model(x).shape == (2, 4, 4, 5) and model.num_classes == 5 and model.global_pool == ""
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, global_pool="token")
    grey = create_model("swin_tiny_patch2_window4_32", checkpoint=path, in_chans=1, num_classes=3)
    full = create_model("swin_tiny_patch2_window4_32", checkpoint=path, num_classes=10)
    torch.testing.assert_close(grey.patch_embed.proj.weight, full.patch_embed.proj.weight.sum(1, keepdim=True))
    assert grey.head.fc.out_features == 3


def test_training_after_inference_mode_at_a_new_size():
    """Window plans first made under inference_mode still serve autograd (it saves their indices)."""
    torch.manual_seed(23)
    model = create_model("swin_tiny_patch2_window4_32", num_classes=10)
    x = images(2, 3, 40, 44, seed=24)  # a size no other test uses
    with torch.inference_mode():
        model.eval()(x)
    model.train()(x).logsumexp(-1).sum().backward()
    assert all(param.grad is not None and torch.isfinite(param.grad).all() for param in model.parameters())


def test_a_checkpoint_for_smaller_windows_is_interpolated(timm_small):
    """4×4-window weights into 6×6 windows (at 48×48 the maps are 24, 12, 6): the 7×7 tables become 11×11
    (BEiT's resampling), keeping the bias of offset 0."""
    reference, path = timm_small
    model = create_model("swin_tiny_patch2_window4_32", checkpoint=path, num_classes=10, img_size=48, window_size=6)
    table = "layers.0.blocks.1.attn.relative_position_bias_table"
    assert model.state_dict()[table].shape == (11 * 11, 3)
    torch.testing.assert_close(model.state_dict()[table].view(11, 11, 3)[5, 5],
                               reference.state_dict()[table].view(7, 7, 3)[3, 3])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(images(1, 3, 48, 48))).all()


def _timm_file_in_other_sizes(timm_small, **sizes):
    """The small timm Swin's saved file loaded into timm's model of other ``sizes`` (through timm's checkpoint filter)
    and into ours of the same sizes: (theirs, ours), in eval mode."""
    from timm.models.swin_transformer import checkpoint_filter_fn as timm_checkpoint_filter_fn

    reference, path = timm_small
    theirs = TimmSwinTransformer(num_classes=10, **{**SMALL_CONFIGS["swin_tiny_patch2_window4_32"], **sizes}).eval()
    theirs.load_state_dict(timm_checkpoint_filter_fn(reference.state_dict(), theirs))
    ours = create_model("swin_tiny_patch2_window4_32", checkpoint=path, num_classes=10, **sizes).eval()
    return theirs, ours


@pytest.mark.parametrize("img_size, window_size", [(48, 6), (16, 2), (64, 8)])
def test_a_checkpoint_for_other_windows_gets_timms_tables_and_logits(timm_small, img_size, window_size):
    theirs, ours = _timm_file_in_other_sizes(timm_small, img_size=img_size, window_size=window_size)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[key], atol=1e-6, rtol=1e-6, msg=key)
    x = images(2, 3, img_size, img_size, seed=25)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("img_size", [40, (24, 40), 20])
def test_a_checkpoint_at_an_img_size_whose_maps_pad_gets_timms_tables_and_logits_with_dynamic_img_size(timm_small,
                                                                                                      img_size):
    """img_size= at creation other than the file's, where a stage's map is no multiple of its window (40: stage 2's 5×5
    map in 4×4 windows; (24, 40): stage 2's 3×5 map, its window fitted to (3, 4), tables resampled; 20: 3×3 windows
    on stages 1 and 2): with dynamic_img_size=True (timm's order: roll, then pad) the tables and logits are timm's."""
    theirs, ours = _timm_file_in_other_sizes(timm_small, img_size=img_size, dynamic_img_size=True)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[key], atol=1e-6, rtol=1e-6, msg=key)
    x = images(2, 3, *((img_size, img_size) if isinstance(img_size, int) else img_size), seed=27)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("patch_size, img_size", [(4, 64), (1, 16)])
def test_a_checkpoint_for_another_patch_size_gets_timms_resampled_kernel_and_logits(timm_small, patch_size, img_size):
    """create_model('swin_tiny_patch2_window4_32', patch_size=4, checkpoint=timm_file) was refused ('shape
    mismatches: patch_embed.proj.weight (48, 3, 2, 2) vs model (48, 3, 4, 4)'), where timm's filter resamples the
    patch kernel. Sizes where the maps are those of the 32×32 model, so that the windows are too."""
    theirs, ours = _timm_file_in_other_sizes(timm_small, img_size=img_size, patch_size=patch_size)
    torch.testing.assert_close(ours.patch_embed.proj.weight, theirs.patch_embed.proj.weight)
    x = images(2, 3, img_size, img_size, seed=26)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_a_model_cast_to_bfloat16_runs_with_and_without_autograd():
    torch.manual_seed(0)
    model = create_model("swin_tiny_patch2_window4_32", num_classes=3).eval()
    reference = create_model("swin_tiny_patch2_window4_32", num_classes=3).eval()
    reference.load_state_dict(model.state_dict())
    model.to(torch.bfloat16)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        inference = model(x.bfloat16())
    trained = model(x.bfloat16())  # autograd on: the written-out attention with the shift mask
    trained.float().sum().backward()
    assert trained.dtype == torch.bfloat16 and model.head.fc.weight.grad is not None
    torch.testing.assert_close(trained.float(), inference.float(), atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(trained.float(), expected, atol=0.15, rtol=0.1)


# --- gradient checkpointing ---------------------------------------------------------------------

def test_grad_checkpointing_changes_neither_outputs_nor_gradients():
    torch.manual_seed(50)
    model = create_model("swin_tiny_patch2_window4_32", num_classes=5, drop_path_rate=0.3)
    assert_grad_checkpointing_changes_nothing(model, images(2, 3, 32, 32, seed=51))
    features = create_model("swin_tiny_patch2_window4_32", features_only=True, out_indices=(0, 1))
    assert_grad_checkpointing_changes_nothing(features, images(2, 3, 32, 32, seed=51))


def test_grad_checkpointing_gives_timms_outputs_and_gradients():
    torch.manual_seed(52)
    reference = randomise(TimmSwinTransformer(num_classes=10, drop_path_rate=0.0,
                                              **SMALL_CONFIGS["swin_tiny_patch2_window4_32"]), 53)
    ours = create_model("swin_tiny_patch2_window4_32", num_classes=10, drop_path_rate=0.0)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 32, 32, seed=54)
    out, grads, recomputed = checkpointed_step(ours, x, True)
    expected, expected_grads, expected_recomputed = checkpointed_step(reference, x, True)
    assert recomputed > 0 and expected_recomputed > 0
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], atol=1e-5, rtol=1e-4, msg=key)


# --- timm's pooling options ---------------------------------------------------------------------

@pytest.mark.parametrize("global_pool", ["avg", "max", "avgmax", "catavgmax", "", "fast", "fastavg", "fastmax",
                                         "fastavgmax", "fastcatavgmax", "AVGMAX"])
def test_every_timm_global_pool_at_create_model_and_reset_classifier_gives_timms_logits(global_pool):
    sizes = SMALL_CONFIGS["swin_tiny_patch2_window4_32"]
    torch.manual_seed(90)
    reference = randomise(TimmSwinTransformer(num_classes=10, global_pool=global_pool, **sizes), 91).eval()
    x = images(2, 3, 32, 32, seed=92)
    built, reset = assert_pool_built_and_reset_give_reference_outputs(reference, "swin_tiny_patch2_window4_32", 10,
                                                                      global_pool, x, atol=ATOL)
    for ours in (built, reset):
        assert ours.global_pool == global_pool.lower() and ours.head_hidden_size == reference.head_hidden_size
        assert ours.get_classifier().in_features == reference.get_classifier().in_features
    reference.reset_classifier(4)
    built.reset_classifier(4)
    assert built.global_pool == global_pool.lower() and built.head.fc.in_features == reference.head.fc.in_features


# --- forward_intermediates and prune_intermediate_layers ----------------------------------------

STAGE_INTERMEDIATES_CASES = [
    dict(),
    dict(indices=2, norm=True),
    dict(indices=[0, -1], norm=True, intermediates_only=True),
    dict(indices=[1], stop_early=True),
    dict(indices=[0, 1], stop_early=True, norm=True, intermediates_only=True),
]


def _timm_swin_twin(seed=93):
    torch.manual_seed(seed)
    reference = randomise(TimmSwinTransformer(num_classes=10, **SMALL_CONFIGS["swin_tiny_patch2_window4_32"]), seed)
    ours = create_model("swin_tiny_patch2_window4_32", num_classes=10)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("kwargs", STAGE_INTERMEDIATES_CASES)
def test_forward_intermediates_equal_timms(kwargs):
    ours, reference = _timm_swin_twin()
    x = images(2, 3, 32, 32, seed=94)
    with torch.no_grad():
        assert_same_outputs(ours.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs))
    # with autograd: the training path of the blocks
    assert_same_outputs(ours.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs))
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("indices, prune_norm, prune_head", [(1, False, True), (1, True, False), ([0, 1], False, False),
                                                             ([1], False, True)])
def test_prune_intermediate_layers_equals_timms(indices, prune_norm, prune_head):
    ours, reference = _timm_swin_twin()
    assert ours.prune_intermediate_layers(indices, prune_norm, prune_head) == \
        reference.prune_intermediate_layers(indices, prune_norm, prune_head)
    assert ours.num_features == reference.num_features and ours.head_hidden_size == reference.head_hidden_size
    x = images(2, 3, 32, 32, seed=95)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x))
        assert_same_outputs(ours.forward_intermediates(x, indices), reference.forward_intermediates(x, indices))
    assert ours.state_dict().keys() == reference.state_dict().keys()


# --- set_input_size -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(img_size=64),  # windows scaled with the grid: 8 (tables resampled from 7×7 to 15×15 offsets)
    dict(img_size=16),  # windows 2
    dict(img_size=(32, 48)),  # windows (4, 6)
    dict(img_size=48, window_size=6),
    dict(img_size=64, window_ratio=4),
    dict(img_size=32),  # nothing changes
    dict(img_size=64, patch_size=4),
])
def test_set_input_size_gives_timms_model_and_a_checkpoint_that_rebuilds_it(tmp_path, kwargs):

    ours, reference = _timm_swin_twin()
    ours.set_input_size(**kwargs)
    reference.set_input_size(**kwargs)
    assert ours.state_dict().keys() == reference.state_dict().keys() - {
        k for k in reference.state_dict() if k.endswith(("relative_position_index", "attn_mask"))}
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], atol=1e-6, rtol=1e-6, msg=key)
    assert [stage.blocks[0].window_size for stage in ours.layers] == \
        [stage.blocks[0].window_size for stage in reference.layers]
    assert ours.feature_info.reduction() == [info["reduction"] for info in reference.feature_info]
    x = images(2, 3, *reference.patch_embed.img_size, seed=96)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x), atol=1e-5, rtol=1e-5)
        assert_same_outputs(ours.forward_intermediates(x, [0, 2]), reference.forward_intermediates(x, [0, 2]))
    assert_rebuilds_from_its_checkpoint(ours, x, tmp_path)


def test_set_input_size_scales_from_the_build_time_window_and_refuses_what_it_cannot_do():
    ours, reference = _timm_swin_twin()
    for size in (64, 48, 32):  # each from the build-time window, as timm's
        ours.set_input_size(img_size=size)
        reference.set_input_size(img_size=size)
        assert [block.window_size for block in ours.layers[0].blocks] == \
            [block.window_size for block in reference.layers[0].blocks]
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    for kwargs, message in [(dict(window_size=[(4, 4), (4, 4), (2, 2)]), "one window for all stages"),
                            (dict(window_ratio=(2, 4, 4)), "one positive int")]:
        with pytest.raises(ValueError, match=message):
            ours.set_input_size(img_size=64, **kwargs)
    assert ours.patch_embed.img_size == (32, 32)
    assert all(torch.equal(v, before[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("features_only", [False, True])
def test_an_empty_batch_gives_empty_outputs_with_and_without_autograd(features_only):
    torch.manual_seed(50)
    model = create_model("swin_tiny_patch2_window4_32", features_only=features_only, num_classes=10).eval()
    x = images(0, 3, 32, 32)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out = model(x)
        shapes = [tuple(y.shape) for y in out] if features_only else tuple(out.shape)
        assert shapes == ([(0, 48, 16, 16), (0, 96, 8, 8), (0, 192, 4, 4)] if features_only else (0, 10)), grad


def test_a_table_for_a_non_square_window_is_refused_naming_the_file_and_key(tmp_path):
    """A timm Swin with 3×5 windows loaded into one with 4×4 windows failed inside the resampling with
    "shape '[2, 5, 5]' is invalid for input of size 90" (its rows, 5·9, were taken for a square window)."""
    sizes = dict(img_size=32, patch_size=2, embed_dim=24, depths=(2, 2), num_heads=(2, 2))
    path = tmp_path / "swin_window3x5.pth"
    torch.save(timm.create_model("swin_tiny_patch4_window7_224", window_size=(3, 5), **sizes).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"swin_window3x5.pth.*layers.0.blocks.0.attn.relative_position_bias_table "
                                              r"\(45, 2\) vs model \(49, 2\)"):
        create_model("swin_tiny_patch4_window7_224", window_size=4, checkpoint=path, **sizes)


@pytest.mark.parametrize("window_size", [0, (4, 0), -2])
def test_a_window_that_is_not_positive_is_refused_by_name(window_size):
    """window_size=0 built a model whose forward failed with ZeroDivisionError: division by zero."""
    with pytest.raises(ValueError, match=r"window_size must be positive"):
        create_model("swin_tiny_patch2_window4_32", window_size=window_size)
    with pytest.raises(ValueError, match=r"window_size must be positive"):
        create_model("swin_tiny_patch2_window4_32").set_input_size(window_size=window_size)


@pytest.mark.parametrize("arguments, message", [
    (dict(window_size="abc"), "window_size must be an integer or a sequence of 2 integers, got 'abc'"),
    (dict(window_size=[4, 4, 4]), "window_size must be an integer or a sequence of 2 integers, got [4, 4, 4]"),
    (dict(img_size=[32, "b"]), "img_size must be an integer or a sequence of 2 integers, got [32, 'b']"),
    (dict(depths=(2, "a"), num_heads=(3, 6)), "depths must be a sequence of integers, got (2, 'a')"),
    (dict(num_heads="abc"), "num_heads must be a sequence of integers, got 'abc'"),
])
def test_sequence_arguments_given_junk_are_refused_by_name(arguments, message):
    """window_size=abc and img_size=[32, "b"] (from --model-arg) failed with "invalid literal for int() with base 10:
    'a'", depths=(2, "a") with "unsupported operand type(s) for +: 'int' and 'str'", and window_size=[4, 4, 4] built a
    model with 4×4 windows, without a word."""
    with pytest.raises(ValueError, match=re.escape(f"SwinTransformer: {message}")):
        create_model("swin_tiny_patch2_window4_32", **arguments)


def test_the_feature_extractor_exempts_the_relative_position_tables_from_weight_decay():
    # the classifier lists them in no_weight_decay(), the feature extractor had no such hook: trained under a
    # detector, Swin's 12 relative position tables were weight-decayed
    from visionzoo.train.task import weight_decay_groups

    detector = create_model("fasterrcnn_swin_tiny_fpn", backbone_args=dict(embed_dim=24, num_heads=(1, 2, 4, 8)))
    tables = {name for name, _ in detector.named_parameters() if name.endswith("relative_position_bias_table")}
    assert len(tables) == 12
    decayed, exempt = weight_decay_groups(detector, 0.05)
    by_id = {id(param): name for name, param in detector.named_parameters()}
    assert tables <= {by_id[id(param)] for param in exempt["params"]}
    assert not tables & {by_id[id(param)] for param in decayed["params"]}
    features = create_model("swin_tiny_patch4_window7_224", features_only=True, out_indices=(0, 1))
    assert features.no_weight_decay() == {f"layers.{stage}.blocks.{block}.attn.relative_position_bias_table"
                                          for stage in (0, 1) for block in (0, 1)}


# --- dynamic_img_size ------------------------------------------------------------------------------

def _timm_dynamic_twin(timm_small, **kwargs):
    """timm's small Swin with dynamic_img_size=True and ours built from its file with the same arguments."""
    reference, path = timm_small
    theirs = TimmSwinTransformer(num_classes=10, **{**SMALL_CONFIGS["swin_tiny_patch2_window4_32"], **kwargs})
    theirs.load_state_dict(reference.state_dict(), strict=True)
    ours = create_model("swin_tiny_patch2_window4_32", checkpoint=path, num_classes=10, **kwargs)
    return ours.eval(), theirs.eval()


# 38: maps 19, 10, 5 (the shifted blocks pad, after their roll in timm); 24×40: stage 2's map (3×5) exceeds its
# build-time 4×4 window, which keeps no shift; 16: stage 2's map (2×2) is padded up to that window
DYNAMIC_SIZES = [(38, 38), (24, 40), (16, 16)]


@pytest.mark.parametrize("size", DYNAMIC_SIZES)
def test_dynamic_img_size_gives_timms_logits_and_maps_at_other_sizes(timm_small, size, tmp_path):
    """create_model(..., dynamic_img_size=True) was refused ('unexpected keyword argument'), where timm's Swin keeps
    the windows and shifts of its img_size and makes the shift masks for each input's size."""
    ours, theirs = _timm_dynamic_twin(timm_small, dynamic_img_size=True)
    assert ours.dynamic_img_size and ours.model_args["dynamic_img_size"] is True
    x = images(2, 3, *size, seed=98)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)
        assert_same_outputs(ours.forward_intermediates(x, [0, 2]), theirs.forward_intermediates(x, [0, 2]))
    torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)  # the autograd path
    features = create_model("swin_tiny_patch2_window4_32", features_only=True, dynamic_img_size=True).eval()
    features.load_state_dict(ours.state_dict(), strict=False)
    with torch.no_grad():
        assert_same_outputs(features(x), ours.forward_intermediates(x, intermediates_only=True))
    assert_rebuilds_from_its_checkpoint(ours, x, tmp_path)


@pytest.mark.parametrize("kwargs", [dict(img_size=48, window_size=6), dict(img_size=64), dict(img_size=16)])
def test_dynamic_img_size_after_set_input_size_gives_timms_logits(timm_small, kwargs):
    ours, theirs = _timm_dynamic_twin(timm_small, dynamic_img_size=True)
    ours.set_input_size(**kwargs)
    theirs.set_input_size(**kwargs)
    for size in DYNAMIC_SIZES[:2]:
        x = images(2, 3, *size, seed=99)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)


def test_without_dynamic_img_size_other_sizes_fit_the_windows_to_each_map(timm_small):
    """Our default takes any size too, fitting the windows to each map and padding before the roll (see the module
    docstring): at 38×38 that differs from timm's dynamic_img_size, which is why it is an option."""
    ours, theirs = _timm_dynamic_twin(timm_small, dynamic_img_size=True)
    default = create_model("swin_tiny_patch2_window4_32", checkpoint=timm_small[1], num_classes=10).eval()
    assert not default.dynamic_img_size
    x = images(2, 3, 38, 38, seed=98)
    with torch.no_grad():
        assert (default(x) - theirs(x)).abs().max() > 1e-3


def test_strict_img_size_is_timms():
    """strict_img_size was refused ('takes no argument'); as timm's, True takes img_size images only (that of
    set_input_size once called), and False is dynamic_img_size=True, which also overrides it."""
    strict = create_model("swin_tiny_patch2_window4_32", num_classes=10, strict_img_size=True).eval()
    with torch.no_grad():
        assert strict(images(1, 3, 32, 32)).shape == (1, 10)
        with pytest.raises(ValueError, match=r"built for 32×32 images, got 38×38; .*dynamic_img_size=True"):
            strict(images(1, 3, 38, 38))
        strict.set_input_size(img_size=48)
        assert strict(images(1, 3, 48, 48)).shape == (1, 10)
        with pytest.raises(ValueError, match=r"built for 48×48 images, got 32×32"):
            strict(images(1, 3, 32, 32))
    for kwargs in (dict(strict_img_size=False), dict(strict_img_size=True, dynamic_img_size=True)):
        model = create_model("swin_tiny_patch2_window4_32", num_classes=10, **kwargs)
        assert model.dynamic_img_size and not model.patch_embed.strict_img_size, kwargs
        assert all(block.fixed_shift is not None for stage in model.layers for block in stage.blocks)
    assert not create_model("swin_tiny_patch2_window4_32").patch_embed.strict_img_size  # our default: any size


def test_strict_img_size_false_gives_timms_logits(timm_small):
    ours, theirs = _timm_dynamic_twin(timm_small, strict_img_size=False)
    x = images(2, 3, 38, 38, seed=100)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)


# --- always_partition ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, sizes", [
    (dict(always_partition=True), [(32, 32)]),  # stage 2's 4×4 map: one window, shifted by 2 in every other block
    (dict(always_partition=True, window_size=8), [(32, 32)]),  # stage 2's 4×4 map padded to an 8×8 window
    (dict(always_partition=True, dynamic_img_size=True), DYNAMIC_SIZES),
])
def test_always_partition_gives_timms_windows_and_logits(tmp_path, kwargs, sizes):
    """always_partition=True (timm's: full windows and shifts even on maps no larger than a window) was refused by
    create_model ('takes no argument') and by set_input_size."""
    torch.manual_seed(101)
    config = {**SMALL_CONFIGS["swin_tiny_patch2_window4_32"], **kwargs}
    theirs = randomise(TimmSwinTransformer(num_classes=10, **config), 101).eval()
    path = tmp_path / "swin.pth"
    torch.save(theirs.state_dict(), path)
    ours = create_model("swin_tiny_patch2_window4_32", checkpoint=path, num_classes=10, **kwargs).eval()
    assert [[block.plan(*stage.output_resolution, torch.device("cpu")).shift for block in stage.blocks][:2]
            for stage in ours.layers] == [[block.shift_size for block in stage.blocks][:2] for stage in theirs.layers]
    for size in sizes:
        x = images(2, 3, *size, seed=102)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)
    assert_rebuilds_from_its_checkpoint(ours, images(2, 3, 32, 32, seed=103), tmp_path)


@pytest.mark.parametrize("kwargs", [
    dict(always_partition=True),
    dict(always_partition=True, img_size=48, window_size=8),
])
def test_set_input_size_always_partition_gives_timms_model(tmp_path, kwargs):
    ours, reference = _timm_swin_twin()
    ours.set_input_size(**kwargs)
    reference.set_input_size(**kwargs)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], atol=1e-6, rtol=1e-6, msg=key)
    x = images(2, 3, *reference.patch_embed.img_size, seed=104)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
    assert ours.model_args["always_partition"] is True
    assert_rebuilds_from_its_checkpoint(ours, x, tmp_path)
    ours.set_input_size(always_partition=False)
    reference.set_input_size(always_partition=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)


def test_output_fmt_names_the_layout_of_the_features():
    """timm's Swin and its feature extractors name their layout in output_fmt ('NHWC'), which code written for timm
    reads to know whether to permute; ours had none (AttributeError), and our feature maps are NCHW, not timm's NHWC."""
    with torch.device("meta"):
        model = create_model("swin_tiny_patch2_window4_32")
        features = create_model("swin_tiny_patch2_window4_32", features_only=True)
    assert model.output_fmt == timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).output_fmt == "NHWC"
    assert features.output_fmt == "NCHW"
    maps = create_model("swin_tiny_patch2_window4_32", features_only=True).eval()(images(1, 3, 32, 32))
    assert maps[0].shape == (1, 48, 16, 16)  # channels second
