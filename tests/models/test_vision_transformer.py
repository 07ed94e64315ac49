"""ViT against timm: sizes, checkpoints (.pth/.safetensors), logits at 224 and other sizes, pooling,
feature maps, the token interface used by masked patch prediction, and bad inputs."""

import re

import pytest
import timm
import torch
from model_helpers import (
    assert_export_runs_at_other_batch_sizes,
    assert_fx_traces,
    assert_grad_checkpointing_changes_nothing,
    assert_rebuilds_from_its_checkpoint,
    assert_same_outputs,
    assert_trace_runs_at_other_batch_sizes,
    checkpointed_step,
    count,
    images,
)
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from visionzoo.checkpoint import CheckpointError
from visionzoo.models import create_model, get_model_entry
from visionzoo.models.vision_transformer import VisionTransformer

TIMM_NAMES = (
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224",
    "vit_small_patch32_224", "vit_base_patch32_224", "vit_base_patch16_384",
)
SMALL_CONFIGS = {  # our small sizes, as timm VisionTransformer arguments
    "vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3),
    "vit_tiny_patch8_32": dict(img_size=32, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "vit_small_patch4_32": dict(img_size=32, patch_size=4, embed_dim=384, depth=6, num_heads=6),
    "vit_tiny_patch8_64": dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3),
    "vit_small_patch8_64": dict(img_size=64, patch_size=8, embed_dim=384, depth=6, num_heads=6),
}
ATOL = 1e-4



@pytest.fixture(scope="module")
def timm_tiny(tmp_path_factory):
    """timm's vit_tiny_patch16_224 with random weights (random biases and norms too), saved as .pth."""
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224").eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    path = tmp_path_factory.mktemp("timm") / "vit_tiny.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_parameter_counts_and_keys_equal_timm(name):
    with torch.device("meta"):
        ours, reference = create_model(name), timm.create_model(name)
    assert count(ours) == count(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_vit_small_count_is_the_issue_figure():
    with torch.device("meta"):
        assert count(create_model("vit_small_patch16_224")) == 22_050_664


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_small_configs_count_equals_timm_built_with_the_same_sizes(name):
    with torch.device("meta"):
        ours, reference = create_model(name, num_classes=10), TimmVisionTransformer(num_classes=10, **SMALL_CONFIGS[name])
    assert count(ours) == count(reference)
    size = SMALL_CONFIGS[name]["img_size"]
    assert ours.default_cfg["input_size"] == (3, size, size)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_default_cfg_and_weights_are_timms(name):
    with torch.device("meta"):
        cfg, expected = create_model(name).default_cfg, timm.create_model(name).pretrained_cfg
    assert get_model_entry(name).pretrained.hf_hub_id == expected["hf_hub_id"] == cfg["hf_hub_id"]
    for key in ("mean", "std", "input_size", "crop_pct", "interpolation", "first_conv", "classifier"):
        assert cfg[key] == expected[key], key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_gives_timm_logits(timm_tiny, tmp_path, suffix):
    reference, pth = timm_tiny
    path = pth
    if suffix == ".safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    ours = create_model("vit_tiny_patch16_224", checkpoint=path).eval()
    x = images(2, 3, 224, 224, seed=1)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
        torch.testing.assert_close(ours.forward_features(x), reference.forward_features(x), atol=ATOL, rtol=1e-5)
        tokens = ours.forward_features(x)
        torch.testing.assert_close(ours.forward_head(tokens, pre_logits=True),
                                   reference.forward_head(tokens, pre_logits=True), atol=ATOL, rtol=1e-5)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
    assert ours.num_features == reference.num_features == 192


def test_inference_in_token_chunks_equals_timm_fp32_and_bf16(timm_tiny, monkeypatch):
    import visionzoo.layers.block as block

    reference, path = timm_tiny
    ours = create_model("vit_tiny_patch16_224", checkpoint=path).eval()
    monkeypatch.setattr(block, "_MLP_CHUNK_ELEMENTS", 768 * 50)  # 394 tokens: 8 chunks
    x = images(2, 3, 224, 224, seed=2)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, expected = ours(x), reference(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=0.01, rtol=0.01)  # equal here
    with torch.enable_grad():  # the training path (autograd on) is not chunked and matches too
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)


def test_where_freed_memory_is_kept_the_mlp_runs_in_chunks_of_32_mib(monkeypatch):
    """The MLP's 2^21-element chunks spare page faults that glibc's default allocator charges for large buffers;
    after visionzoo.utils.keep_freed_memory() there are none below 32 MiB, and ViT-S/16's whole batch-32 MLP in
    one product ran 87 img/s in bf16 against 76 in chunks: the chunks are then 32 MiB of the computing dtype."""
    import visionzoo.layers.block as block
    import visionzoo.utils as utils

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224").eval()  # hidden width 768
    rows = []
    model.blocks[0].mlp.fc1.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    x = images(12, 3, 224, 224, seed=0)  # 12 · 197 = 2,364 tokens, 1.8 M hidden elements
    monkeypatch.setattr(block, "_MLP_CHUNK_ELEMENTS", 768 * 500)  # chunks of 500 rows
    with torch.inference_mode():
        expected = model(x)
        assert rows == [500] * 4 + [364]
        monkeypatch.setattr(utils, "_freed_memory_kept", True)
        rows.clear()
        got = model(x)  # fp32: 32 MiB is 8 M elements, the whole batch at once
        assert rows == [2364]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert block._mlp_chunk_elements(x) == 2 ** 23
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert block._mlp_chunk_elements(x) == 2 ** 24


@pytest.mark.parametrize("name", ["vit_tiny_patch4_32", "deit_tiny_distilled_patch8_32"])
def test_a_trace_or_export_runs_at_other_batch_sizes(monkeypatch, name):
    """The inference path's token chunks were unrolled by torch.jit.trace: a ViT traced on 2 images ran the MLP on
    the traced number of rows only, and gave wrong logits (1.55 off at batch 16 for vit_tiny_patch16_224); and
    torch.export with a dynamic batch failed ('your code specialized it to be a constant (2)')."""
    import visionzoo.layers.block as block

    monkeypatch.setattr(block, "_MLP_CHUNK_ELEMENTS", 768 * 50)  # 65 tokens an image: 3 chunks for 2 images
    torch.manual_seed(0)
    model, x = create_model(name).eval(), images(5, 3, 32, 32, seed=1)
    assert_trace_runs_at_other_batch_sizes(model, x)
    assert_export_runs_at_other_batch_sizes(model, x)


@pytest.mark.parametrize("name, size, args", [
    ("vit_tiny_patch8_32", 32, {}),
    ("deit_tiny_distilled_patch8_32", 32, {}),
    ("vit_small_patch16_224", 224, {}),
    ("deit_small_distilled_patch16_224", 224, {}),
    ("vit_tiny_patch8_32", 44, dict(dynamic_img_size=True, dynamic_img_pad=True, global_pool="avg")),
])
def test_torch_fx_traces_and_torchvisions_feature_extractor_takes_it(name, size, args):
    """torch.fx.symbolic_trace, and with it torchvision's create_feature_extractor and get_graph_node_names, failed
    on the patch embedding's input check ('symbolically traced variables cannot be used as inputs to control flow'),
    where timm's ViT and DeiT trace; the traced graph gives the eager logits (at any size, with dynamic_img_size),
    its nodes the tokens of forward_intermediates and forward_features, and a wrong input is still refused."""
    torch.manual_seed(0)
    model, x = create_model(name, **args).eval(), images(2, 3, size, size, seed=1)
    with torch.no_grad():
        tokens, (block,) = model.forward_intermediates(x, [2], output_fmt="NLC")
        prefix = model.forward_intermediates(x, [2], output_fmt="NLC", return_prefix_tokens=True,
                                             intermediates_only=True)[0][1]
    assert_fx_traces(model, x, {"blocks.2": torch.cat([prefix, block], dim=1), "norm": tokens})
    traced = torch.fx.symbolic_trace(model)
    with pytest.raises(ValueError, match="takes 3-channel images, got 1"):
        traced(x[:, :1])
    features = create_model(name, features_only=True, out_indices=(1, 3), **args).eval()
    assert_fx_traces(features, x)


def test_a_traced_vits_attention_mask_input_is_used():
    """The traced graph keeps forward's attn_mask and is_causal inputs: a boolean mask is converted at each call, as
    in the eager model."""
    torch.manual_seed(0)
    model, x = create_model("vit_tiny_patch8_32").eval(), images(2, 3, 32, 32, seed=1)
    mask = (torch.rand(17, 17, generator=torch.Generator().manual_seed(2)) > 0.5) | torch.eye(17, dtype=torch.bool)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x, mask), model(x, mask), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(traced(x, is_causal=True), model(x, is_causal=True), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x, mask), model(x), atol=1e-3)


def test_bf16_autocast_inference_compiles_as_one_graph():
    """Under autocast without autograd the Linear cast cache and the attention's CPU probe broke the graph (26
    graphs for vit_tiny_patch16_224, fullgraph=True failed), where timm's ViT compiles whole."""
    torch.manual_seed(0)
    model, x = create_model("vit_tiny_patch4_32").eval(), images(2, 3, 32, 32, seed=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)
        torch._dynamo.reset()
        got = torch.compile(model, backend="eager", fullgraph=True)(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), atol=0.02, rtol=0.02)


def test_small_config_logits_equal_timm():
    torch.manual_seed(3)
    reference = TimmVisionTransformer(num_classes=10, **SMALL_CONFIGS["vit_tiny_patch4_32"]).eval()
    ours = create_model("vit_tiny_patch4_32", num_classes=10).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(4, 3, 32, 32, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)


def test_img_size_288_resamples_a_224_checkpoint_as_timm(tmp_path):
    torch.manual_seed(5)
    source = timm.create_model("vit_small_patch16_224")
    path = tmp_path / "vit_small.pth"
    torch.save(source.state_dict(), path)
    reference = timm.create_model("vit_small_patch16_224", img_size=288, pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path))).eval()
    ours = create_model("vit_small_patch16_224", checkpoint=path, img_size=288).eval()
    assert ours.pos_embed.shape == reference.pos_embed.shape == (1, 1 + 18 * 18, 384)
    torch.testing.assert_close(ours.pos_embed, reference.pos_embed)
    assert torch.equal(ours.pos_embed[:, 0], source.pos_embed[:, 0])  # the class row is kept
    x = images(1, 3, 288, 288, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="224×224|288×288"):
        ours(images(1, 3, 224, 224))


@pytest.mark.parametrize("img_size", [48, (40, 56)])
def test_distilled_img_size_resamples_the_grid_rows_and_keeps_both_token_rows_as_timm(tmp_path, img_size):
    """A distilled DeiT file built for 32×32 into a model for img_size: the class and distillation rows stay before
    the resampled grid, as timm's filter keeps them."""
    kwargs = SMALL_CONFIGS["vit_tiny_patch8_32"]
    torch.manual_seed(47)
    source = timm.create_model("deit_tiny_distilled_patch16_224", **kwargs)
    path = tmp_path / "deit_distilled.pth"
    torch.save(source.state_dict(), path)
    args = dict(kwargs, img_size=img_size)
    reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)), **args).eval()
    ours = create_model("deit_tiny_distilled_patch16_224", checkpoint=path, **args).eval()
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    assert ours.pos_embed.shape == reference.pos_embed.shape == (1, 2 + size[0] // 8 * size[1] // 8, 192)
    torch.testing.assert_close(ours.pos_embed, reference.pos_embed)
    assert torch.equal(ours.pos_embed[:, :2], source.pos_embed[:, :2])
    x = images(2, 3, *size, seed=48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("img_size", [100, (100, 70)])
def test_an_img_size_that_is_no_multiple_of_the_patch_takes_its_own_images_as_timm(timm_tiny, img_size):
    """create_model('vit_tiny_patch16_224', img_size=100) built a 6×6 grid and then refused every image, its own
    100×100 included ('image 100×100 is not a multiple of the 16×16 patch size'); timm's takes the images it is
    built for, its patch conv leaving out the last rows and columns that make no whole patch."""
    _, path = timm_tiny
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                  img_size=img_size).eval()
    ours = create_model("vit_tiny_patch16_224", checkpoint=path, img_size=img_size).eval()
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = images(2, 3, *size, seed=10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
        features = create_model("vit_tiny_patch16_224", checkpoint=path, img_size=img_size, features_only=True).eval()
        assert [tuple(m.shape) for m in features(x)] == [(2, 192, size[0] // 16, size[1] // 16)] * 3
    dynamic = create_model("vit_tiny_patch16_224", dynamic_img_size=True).eval()
    with pytest.raises(ValueError, match=re.escape("image 100×70 is not a multiple of the 16×16 patch size")):
        dynamic(images(1, 3, 100, 70))  # as timm's: a dynamic size must be a multiple (or dynamic_img_pad=True)


@pytest.mark.parametrize("patch_size, img_size", [(8, 64), ((8, 12), (64, 96)), (32, 224)])
def test_another_patch_size_resamples_the_checkpoints_patch_kernel_as_timm(timm_tiny, patch_size, img_size):
    """create_model('vit_tiny_patch16_224', patch_size=8, checkpoint=timm_file) was refused ('shape mismatches:
    patch_embed.proj.weight (192, 3, 16, 16) vs model (192, 3, 8, 8)'), where timm's filter resamples the kernel
    (FlexiViT's pseudo-inverse) with the position table; in_chans adapts the resampled kernel."""
    _, path = timm_tiny
    args = dict(patch_size=patch_size, img_size=img_size)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                                  **args).eval()
    ours = create_model("vit_tiny_patch16_224", checkpoint=path, **args).eval()
    torch.testing.assert_close(ours.patch_embed.proj.weight, reference.patch_embed.proj.weight)
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = images(2, 3, *size, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
    grey = create_model("vit_tiny_patch16_224", checkpoint=path, in_chans=1, **args).eval()
    torch.testing.assert_close(grey.patch_embed.proj.weight, reference.patch_embed.proj.weight.sum(1, keepdim=True))


@pytest.mark.parametrize("size", [(288, 288), (160, 224), (224, 224)])
def test_dynamic_img_size_equals_timm(timm_tiny, size):
    reference_224, path = timm_tiny
    reference = timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True).eval()
    reference.load_state_dict(reference_224.state_dict())
    ours = create_model("vit_tiny_patch16_224", checkpoint=path, dynamic_img_size=True).eval()
    x = images(2, 3, *size, seed=7)
    with torch.no_grad():
        got = ours(x)
        torch.testing.assert_close(got, reference(x), atol=ATOL, rtol=1e-5)
        assert ours.forward_features(x).shape == (2, 1 + size[0] // 16 * size[1] // 16, 192)


@pytest.mark.parametrize("distilled", [False, True])
@pytest.mark.parametrize("size", [(33, 31), (32, 45), (32, 32), (9, 8), (7, 9), (3, 5)])
def test_dynamic_img_pad_pads_sizes_that_are_no_multiple_of_the_patch_as_timm(size, distilled):
    """Sizes below one patch (7×9, 3×5 with 8×8 patches) were refused ('image 7×9 is smaller than one 8×8 patch'),
    where timm pads them to one patch as any other size."""
    name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    torch.manual_seed(44)
    kwargs = dict(SMALL_CONFIGS["vit_tiny_patch8_32"], dynamic_img_size=True, dynamic_img_pad=True)
    reference = timm.create_model(name, **kwargs).eval()
    ours = create_model(name, **kwargs).eval()
    ours.load_state_dict(reference.state_dict())
    x = images(2, 3, *size, seed=45)
    grid = (-(-size[0] // 8), -(-size[1] // 8))
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x), atol=ATOL)
        assert_same_outputs(ours.forward_features(x), reference.forward_features(x), atol=ATOL)
        maps = ours.forward_intermediates(x, indices=2, intermediates_only=True)
        assert_same_outputs(maps, reference.forward_intermediates(x, indices=2, intermediates_only=True), atol=ATOL)
    assert maps[0].shape == (2, 192, *grid)
    features = create_model(name, features_only=True, out_indices=(1,), **kwargs).eval()
    with torch.no_grad():
        assert features(x)[0].shape == (2, 192, *grid)


@pytest.mark.parametrize("distilled", [False, True])
def test_dynamic_img_pad_at_an_img_size_that_is_no_multiple_is_refused_at_build_naming_the_arguments(distilled):
    """img_size=36, patch 8 and dynamic_img_pad=True without dynamic_img_size built a model with a 4×4 position table
    whose own 36×36 images pad to 5×5 tokens: every forward was refused ('the model's position table is for a 4×4
    token grid, got 5×5; build it with img_size=...'), and timm's fails the same way ('The size of tensor a (26) must
    match the size of tensor b (17)'). The build is refused now, naming the arguments; dynamic_img_size takes it."""
    name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    sizes = dict(SMALL_CONFIGS["vit_tiny_patch8_32"], depth=1)
    message = re.escape("img_size 36×36 is no multiple of the 8×8 patch: with dynamic_img_pad=True its images pad to "
                        "a 5×5 token grid, but the position table is for 4×4 (timm's model fails on them); give an "
                        "img_size that is a multiple of the patch, or dynamic_img_size=True")
    with pytest.raises(ValueError, match=message):
        create_model(name, **dict(sizes, img_size=36), dynamic_img_pad=True)
    model = create_model(name, **sizes, dynamic_img_pad=True)
    with pytest.raises(ValueError, match=message):
        model.set_input_size(img_size=36)
    with pytest.raises(ValueError, match=re.escape("img_size 32×32 is no multiple of the 12×12 patch")):
        model.set_input_size(patch_size=12)
    assert model.patch_embed.img_size == (32, 32) and model.pos_embed.shape[1] == model.num_prefix_tokens + 16
    padded = create_model(name, **dict(sizes, img_size=36), dynamic_img_pad=True, dynamic_img_size=True).eval()
    with torch.no_grad():
        assert padded.forward_features(images(1, 3, 36, 36)).shape == (1, padded.num_prefix_tokens + 25, 192)


@pytest.mark.parametrize("distilled", [False, True])
def test_proj_drop_rate_drops_as_timms_in_training(distilled):
    name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    kwargs = dict(SMALL_CONFIGS["vit_tiny_patch8_32"], proj_drop_rate=0.3)
    torch.manual_seed(46)
    reference = timm.create_model(name, **kwargs).train()
    ours = create_model(name, **kwargs).train()
    ours.load_state_dict(reference.state_dict())
    assert [b.attn.proj_drop.p for b in ours.blocks] == [b.attn.proj_drop.p for b in reference.blocks] == [0.3] * 6
    assert [b.mlp.drop1.p for b in ours.blocks] == [b.mlp.drop2.p for b in ours.blocks] == [0.3] * 6
    x = images(2, 3, 32, 32, seed=47)
    torch.manual_seed(48)
    expected = reference(x)
    torch.manual_seed(48)
    got = ours(x)
    assert_same_outputs(got, expected, atol=ATOL)
    with torch.no_grad():
        assert not torch.allclose(ours.eval()(x), got, atol=1e-3)  # the dropout acted


@pytest.mark.parametrize("features_only", [False, True])
def test_feature_info_of_a_non_square_patch_has_timms_reduction(features_only):
    """A (8, 16) patch gave reduction 8 (its height) where timm's gives 16 (the larger side, as our Swin)."""
    kwargs = dict(img_size=32, patch_size=(8, 16), embed_dim=24, depth=3, num_heads=2, features_only=features_only)
    reference = timm.create_model("vit_tiny_patch16_224", **kwargs)
    ours = create_model("vit_tiny_patch16_224", **kwargs)
    assert ours.feature_info.reduction() == [info["reduction"] for info in reference.feature_info] == [16] * 3
    if not features_only:
        ours.set_input_size(patch_size=(4, 2))  # timm's keeps its feature_info; ours follows the new patch
        assert ours.feature_info.reduction() == [4] * 3


def test_global_average_pool_equals_timm():
    torch.manual_seed(8)
    reference = timm.create_model("vit_tiny_patch16_224", global_pool="avg", num_classes=5).eval()
    ours = create_model("vit_tiny_patch16_224", global_pool="avg", num_classes=5).eval()
    assert isinstance(ours.norm, torch.nn.Identity) and isinstance(ours.fc_norm, torch.nn.LayerNorm)
    with torch.no_grad():
        reference.fc_norm.weight.normal_()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 224, 224, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
        tokens = ours.forward_features(x)
        expected = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (192,), ours.fc_norm.weight,
                                                  ours.fc_norm.bias, eps=1e-6)
        torch.testing.assert_close(ours.forward_head(tokens, pre_logits=True), expected)


@pytest.mark.parametrize("global_pool", ["max", "avgmax"])
def test_max_and_avgmax_pools_equal_timm_built_and_reset(global_pool):
    torch.manual_seed(11)
    reference = TimmVisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3,
                                      global_pool=global_pool, num_classes=5).eval()
    ours = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3,
                             global_pool=global_pool, num_classes=5).eval()
    assert isinstance(ours.norm, torch.nn.Identity) and isinstance(ours.fc_norm, torch.nn.LayerNorm)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 32, 32, seed=12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
        ours.reset_classifier(0, "token")
        reference.reset_classifier(0, "token")
        ours.reset_classifier(0, global_pool)
        reference.reset_classifier(0, global_pool)
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("global_pool", ["map", "prr"])
@pytest.mark.parametrize("class_token", [True, False])
def test_attention_pools_equal_timm_built_reset_and_pruned(global_pool, class_token):
    sizes = dict(img_size=32, patch_size=8, embed_dim=96, depth=2, num_heads=3, class_token=class_token)
    torch.manual_seed(13)
    reference = TimmVisionTransformer(num_classes=5, global_pool=global_pool, **sizes).eval()
    with torch.no_grad():  # timm starts norms at 1 and biases at 0: random ones check each is applied
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    ours = VisionTransformer(num_classes=5, global_pool=global_pool, **sizes).eval()
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert (global_pool == "map") == any(key.startswith("attn_pool.") for key in ours.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert ours.head_hidden_size == reference.head_hidden_size == 96
    x = images(2, 3, 32, 32, seed=14)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
        tokens = ours.forward_features(x)
        torch.testing.assert_close(ours.forward_head(tokens, pre_logits=True),
                                   reference.forward_head(tokens, pre_logits=True), atol=1e-5, rtol=1e-5)
        for model in (ours, reference):
            model.reset_classifier(3, global_pool)  # kept
        ours.head.load_state_dict(reference.head.state_dict())
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
        for model in (ours, reference):
            model.reset_classifier(0, "avgmax")  # drops attn_pool
        # timm keeps prr's "prefix tokens in the pool" flag after the reset, so its avgmax then counts the class
        # token in; ours pools the patch tokens, as avgmax does everywhere else (a deliberate difference)
        reference.pool_include_prefix = False
        assert ours.attn_pool is None and ours.state_dict().keys() == reference.state_dict().keys()
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=rf"cannot add attention pooling \(global_pool='{global_pool}'\)"):
        ours.reset_classifier(0, global_pool)
    other = "prr" if global_pool == "map" else "map"
    with pytest.raises(ValueError, match=rf"cannot add attention pooling \(global_pool='{other}'\) to a model "
                                         rf"pooled by '{global_pool}'"):
        VisionTransformer(global_pool=global_pool, **sizes).reset_classifier(0, other)
    pruned, timm_pruned = VisionTransformer(global_pool=global_pool, **sizes), TimmVisionTransformer(
        global_pool=global_pool, **sizes)
    assert pruned.prune_intermediate_layers(1) == timm_pruned.prune_intermediate_layers(1)
    assert pruned.state_dict().keys() == timm_pruned.state_dict().keys()


def test_a_pool_type_given_to_pool_overrides_global_pool_as_timm():
    ours, reference = _timm_vit_twin("token")
    tokens = ours.forward_features(images(2, 3, 32, 32, seed=15)).detach()
    for pool_type in ("token", "avg", "max", "avgmax", ""):
        torch.testing.assert_close(ours.pool(tokens, pool_type=pool_type), reference.pool(tokens, pool_type=pool_type))
    torch.testing.assert_close(ours.pool(tokens), tokens[:, 0])
    with pytest.raises(ValueError, match="pool_type must be one of"):
        ours.pool(tokens, pool_type="map")


def test_no_class_token_and_no_pooling_equal_timm():
    torch.manual_seed(10)
    sizes = dict(SMALL_CONFIGS["vit_tiny_patch4_32"], depth=2)
    reference = TimmVisionTransformer(num_classes=3, global_pool="", class_token=False, **sizes).eval()
    ours = VisionTransformer(num_classes=3, global_pool="", class_token=False, **sizes).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 32, 32, seed=11)
    with torch.no_grad():
        got = ours(x)
        torch.testing.assert_close(got, reference(x), atol=ATOL, rtol=1e-5)
    assert got.shape == (2, 64, 3) and ours.num_prefix_tokens == 0
    with pytest.raises(ValueError, match="class token"):
        VisionTransformer(class_token=False, global_pool="token", **sizes)


def test_layer_scale_and_drop_path_follow_timm():
    torch.manual_seed(12)
    sizes = dict(SMALL_CONFIGS["vit_tiny_patch4_32"], depth=3)
    reference = TimmVisionTransformer(init_values=1e-2, drop_path_rate=0.2, num_classes=4, **sizes).eval()
    ours = VisionTransformer(init_values=1e-2, drop_path_rate=0.2, num_classes=4, **sizes).eval()
    assert ours.blocks[0].ls1.gamma[0].item() == pytest.approx(1e-2)
    rates = [b.drop_path1.drop_prob for b in ours.blocks[1:]]
    assert rates == [b.drop_path1.drop_prob for b in reference.blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2])
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 32, 32, seed=13)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)


def test_features_only_maps_equal_timm_intermediates(timm_tiny):
    reference, path = timm_tiny
    ours = create_model("vit_tiny_patch16_224", checkpoint=path, features_only=True, out_indices=(3, 7, 11)).eval()
    assert not hasattr(ours, "head") and not hasattr(ours, "norm")
    x = images(1, 3, 224, 224, seed=14)
    with torch.no_grad():
        maps = ours(x)
        expected = reference.forward_intermediates(x, indices=[3, 7, 11], intermediates_only=True)
    assert len(maps) == 3
    for got, want in zip(maps, expected, strict=True):
        assert got.shape == (1, 192, 14, 14)
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    assert ours.feature_info.channels() == [192] * 3
    assert ours.feature_info.reduction() == [16] * 3
    assert ours.feature_info.module_name() == ["blocks.3", "blocks.7", "blocks.11"]
    timm_features = timm.create_model("vit_tiny_patch16_224", features_only=True)
    last_three = create_model("vit_tiny_patch16_224", features_only=True)
    assert last_three.feature_info.module_name() == timm_features.feature_info.module_name()
    assert last_three.feature_info.reduction() == timm_features.feature_info.reduction()
    with pytest.raises(ValueError, match="out_indices"):
        create_model("vit_tiny_patch4_32", features_only=True, out_indices=(6,))



@pytest.mark.parametrize("distilled", [False, True])
@pytest.mark.parametrize("out_indices", [(0,), (0, 2), (-3,)])
def test_features_only_keeps_no_block_after_the_last_map_as_timm(out_indices, distilled):
    name = "deit_tiny_distilled_patch8_32" if distilled else "vit_tiny_patch8_32"
    timm_name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    torch.manual_seed(40)
    reference = timm.create_model(timm_name, features_only=True, out_indices=out_indices, **SMALL_CONFIGS[
        "vit_tiny_patch8_32"]).eval()
    ours = create_model(name, features_only=True, out_indices=out_indices).eval()
    expected = {k.removeprefix("model."): v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    assert count(ours) == count(reference)
    ours.load_state_dict({k.removeprefix("model."): v for k, v in reference.state_dict().items()})
    x = images(2, 3, 32, 32, seed=41)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x), atol=ATOL)
    ours.train()
    sum(m.square().mean() for m in ours(x)).backward()
    assert all(p.grad is not None for p in ours.parameters())


@pytest.mark.parametrize("distilled", [False, True])
def test_a_timm_feature_extractor_file_loads_and_gives_its_maps(tmp_path, distilled):
    name = "deit_tiny_distilled_patch8_32" if distilled else "vit_tiny_patch8_32"
    timm_name = "deit_tiny_distilled_patch16_224" if distilled else "vit_tiny_patch16_224"
    torch.manual_seed(42)
    reference = timm.create_model(timm_name, features_only=True, out_indices=(1, 3), **SMALL_CONFIGS[
        "vit_tiny_patch8_32"]).eval()
    path = tmp_path / "features.pth"
    torch.save(reference.state_dict(), path)  # timm's keys: model.cls_token, model.blocks.0..., no head
    ours = create_model(name, features_only=True, out_indices=(1, 3), checkpoint=path).eval()
    x = images(2, 3, 32, 32, seed=43)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x), atol=ATOL)

def test_forward_features_is_forward_tokens_of_embed_patches():
    torch.manual_seed(15)
    model = create_model("vit_tiny_patch4_32", num_classes=10, dynamic_img_size=True).eval()
    x = images(3, 3, 32, 32, seed=16)
    with torch.no_grad():
        tokens = model.embed_patches(x)
        assert tokens.shape == (3, 64, 192)
        torch.testing.assert_close(tokens, model.patch_embed.proj(x).flatten(2).transpose(1, 2))
        assert torch.equal(model.forward_tokens(tokens, (8, 8)), model.forward_features(x))
        # masking a token changes only what attends to it; the interface takes edited tokens
        edited = tokens.clone()
        edited[:, 5] = 0
        assert not torch.allclose(model.forward_tokens(edited, (8, 8)), model.forward_features(x))
        # another grid: the table is resampled exactly as forward_features does on a larger image
        wide = images(1, 3, 32, 48, seed=17)
        assert torch.equal(model.forward_tokens(model.embed_patches(wide), (8, 12)), model.forward_features(wide))
    assert model.num_prefix_tokens == 1 and model.patch_embed.patch_size == (4, 4)
    with pytest.raises(ValueError, match="tokens"):
        model.forward_tokens(tokens, (8, 7))
    fixed = create_model("vit_tiny_patch4_32")
    with pytest.raises(ValueError, match="dynamic_img_size"):
        fixed.forward_tokens(fixed.embed_patches(images(1, 3, 32, 32)).repeat(1, 2, 1), (8, 16))


def test_bad_inputs_raise_one_clear_error_each():
    model = create_model("vit_tiny_patch4_32")
    with pytest.raises(ValueError, match="3-channel images, got 1 channels"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than one 4×4 patch"):
        create_model("vit_tiny_patch4_32", dynamic_img_size=True)(torch.zeros(1, 3, 2, 32))
    with pytest.raises(ValueError, match="built for 32×32"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of the 4×4 patch"):
        create_model("vit_tiny_patch4_32", dynamic_img_size=True)(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="vit_tiny_patch4_32"):
        create_model("vit_tiny_patch4_23")
    with pytest.raises(ValueError, match=r"global_pool must be one of \('token', 'avg', 'max', 'avgmax', 'map', 'prr', ''\), "
                                         r"got 'catavgmax'"):
        create_model("vit_tiny_patch4_32", global_pool="catavgmax")


def test_init_follows_timm():
    torch.manual_seed(18)
    model = create_model("vit_small_patch8_64")
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.cls_token.abs().max().item() < 1e-5
    qkv = model.blocks[0].attn.qkv
    assert qkv.weight.std().item() == pytest.approx(0.02, rel=0.05) and torch.all(qkv.bias == 0)
    assert torch.all(model.blocks[0].norm1.weight == 1) and model.blocks[0].norm1.eps == 1e-6


def test_reset_classifier_and_in_chans_adaptation(timm_tiny):
    _, path = timm_tiny
    model = create_model("vit_tiny_patch16_224", checkpoint=path, num_classes=7)
    assert model.head.out_features == 7 and model.num_classes == 7
    model.reset_classifier(0, global_pool="avg")
    x = images(1, 3, 224, 224, seed=19)
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
    assert model.get_classifier() is model.head
    grey = create_model("vit_tiny_patch16_224", checkpoint=path, in_chans=1)
    full = create_model("vit_tiny_patch16_224", checkpoint=path)
    torch.testing.assert_close(grey.patch_embed.proj.weight, full.patch_embed.proj.weight.sum(1, keepdim=True))


# --- DeiT -------------------------------------------------------------------------------------

DEIT_NAMES = (
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224", "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224",
)


@pytest.mark.parametrize("name", DEIT_NAMES)
def test_deit_counts_keys_and_cfg_equal_timm(name):
    with torch.device("meta"):
        ours, reference = create_model(name), timm.create_model(name)
    assert count(ours) == count(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    for key in ("mean", "std", "input_size", "crop_pct", "hf_hub_id", "classifier"):
        assert ours.default_cfg[key] == reference.pretrained_cfg[key], key


def test_deit_small_distilled_count_is_the_issue_figure():
    with torch.device("meta"):
        assert count(create_model("deit_small_distilled_patch16_224")) == 22_436_432


@pytest.fixture(scope="module")
def timm_deit_distilled(tmp_path_factory):
    torch.manual_seed(7)
    reference = timm.create_model("deit_tiny_distilled_patch16_224").eval()
    with torch.no_grad():  # distinct heads, so that averaging them is tested
        reference.head_dist.weight.normal_(std=0.5)
        reference.head.bias.normal_()
    path = tmp_path_factory.mktemp("timm") / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    return reference, path


def test_distilled_checkpoint_gives_timm_logits_in_eval_and_both_heads_in_training(timm_deit_distilled):
    reference, path = timm_deit_distilled
    ours = create_model("deit_tiny_distilled_patch16_224", checkpoint=path).eval()
    x = images(2, 3, 224, 224, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=ATOL, rtol=1e-5)
        tokens = ours.forward_features(x)
        cls_logits, dist_logits = ours.head(tokens[:, 0]), ours.head_dist(tokens[:, 1])
        assert (cls_logits - dist_logits).abs().max() > 0.1
        torch.testing.assert_close(ours(x), (cls_logits + dist_logits) / 2)
        ours.train().set_distilled_training(True)
        reference.train().set_distilled_training(True)
        for got, expected in zip(ours(x), reference(x), strict=True):
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)
        ours.set_distilled_training(False)
        assert ours(x).shape == (2, 1000)
    reference.eval().set_distilled_training(False)


def test_distilled_dynamic_size_and_reset_classifier(timm_deit_distilled):
    reference, path = timm_deit_distilled
    ours = create_model("deit_tiny_distilled_patch16_224", checkpoint=path, dynamic_img_size=True).eval()
    theirs = timm.create_model("deit_tiny_distilled_patch16_224", dynamic_img_size=True).eval()
    theirs.load_state_dict(reference.state_dict())
    x = images(1, 3, 160, 192, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=ATOL, rtol=1e-5)
    ours.reset_classifier(7)
    assert ours.head.out_features == ours.head_dist.out_features == 7
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        ours.reset_classifier(7, global_pool="avg")
    with pytest.raises(ValueError, match="global_pool must be 'token'"):
        create_model("deit_tiny_distilled_patch8_32", global_pool="avg")


def test_distilled_new_num_classes_reinitialises_both_heads(timm_deit_distilled):
    _, path = timm_deit_distilled
    ours = create_model("deit_tiny_distilled_patch16_224", checkpoint=path, num_classes=5)
    assert ours.head.out_features == ours.head_dist.out_features == 5


def test_small_deit_pair_differs_only_by_the_distillation_token_and_head():
    with torch.device("meta"):
        plain, distilled = create_model("deit_tiny_patch8_32", num_classes=10), create_model(
            "deit_tiny_distilled_patch8_32", num_classes=10)
    extra = set(distilled.state_dict()) - set(plain.state_dict())
    assert extra == {"dist_token", "head_dist.weight", "head_dist.bias"}
    assert count(distilled) - count(plain) == 192 + 192 + 192 * 10 + 10  # token, table row, head


def test_a_vit_file_into_a_distilled_deit_or_back_is_refused_naming_file_and_keys(timm_tiny, timm_deit_distilled):
    from visionzoo.checkpoint import CheckpointError

    _, vit_path = timm_tiny
    _, deit_path = timm_deit_distilled
    with pytest.raises(CheckpointError, match=rf"{vit_path} does not fit model deit_tiny_distilled_patch16_224: "
                                              r"3 missing keys: dist_token, head_dist.bias, head_dist.weight"):
        create_model("deit_tiny_distilled_patch16_224", checkpoint=vit_path)
    with pytest.raises(CheckpointError, match=rf"{deit_path} does not fit model vit_tiny_patch16_224: .*"
                                              r"pos_embed \(1, 198, 192\) vs model \(1, 197, 192\)"):
        create_model("vit_tiny_patch16_224", checkpoint=deit_path)


# --- gradient checkpointing ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vit_tiny_patch8_32", "deit_tiny_distilled_patch8_32"])
def test_grad_checkpointing_changes_neither_outputs_nor_gradients(name):
    torch.manual_seed(40)
    model = create_model(name, num_classes=5, drop_path_rate=0.2, drop_rate=0.1)
    assert_grad_checkpointing_changes_nothing(model, images(2, 3, 32, 32, seed=41))
    features = create_model(name, features_only=True, out_indices=(1, 3))
    assert_grad_checkpointing_changes_nothing(features, images(2, 3, 32, 32, seed=41))


def test_grad_checkpointing_gives_timms_outputs_and_gradients():
    torch.manual_seed(42)
    reference = TimmVisionTransformer(num_classes=10, **SMALL_CONFIGS["vit_tiny_patch8_32"])
    ours = create_model("vit_tiny_patch8_32", num_classes=10)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(2, 3, 32, 32, seed=43)
    out, grads, recomputed = checkpointed_step(ours, x, True)
    expected, expected_grads, expected_recomputed = checkpointed_step(reference, x, True)
    assert recomputed > 0 and expected_recomputed > 0
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for key, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[key], atol=1e-5, rtol=1e-4, msg=key)


# --- forward_intermediates and prune_intermediate_layers ----------------------------------------

INTERMEDIATES_CASES = [
    dict(),
    dict(indices=2, norm=True),
    dict(indices=[0, -3, -1], stop_early=True, intermediates_only=True),
    dict(indices=[1, 2], stop_early=True, output_fmt="NLC"),
    dict(indices=3, return_prefix_tokens=True),
    dict(indices=[4], return_prefix_tokens=True, output_dict=True, norm=True),
    dict(indices=2, output_dict=True, intermediates_only=True),
]


def _timm_vit_twin(global_pool="token", distilled=False, seed=44):
    from timm.models.deit import VisionTransformerDistilled as TimmDistilled

    torch.manual_seed(seed)
    sizes = SMALL_CONFIGS["vit_tiny_patch8_32"]
    reference = (TimmDistilled if distilled else TimmVisionTransformer)(num_classes=10, global_pool=global_pool,
                                                                         **sizes)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    name = "deit_tiny_distilled_patch8_32" if distilled else "vit_tiny_patch8_32"
    ours = create_model(name, num_classes=10, global_pool=global_pool)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours.eval(), reference.eval()


@pytest.mark.parametrize("kwargs", INTERMEDIATES_CASES)
@pytest.mark.parametrize("global_pool, distilled", [("token", False), ("avg", False), ("token", True)])
def test_forward_intermediates_equal_timms(kwargs, global_pool, distilled):
    ours, reference = _timm_vit_twin(global_pool, distilled)
    x = images(2, 3, 32, 32, seed=45)
    with torch.no_grad():
        assert_same_outputs(ours.forward_intermediates(x, **kwargs), reference.forward_intermediates(x, **kwargs))
    with pytest.raises(ValueError, match="output_fmt"):
        ours.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("indices, prune_norm, prune_head", [(1, False, True), ([1, 3], True, True), (2, False, False)])
@pytest.mark.parametrize("global_pool, distilled", [("token", False), ("avg", False), ("token", True)])
def test_prune_intermediate_layers_equals_timms(indices, prune_norm, prune_head, global_pool, distilled):
    ours, reference = _timm_vit_twin(global_pool, distilled)
    assert ours.prune_intermediate_layers(indices, prune_norm, prune_head) == \
        reference.prune_intermediate_layers(indices, prune_norm, prune_head)
    assert len(ours.blocks) == len(reference.blocks)
    x = images(2, 3, 32, 32, seed=46)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x))
        assert_same_outputs(ours.forward_intermediates(x, indices), reference.forward_intermediates(x, indices))
    assert ours.state_dict().keys() == reference.state_dict().keys()


# --- attention masks (timm's attn_mask and is_causal) -------------------------------------------

def _masks(tokens: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(2, 1, tokens, tokens, generator=generator) > 0.4
    keep |= torch.eye(tokens, dtype=torch.bool)  # every query keeps a key
    return dict(boolean=dict(attn_mask=keep),
                additive=dict(attn_mask=torch.randn(1, 3, tokens, tokens, generator=generator)),
                causal=dict(is_causal=True))


@pytest.mark.parametrize("mask", ["boolean", "additive", "causal"])
@pytest.mark.parametrize("global_pool, distilled", [("token", False), ("avg", False), ("token", True)])
def test_attention_masks_give_timms_outputs_everywhere(mask, global_pool, distilled):
    ours, reference = _timm_vit_twin(global_pool, distilled)
    x = images(2, 3, 32, 32, seed=47)
    masking = _masks(ours.num_prefix_tokens + 16, seed=48)[mask]
    with torch.no_grad():
        assert not torch.allclose(ours(x, **masking), ours(x), atol=1e-3)  # the mask matters
        assert_same_outputs(ours(x, **masking), reference(x, **masking))
        assert_same_outputs(ours.forward_features(x, **masking), reference.forward_features(x, **masking))
        for kwargs in (dict(indices=[3, 1], norm=True), dict(indices=2, stop_early=True, output_fmt="NLC",
                                                             return_prefix_tokens=True, intermediates_only=True)):
            assert_same_outputs(ours.forward_intermediates(x, **kwargs, **masking),
                                reference.forward_intermediates(x, **kwargs, **masking))
        for kwargs in (dict(), dict(n=[0, 5], reshape=True, norm=True), dict(n=2, return_prefix_tokens=True)):
            if mask == "causal":  # timm's get_intermediate_layers takes attn_mask only
                break
            assert_same_outputs(ours.get_intermediate_layers(x, **kwargs, **masking),
                                reference.get_intermediate_layers(x, **kwargs, **masking))
    # training with gradient checkpointing: the blocks get the mask when recomputed too
    plain = ours(x, **masking)
    ours.set_grad_checkpointing()
    assert_same_outputs(ours(x, **masking), plain, atol=1e-6, rtol=1e-6)


# --- set_input_size -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(img_size=48), dict(img_size=(32, 48)), dict(patch_size=4),
                                    dict(img_size=64, patch_size=(16, 16)), dict(img_size=32)])
@pytest.mark.parametrize("distilled", [False, True])
def test_set_input_size_gives_timms_model_and_a_checkpoint_that_rebuilds_it(tmp_path, kwargs, distilled):

    ours, reference = _timm_vit_twin(distilled=distilled)
    ours.set_input_size(**kwargs)
    reference.set_input_size(**kwargs)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, atol=1e-6, rtol=1e-6, msg=key)
    size = reference.patch_embed.img_size
    x = images(2, 3, *size, seed=49)
    with torch.no_grad():
        assert_same_outputs(ours(x), reference(x), atol=1e-5, rtol=1e-5)
        assert_same_outputs(ours.forward_intermediates(x, [1, 3]), reference.forward_intermediates(x, [1, 3]))
    assert ours.patch_embed.grid_size == reference.patch_embed.grid_size
    assert ours.feature_info.reduction()[0] == reference.patch_embed.patch_size[0]
    if size != (32, 32):
        with pytest.raises(ValueError, match="built for"):
            ours(images(1, 3, 32, 32))
    assert_rebuilds_from_its_checkpoint(ours, x, tmp_path)


# --- timm's other attributes --------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [
    ("vit_tiny_patch16_224", {}),
    ("vit_tiny_patch16_224", dict(class_token=False, global_pool="avg")),
    ("deit_tiny_distilled_patch16_224", dict(in_chans=1)),
])
def test_timms_descriptive_attributes_are_timms(name, kwargs):
    with torch.device("meta"):
        ours, reference = create_model(name, **kwargs), timm.create_model(name, **kwargs)
    for attribute in ("has_class_token", "num_reg_tokens", "reg_token", "no_embed_class", "in_chans",
                      "num_prefix_tokens", "head_hidden_size", "num_features"):
        assert getattr(ours, attribute) == getattr(reference, attribute), attribute


def test_distilled_reset_classifier_takes_timms_empty_pool_and_keeps_both_tokens():
    ours, reference = _timm_vit_twin(distilled=True)
    ours.reset_classifier(0, "")
    reference.reset_classifier(0, "")
    x = images(2, 3, 32, 32, seed=50)
    with torch.no_grad():
        got = ours(x)
        assert_same_outputs(got, reference(x))
    assert got.shape == (2, 192) and ours.global_pool == "token"


def test_the_feature_extractor_names_its_layout_in_output_fmt():
    """As timm's feature extractor of a ViT (output_fmt 'NCHW': maps of the patch tokens); ours had no such
    attribute. The classifier has none, as timm's."""
    assert create_model("vit_tiny_patch8_32", features_only=True).output_fmt == \
        timm.create_model("vit_tiny_patch16_224", features_only=True).output_fmt == "NCHW"
    assert not hasattr(create_model("vit_tiny_patch8_32"), "output_fmt")


@pytest.mark.parametrize("file_pool, pool", [("token", "avg"), ("avg", "token")])
def test_asked_classes_take_a_file_whose_final_norm_sits_on_the_other_side_of_the_pooling(tmp_path, file_pool, pool):
    """create_model('vit_...', checkpoint=a class-token file, num_classes=10, global_pool='avg'), the usual fine-tuning
    with average pooling, was refused ('2 missing keys: fc_norm.bias, fc_norm.weight; 2 unexpected keys: norm.bias,
    norm.weight'): with avg pooling the final norm follows the pooling (fc_norm). timm's pretrained load takes the file
    when num_classes is asked, dropping its norm and keeping the model's fresh one; so does ours now, saying so in the
    log. Unasked it is still refused, as timm's strict load refuses it."""
    sizes = dict(img_size=32, patch_size=8, depth=2)
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", global_pool=file_pool, **sizes)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    path = tmp_path / "file.pth"
    torch.save(source.state_dict(), path)
    ours = create_model("vit_tiny_patch16_224", checkpoint=path, num_classes=10, global_pool=pool, **sizes).eval()
    theirs = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                               num_classes=10, global_pool=pool, **sizes).eval()
    x = images(2, 3, 32, 32, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                                   theirs.forward_head(theirs.forward_features(x), pre_logits=True), atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="missing keys"):
        create_model("vit_tiny_patch16_224", checkpoint=path, global_pool=pool, **sizes)


@pytest.mark.parametrize("name", ["vit_tiny_patch8_32", "deit_tiny_distilled_patch8_32"])
def test_gradients_have_the_layout_of_their_parameters(name):
    """torchrun of a DeiT (`visionzoo train deit_tiny_distilled_patch8_32`) warned on every rank that "Grad strides do
    not match bucket view strides ... may impair performance": its class and distillation tokens got the gradient
    as a slice of their pair's, strided (384, 192, 1) where the parameter is (192, 192, 1)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1).train()
    logits = model(images(2, 1, 32, 32, seed=0))
    sum(output.sum() for output in (logits if isinstance(logits, tuple) else (logits,))).backward()
    strided = {key: (tuple(p.stride()), tuple(p.grad.stride())) for key, p in model.named_parameters()
               if p.grad is not None and p.grad.stride() != p.stride()}
    assert not strided


@pytest.mark.parametrize("name, size", [("vit_tiny_patch8_32", 32), ("deit_tiny_distilled_patch8_32", 32),
                                        ("resnet18", 32), ("convnext_atto", 32),
                                        ("swin_tiny_patch4_window7_224", 224)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_images_are_refused_in_the_same_line_by_every_family(name, size, dtype):
    """A ViT (DeiT too) given uint8 images, as PIL gives them through torch.from_numpy, ended in torch's "Input type
    (unsigned char) and bias type (float) should be the same", ConvNeXt and Swin likewise, ResNet in "expected scalar
    type Byte but found Float": none named the input or what the model takes."""
    from visionzoo.models import create_model

    model = create_model(name, num_classes=3).eval()
    x = torch.zeros(1, 3, size, size, dtype=dtype)
    with torch.no_grad(), pytest.raises(ValueError) as error:
        model(x)
    assert str(error.value) == (f"the model takes floating-point images, got dtype {dtype}; scale uint8 pixels to "
                                "[0, 1] (x / 255), then normalise them with the mean and std in model.pretrained_cfg")


def test_a_file_of_timms_feature_extractor_loads_into_ours_and_gives_its_maps(tmp_path):
    """timm's ``features_only`` ViT keeps the network as ``model``: its file's keys all carry that prefix, which
    the registry's loading takes off (``without_wrapper_prefix``) before the ViT's checkpoint filter."""
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", img_size=32, features_only=True, out_indices=(11,)).eval()
    assert all(key.startswith("model.") for key in reference.state_dict())
    path = tmp_path / "features.safetensors"
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, path)
    ours = create_model("vit_tiny_patch16_224", img_size=32, checkpoint=path, features_only=True,
                        out_indices=(11,)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], reference(x)[0], atol=1e-5, rtol=1e-5)
