"""Shared layers against timm's: attention, MLP, position embeddings (resampling, sin-cos), patch embedding, DropPath."""

import re

import numpy as np
import pytest
import timm.layers
import torch

from visionzoo.layers import (
    Attention,
    DropPath,
    FeatureInfo,
    Mlp,
    PatchEmbed,
    drop_path,
    drop_path_rates,
    feature_take_indices,
    positive_pair,
    resample_abs_pos_embed,
    scaled_dot_product_attention,
    sincos_pos_embed_2d,
    taken_in_order,
)
from visionzoo.layers import attention as attention_module
from visionzoo.layers.patch_embed import _pair


def test_positive_pair_gives_python_int_sides_and_refuses_a_side_below_one_naming_it():
    """A public helper of the layers: the ViT resamples its patch embedding with it, as PatchEmbed does."""
    assert positive_pair(np.int64(4), "patch_size") == (4, 4)
    assert positive_pair((16, np.int32(8)), "img_size") == (16, 8)
    assert all(type(side) is int for side in positive_pair((np.int64(2), 3), "img_size"))
    with pytest.raises(ValueError, match=re.escape("img_size must be positive, got (8, 0)")):
        positive_pair((8, 0), "img_size")


def test_attention_equals_timm_attention_with_the_same_weights():
    torch.manual_seed(0)
    reference = timm.layers.Attention(64, num_heads=4, qkv_bias=True).eval()
    ours = Attention(64, num_heads=4, qkv_bias=True).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(3, 17, 64)
    torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=64, num_heads=0), "num_heads must be positive, got 0"),
    (dict(dim=0, num_heads=4), "dim must be positive, got 0"),
    (dict(dim=64, num_heads=4, head_dim=0), "head_dim must be positive, got 0"),
])
def test_attention_refuses_sizes_that_are_not_positive_by_name(kwargs, message):
    """num_heads=0 failed with ZeroDivisionError: integer modulo by zero, dim=0 with '0.0 cannot be raised
    to a negative power' (a ViT built with num_heads=0 or embed_dim=0)."""
    with pytest.raises(ValueError, match=message):
        Attention(**kwargs)


def test_attention_bias_is_added_to_the_logits():
    torch.manual_seed(1)
    attention = Attention(32, num_heads=2).eval()
    x = torch.randn(2, 5, 32)
    bias = torch.randn(2, 5, 5)
    q, k, v = attention.qkv(x).reshape(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-2, -1)) * 16 ** -0.5 + bias).softmax(-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(attention(x, attn_bias=bias), expected, atol=1e-5, rtol=1e-5)


@pytest.fixture
def native_bf16_cpu(monkeypatch):
    """The written-out product is taken only where bf16 is native; these tests check it on any CPU."""
    monkeypatch.setattr(attention_module, "native_bf16", lambda device: True)


@pytest.mark.parametrize("case", ["plain", "bias", "causal"])
def test_written_out_attention_in_bf16_agrees_with_the_fused_kernels(case, native_bf16_cpu):
    torch.manual_seed(2)
    q, k, v = (torch.randn(4, 3, 17, 32, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    bias = torch.randn(3, 17, 17) if case == "bias" else None
    causal = case == "causal"
    ours = scaled_dot_product_attention(q, k, v, bias, causal)  # 17 keys: written out
    grads = torch.autograd.grad(ours.float().square().sum(), (q, k, v))
    fused = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=None if bias is None else bias.to(torch.bfloat16), is_causal=causal)
    fused_grads = torch.autograd.grad(fused.float().square().sum(), (q, k, v))
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), fused.float(), atol=3e-2, rtol=3e-2)
    for mine, theirs in zip(grads, fused_grads):
        torch.testing.assert_close(mine.float(), theirs.float(), atol=0.1, rtol=5e-2)
    if causal:  # the first query sees only the first key
        torch.testing.assert_close(ours[:, :, 0].float(), v[:, :, 0].float(), atol=0, rtol=0)


def test_fp32_and_long_sequences_take_the_fused_kernels_unchanged():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, 9, 16) for _ in range(3))
    assert torch.equal(scaled_dot_product_attention(q, k, v, is_causal=True),
                       torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    keys = attention_module.EXPLICIT_MAX_KEYS + 1
    q, k, v = (torch.randn(1, 2, keys, 16, dtype=torch.bfloat16) for _ in range(3))
    assert not attention_module.writes_out(q, k)
    assert torch.equal(scaled_dot_product_attention(q, k, v),
                       torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_short_sequences_with_a_large_attention_matrix_take_the_fused_kernels(native_bf16_cpu):
    torch.manual_seed(5)
    q = torch.randn(64, 8, 160, 8, dtype=torch.bfloat16)  # 160 queries over 64 keys: float32 logits of 20 MiB
    k = v = torch.randn(64, 8, 64, 8, dtype=torch.bfloat16)
    assert 4 * 64 * 8 * 160 * 64 > attention_module.EXPLICIT_MAX_LOGITS_BYTES
    assert attention_module.writes_out(q[:4], k[:4])  # the same sequences at batch 4: 1.25 MiB
    assert not attention_module.writes_out(q, k)
    assert not attention_module.writes_out(q[:4].float(), k[:4].float())  # fp32: always fused
    assert torch.equal(scaled_dot_product_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_a_cpu_that_emulates_bf16_takes_the_fused_kernels(monkeypatch):
    q = k = torch.randn(2, 2, 8, 16, dtype=torch.bfloat16)
    monkeypatch.setattr(attention_module, "native_bf16", lambda device: True)
    assert attention_module.writes_out(q, k)
    monkeypatch.setattr(attention_module, "native_bf16", lambda device: False)
    assert not attention_module.writes_out(q, k)


def test_written_out_attention_drops_weights_only_when_asked(native_bf16_cpu):
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 2, 8, 16, dtype=torch.bfloat16) for _ in range(3))
    assert torch.equal(scaled_dot_product_attention(q, k, v), scaled_dot_product_attention(q, k, v))
    ones = torch.ones_like(v)
    dropped = scaled_dot_product_attention(q, k, ones, dropout_p=0.5)  # rows of weights · 1: 1 without dropout
    assert not torch.allclose(dropped.float(), torch.ones(()))
    assert abs(dropped.float().mean().item() - 1.0) < 0.15  # dropout rescales by 1 / (1 - p)


def test_mlp_equals_timm_mlp():
    torch.manual_seed(2)
    reference = timm.layers.Mlp(16, 48).eval()
    ours = Mlp(16, 48).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 16)
    torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("new_size", [(18, 18), (10, 14), (14, 14)])
def test_resample_abs_pos_embed_equals_timm(new_size):
    table = torch.randn(1, 1 + 14 * 14, 24, generator=torch.Generator().manual_seed(3))
    expected = timm.layers.resample_abs_pos_embed(table, new_size, (14, 14), num_prefix_tokens=1)
    got = resample_abs_pos_embed(table, new_size, (14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got[:, :1], table[:, :1])


def test_resample_refuses_a_table_that_does_not_fit_the_grid():
    with pytest.raises(ValueError, match="does not fit"):
        resample_abs_pos_embed(torch.zeros(1, 1 + 50, 8), (4, 4), (7, 7))


def test_sincos_positions():
    table = sincos_pos_embed_2d((3, 5), 16)
    assert table.shape == (15, 16) and table.dtype == torch.float32
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert torch.equal(table[1, :8], table[0, :8]) and not torch.equal(table[1, 8:], table[0, 8:])  # same row
    assert torch.equal(table[5, 8:], table[0, 8:]) and not torch.equal(table[5, :8], table[0, :8])  # same column
    assert torch.cdist(table, table).add(torch.eye(15)).min() > 0.1  # every position distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d((2, 2), 10)


def test_sincos_positions_equal_timms_up_to_its_channel_order():
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    ours = sincos_pos_embed_2d((4, 6), 32)
    sin_row, cos_row, sin_col, cos_col = ours.chunk(4, dim=1)
    torch.testing.assert_close(torch.cat([sin_row, sin_col, cos_row, cos_col], dim=1),
                               build_sincos2d_pos_embed([4, 6], 32), rtol=0, atol=1e-6)


def test_patch_embed_errors_name_the_problem():
    embed = PatchEmbed(img_size=32, patch_size=4, in_chans=3, embed_dim=8)
    assert embed(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 8)
    with pytest.raises(ValueError, match="3-channel images, got 1 channels"):
        embed(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than one 4×4 patch"):
        PatchEmbed(None, 4, 3, 8)(torch.zeros(1, 3, 3, 8))
    with pytest.raises(ValueError, match="built for 32×32"):
        embed(torch.zeros(1, 3, 36, 36))


def test_check_input_takes_what_forward_takes():
    """Once the checks moved into one function for torch.fx, check_input of a padding embedding refused an image that
    is no multiple of the patch ("30×30 is not a multiple of the 4×4 patch size"), which its forward pads and takes."""
    padding = PatchEmbed(None, 4, 3, 8, pad=True)
    assert padding(torch.zeros(1, 3, 30, 30)).shape == (1, 64, 8)
    padding.check_input(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="30×30 is not a multiple of the 4×4 patch size"):
        PatchEmbed(None, 4, 3, 8).check_input(torch.zeros(1, 3, 30, 30))


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_size=0), r"patch_size must be positive, got \(0, 0\)"),
    (dict(patch_size=(4, -1)), r"patch_size must be positive, got \(4, -1\)"),
    (dict(img_size=0), r"img_size must be positive, got \(0, 0\)"),
])
def test_patch_embed_refuses_sizes_that_are_not_positive_by_name(kwargs, message):
    """patch_size=0 failed with ZeroDivisionError: integer division or modulo by zero."""
    with pytest.raises(ValueError, match=message):
        PatchEmbed(**{"img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 8, **kwargs})
    with pytest.raises(ValueError, match="must be positive"):
        PatchEmbed(32, 4, 3, 8).set_input_size(**kwargs)


def test_patch_embed_pads_right_and_bottom_when_asked():
    embed = PatchEmbed(None, 4, 3, 8, output_fmt="NHWC", pad=True)
    x = torch.randn(1, 3, 9, 6)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3))
    out = embed(x)
    assert out.shape == (1, 3, 2, 8)
    torch.testing.assert_close(out, embed.proj(padded).permute(0, 2, 3, 1))


def test_drop_path_keeps_the_expectation_and_drops_whole_samples():
    torch.manual_seed(4)
    layer = DropPath(0.25).train()
    out = layer(torch.ones(20000, 3))
    per_sample = out[:, 0]
    assert per_sample.unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert torch.equal(out[:, 0], out[:, 2])
    assert abs(per_sample.mean().item() - 1.0) < 0.02
    assert torch.equal(layer.eval()(torch.ones(5, 3)), torch.ones(5, 3))


def test_drop_path_rates_rise_linearly_over_all_blocks():
    rates = drop_path_rates(0.3, [2, 1, 1])
    assert [len(stage) for stage in rates] == [2, 1, 1]
    flat = [r for stage in rates for r in stage]
    assert flat == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_group_norm_equals_torch_on_channels_last_inputs_and_gradients():
    from visionzoo.layers.norm import GroupNorm

    torch.manual_seed(0)
    ours, reference = GroupNorm(4, 8, eps=1e-6), torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(ours.weight)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    out = ours(a)
    torch.testing.assert_close(out, reference(b))
    (out * upstream).sum().backward()
    (reference(b) * upstream).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(ours.weight.grad, torch.autograd.grad((reference(b) * upstream).sum(), reference.weight)[0])


def test_group_norm_without_autograd_keeps_a_channels_last_input_channels_last():
    """Inference copied every norm's channels-last input to the contiguous layout (12% of a 256 px VQGAN
    reconstruction), and its output then took the next convolution off its fastest layout."""
    from visionzoo.layers.norm import GroupNorm

    torch.manual_seed(0)
    ours, reference = GroupNorm(4, 8, eps=1e-6), torch.nn.GroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(ours.weight)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, reference(x))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert ours(x).is_contiguous()  # with autograd: the contiguous layout its backward needs


def test_feature_take_indices_follows_timm():
    from timm.models._features import feature_take_indices as timm_feature_take_indices

    for count, indices in [(4, 2), (4, (0, -1)), (5, [-3, -2]), (4, (2, 1)), (4, [1, -3, 3, 1]), (12, [-1, 0, 0])]:
        expected, last = timm_feature_take_indices(count, indices)
        assert feature_take_indices(count, indices) == tuple(expected)
        assert max(taken_in_order(feature_take_indices(count, indices))) == last
    assert feature_take_indices(4, [1, -3, 3, 1]) == (1, 1, 3, 1)  # the order given, repeats kept
    assert taken_in_order((3, 1, 1)) == (1, 3)  # what a model returns: each map once, in its order
    for bad in (0, 5, (), (4,), (-5,), (1, 4)):
        with pytest.raises(ValueError, match="out_indices"):
            feature_take_indices(4, bad)


def test_feature_info_accessors_take_timms_keys_and_index_lists():
    """feature_info.get_dicts(keys=["num_chs", "reduction"]) (how effdet and other timm necks read a backbone)
    raised "got an unexpected keyword argument 'keys'", and channels([0, 2]) "list indices must be integers"."""
    from timm.models._features import FeatureInfo as TimmFeatureInfo

    from visionzoo.models import create_model

    ours = create_model("resnet18", features_only=True, out_indices=(0, 2, 3)).feature_info
    reference = TimmFeatureInfo([dict(info) for info in ours.info], out_indices=ours.out_indices)
    keys = ["num_chs", "reduction"]
    assert ours.get_dicts(keys=keys) == reference.get_dicts(keys=keys) == [
        dict(num_chs=64, reduction=2), dict(num_chs=128, reduction=8), dict(num_chs=256, reduction=16)]
    for idx in (1, -1, [0, 2], (2, 1)):
        assert ours.get_dicts(keys=keys, idx=idx) == reference.get_dicts(keys=keys, idx=idx)
        assert ours.get_dicts(idx=idx) == reference.get_dicts(idx=idx)  # with each map's index, as timm's
        assert ours.channels(idx) == reference.channels(idx)
        assert ours.reduction(idx) == reference.reduction(idx)
        assert ours.module_name(idx) == reference.module_name(idx)
    assert ours.get_dicts() == [ours[i] for i in (0, 2, 3)] and ours.get_dicts()[0] is not ours[0]  # copies


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224", "vit_small_patch16_224"])
@pytest.mark.parametrize("out_indices", [(1, 2), (-1,), 2, (0, 3)])
def test_a_feature_extractors_feature_info_is_timms(name, out_indices):
    """timm's feature extractors describe every stage (``info``, ``len``, an int index) and name the maps returned in
    ``feature_info.out_indices``; the accessors without an index read those. Ours described the maps returned alone and
    had no out_indices, so the usual neck code ``[info.channels(i) for i in info.out_indices]`` failed with
    AttributeError, and ``channels(0)`` of resnet50's out_indices=(1, 2) gave 256 where timm's gives 64."""
    from visionzoo.models import create_model

    ours = create_model(name, features_only=True, out_indices=out_indices, device="meta").feature_info
    theirs = timm.create_model(name, features_only=True, out_indices=out_indices, device="meta").feature_info
    for info in theirs.info:  # our ResNet's stem activation has torchvision's name, relu
        info["module"] = "relu" if info["module"] == "act1" else info["module"]
    count = len(theirs)
    assert len(ours) == count and [dict(info) for info in ours.info] == theirs.info  # each with its index, as timm's
    assert [info["index"] for info in ours.info] == list(range(count))
    assert ours.out_indices == tuple(i % count for i in theirs.out_indices)
    for accessor in ("channels", "reduction", "module_name"):
        assert getattr(ours, accessor)() == getattr(theirs, accessor)()
        assert [getattr(ours, accessor)(i) for i in ours.out_indices] == getattr(theirs, accessor)()
        for idx in (0, -1, [0, count - 1]):
            assert getattr(ours, accessor)(idx) == getattr(theirs, accessor)(idx), (accessor, idx)
    assert ours.get_dicts(keys=["num_chs", "reduction"]) == theirs.get_dicts(keys=["num_chs", "reduction"])
    assert [ours[i]["num_chs"] for i in range(count)] == [theirs[i]["num_chs"] for i in range(count)]


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224", "vit_small_patch16_224"])
@pytest.mark.parametrize("out_indices", [3, (1, 2), (0, -1)])
def test_feature_info_from_other_is_timms(name, out_indices):
    """timm's FeatureInfo.from_other(out_indices) (a copy describing other returned maps, as its feature getters build
    theirs) did not exist here: AttributeError."""
    from visionzoo.models import create_model

    ours = create_model(name, features_only=True, out_indices=(1,), device="meta").feature_info
    theirs = timm.create_model(name, features_only=True, out_indices=(1,), device="meta").feature_info
    other, expected = ours.from_other(out_indices), theirs.from_other(out_indices)
    assert isinstance(other, FeatureInfo) and len(other) == len(expected)
    assert other.out_indices == tuple(i % len(expected) for i in expected.out_indices)  # resolved, as our extractors'
    assert other.channels() == expected.channels() and other.reduction() == expected.reduction()
    assert [info["index"] for info in other.info] == [info["index"] for info in expected.info]
    other[0]["num_chs"] = -1  # a deep copy, as timm's
    assert ours.out_indices == (1,) and ours[0]["num_chs"] == expected[0]["num_chs"]
    with pytest.raises(ValueError, match=r"out_indices=0 must be in 1\.\."):
        ours.from_other(0)


@pytest.mark.parametrize("name, unit", [("vit_tiny_patch8_32", "block"), ("swin_tiny_patch2_window4_32", "stage"),
                                        ("convnext_atto_32", "stage"), ("resnet18", "map")])
def test_bad_intermediate_indices_are_refused_naming_the_argument_given(name, unit):
    """forward_intermediates(x, indices=(7,)) and prune_intermediate_layers(indices=(9,)) were refused naming
    'out_indices', an argument neither takes."""
    from visionzoo.models import create_model

    model = create_model(name).eval()
    with pytest.raises(ValueError, match=re.escape(f"indices must be {unit} indices in")) as refused:
        model.forward_intermediates(torch.zeros(1, 3, 32, 32), indices=(9,))
    assert "out_indices" not in str(refused.value)
    with pytest.raises(ValueError, match=re.escape("indices=9 must be in 1..")) as refused:
        model.prune_intermediate_layers(indices=9)
    assert "out_indices" not in str(refused.value)
    with pytest.raises(ValueError, match=re.escape(f"out_indices must be {unit} indices in")):
        create_model(name, features_only=True, out_indices=(9,))


@pytest.mark.parametrize("bad", ["x", "12", (1.5,), (1, "a"), 2.0, True])
def test_out_indices_that_are_not_integers_are_refused_by_name(bad):
    """out_indices='x' (from --model-arg, for a ResNet's features_only) failed with "invalid literal for int() with
    base 10: 'x'", '12' was read as (1, 2) and (1.5,) as (1,), without a word."""
    from visionzoo.models import create_model

    with pytest.raises(ValueError, match=re.escape(f"out_indices must be an int (the last n maps) or a sequence of "
                                                   f"map indices, got {bad!r}")):
        create_model("resnet18", features_only=True, out_indices=bad)
    assert feature_take_indices(4, np.array([0, -1])) == (0, 3)  # a NumPy array of indices, as timm takes


@pytest.mark.parametrize("name", ["vit_tiny_patch8_32", "swin_tiny_patch2_window4_32"])
@pytest.mark.parametrize("rate", [1.5, -0.1])
def test_an_attention_dropout_rate_outside_0_1_is_refused_when_built(name, rate):
    """attn_drop_rate=1.5 or -0.1 built a model whose first training step failed ('dropout probability has to be
    between 0 and 1', or for -0.1 in a ViT 'flash_attention: Currently do not support dropout > 0'), where timm's
    refuses it when built."""
    from visionzoo.models import create_model

    with pytest.raises(ValueError, match=re.escape(f"attn_drop (the attention dropout rate) must be in [0, 1], got {rate}")):
        create_model(name, attn_drop_rate=rate)


@pytest.mark.parametrize(("name", "argument"), [
    ("vit_tiny_patch8_32", "drop_rate"), ("vit_tiny_patch8_32", "pos_drop_rate"), ("vit_tiny_patch8_32", "proj_drop_rate"),
    ("deit_tiny_distilled_patch8_32", "drop_rate"), ("swin_tiny_patch2_window4_32", "drop_rate"),
    ("swin_tiny_patch2_window4_32", "proj_drop_rate"), ("convnext_atto_32", "drop_rate"), ("resnet18", "drop_rate"),
    ("hipt_vit256_small", "proj_drop_rate"), ("vit4k_xs", "drop_rate"), ("hipt_4k", "drop_rate"),
])
@pytest.mark.parametrize("rate", [1.5, -0.1, float("nan")])
def test_a_dropout_rate_outside_0_1_is_refused_by_name(name, argument, rate):
    """drop_rate=1.5 was refused with torch's 'dropout probability has to be between 0 and 1, but got 1.5', which
    names none of a ViT's three dropout rates (a ResNet built the model and failed at its first forward); NaN
    was taken."""
    from visionzoo.models import create_model

    with pytest.raises(ValueError, match=re.escape(f"{argument} (a dropout probability) must be in [0, 1], got {rate}")):
        create_model(name, **{argument: rate})


@pytest.mark.parametrize("name", ["vit_tiny_patch8_32", "swin_tiny_patch2_window4_32", "convnext_atto_32"])
@pytest.mark.parametrize("mlp_ratio", [0.0, -1.0])
def test_an_mlp_ratio_that_leaves_no_hidden_width_is_refused(name, mlp_ratio):
    """mlp_ratio=0 built MLPs as wide as the tokens (ratio 1), without a word, and a negative one failed with
    'Trying to create tensor with negative dimension'."""
    from visionzoo.models import create_model

    with pytest.raises(ValueError, match=r"the MLP's hidden width must be at least 1, got -?\d+ \(a width times an mlp_ratio"):
        create_model(name, mlp_ratio=mlp_ratio)


def test_drop_path_of_probability_one_zeroes_the_branch_like_timm():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5)
    out = drop_path(x, 1.0, training=True)
    assert torch.equal(out, torch.zeros_like(x))
    assert torch.equal(out, timm.layers.drop_path(x, 1.0, training=True))


@pytest.mark.parametrize("name", ["vit_tiny_patch4_32", "convnext_atto", "swin_tiny_patch2_window4_32"])
def test_a_drop_path_rate_outside_0_1_is_refused_by_name(name):
    from visionzoo.models import create_model

    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.5"):
        create_model(name, drop_path_rate=1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # fused kernels; written out (17 keys)
def test_a_boolean_mask_keeps_torchs_meaning(dtype, native_bf16_cpu):
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 3, 17, 16, dtype=dtype) for _ in range(3))
    mask = torch.rand(17, 17) > 0.5
    mask[:, 0] = True  # every query keeps a key
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    tol = dict(atol=3e-2, rtol=3e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask).float(), expected, **tol)
    attention = Attention(32, num_heads=2).eval()
    x = torch.randn(1, 17, 32)
    additive = torch.zeros(17, 17).masked_fill(~mask, float("-inf"))
    with torch.no_grad():
        torch.testing.assert_close(attention(x, attn_bias=mask), attention(x, attn_bias=additive))


def test_timms_layer_names_import_from_visionzoo_layers():
    """LayerNorm2d and resample_patch_embed (timm.layers' names) and FrozenBatchNorm2d (torchvision.ops') were not
    in visionzoo.layers (the norms only in visionzoo.layers.norm, the resampling as resample_patch_kernel)."""
    import torchvision

    from visionzoo.layers import FrozenBatchNorm2d, LayerNorm2d, resample_patch_embed

    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6)
    ours, theirs = LayerNorm2d(8), timm.layers.LayerNorm2d(8)
    torch.testing.assert_close(ours(x), theirs(x))
    frozen, reference = FrozenBatchNorm2d(8), torchvision.ops.FrozenBatchNorm2d(8)
    reference.running_var.uniform_(0.5, 2.0)
    frozen.load_state_dict(reference.state_dict())
    torch.testing.assert_close(frozen(x), reference(x))
    assert resample_patch_embed.__name__ == "resample_patch_embed"


@pytest.mark.parametrize("new_size", [(8, 8), (32, 32), (14, 10)])
def test_patch_kernel_resampling_equals_timms_and_keeps_embeddings_of_resized_patches(new_size):
    from visionzoo.layers import resample_patch_embed

    torch.manual_seed(7)
    weight = torch.randn(8, 3, 16, 16)
    resampled = resample_patch_embed(weight, list(new_size), "bicubic", True, verbose=True)
    torch.testing.assert_close(resampled, timm.layers.resample_patch_embed(weight, list(new_size)))
    if new_size[0] >= 16:  # upsampling is invertible: a resized patch embeds as the original did
        patch = torch.randn(5, 3, 16, 16)
        resized = torch.nn.functional.interpolate(patch, size=new_size, mode="bicubic", antialias=True)
        torch.testing.assert_close(torch.einsum("bchw,ochw->bo", resized, resampled),
                                   torch.einsum("bchw,ochw->bo", patch, weight), atol=1e-3, rtol=1e-3)
    embed = PatchEmbed(64, 16, 3, 8)
    embed.set_input_size(img_size=(48, 64), patch_size=new_size)
    assert embed.proj.weight.shape == (8, 3, *new_size) and embed.proj.stride == new_size
    assert embed.grid_size == (48 // new_size[0], 64 // new_size[1])
    assert embed.num_patches == embed.grid_size[0] * embed.grid_size[1]


@pytest.mark.parametrize("old, new", [((7, 7), (3, 3)), ((7, 7), (14, 14)), ((4, 4), (6, 6)), ((7, 4), (5, 9)),
                                      ((7, 7), (1, 1)), ((1, 1), (4, 4))])
def test_relative_position_table_resampling_equals_timms(old, new):
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    from visionzoo.layers.pos_embed import resample_rel_pos_table

    torch.manual_seed(8)
    table = torch.randn((2 * old[0] - 1) * (2 * old[1] - 1), 3)
    shape = ((2 * new[0] - 1) * (2 * new[1] - 1), 3)
    resampled = resample_rel_pos_table(table, old, new)
    torch.testing.assert_close(resampled, resize_rel_pos_bias_table(table, new, shape, old_window_size=old),
                               atol=1e-6, rtol=1e-6)
    def offset_zero(t, window):
        return t.view(2 * window[0] - 1, 2 * window[1] - 1, 3)[window[0] - 1, window[1] - 1]

    torch.testing.assert_close(offset_zero(resampled, new), offset_zero(table, old))  # offset 0 keeps its bias


@pytest.mark.parametrize("drop_prob", [0.0, 0.3, 1.0])
def test_drop_path_takes_timms_scale_by_keep(drop_prob):
    """DropPath(0.2, scale_by_keep=False) and drop_path(x, 0.2, True, scale_by_keep=False), as timm users write them,
    failed with "got an unexpected keyword argument 'scale_by_keep'"."""
    x = torch.randn(64, 3, 5, generator=torch.Generator().manual_seed(0))
    for scale_by_keep in (True, False):
        torch.manual_seed(1)
        ours = drop_path(x, drop_prob, True, scale_by_keep=scale_by_keep)
        torch.manual_seed(1)
        assert torch.equal(ours, timm.layers.drop_path(x, drop_prob, True, scale_by_keep=scale_by_keep))
    if drop_prob == 0.3:
        torch.manual_seed(1)
        kept = DropPath(drop_prob, scale_by_keep=False).train()(x)
        assert set(torch.unique(kept / x).tolist()) == {0.0, 1.0}  # survivors unscaled
        assert DropPath(drop_prob, scale_by_keep=False).scale_by_keep is False


@pytest.mark.parametrize("kwargs", [dict(bias=(True, False)), dict(bias=(False, True), drop=(0.0, 0.5)),
                                    dict(norm_layer=torch.nn.LayerNorm, drop=(0.25, 0.0)), dict(use_conv=True),
                                    dict(use_conv=True, bias=(False, True), norm_layer=torch.nn.Identity)])
def test_mlp_takes_timms_per_layer_biases_and_rates_a_norm_and_convolutions(kwargs):
    """Mlp(16, 48, bias=(True, False)) gave fc2 a bias all the same (timm's checkpoint then lacked 'fc2.bias' and
    did not load), drop=(0.1, 0.2) failed with "'<' not supported between instances of 'tuple' and 'int'", and
    norm_layer=... or use_conv=True with "got an unexpected keyword argument"."""
    torch.manual_seed(2)
    reference = timm.layers.Mlp(16, 48, **kwargs).train()
    ours = Mlp(16, 48, **kwargs).train()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 16, 3, 5) if kwargs.get("use_conv") else torch.randn(4, 7, 16)
    torch.manual_seed(3)
    expected = reference(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours(x), expected)


@pytest.mark.parametrize("kwargs, size", [
    (dict(flatten=False), (24, 40)), (dict(norm_layer=torch.nn.LayerNorm), (24, 40)),
    (dict(output_fmt="NHWC", flatten=False), (24, 40)),
    (dict(strict_img_size=False, dynamic_img_pad=True), (30, 44)), (dict(dynamic_img_pad=True, output_fmt="NHWC"), (24, 40)),
    (dict(img_size=None, dynamic_img_pad=True, flatten=False), (17, 9)), (dict(output_fmt="NCL"), (24, 40)),
])
def test_patch_embed_takes_timms_flatten_and_dynamic_img_pad(kwargs, size):
    """PatchEmbed(..., flatten=False) and PatchEmbed(..., dynamic_img_pad=True), as timm users build it (timm's ViT
    passes dynamic_img_pad), failed with "got an unexpected keyword argument"; output_fmt=None and "NCL" were
    refused."""
    base = dict(img_size=(24, 40), patch_size=8, in_chans=3, embed_dim=6)
    torch.manual_seed(0)
    reference = timm.layers.PatchEmbed(**{**base, **kwargs})
    ours = PatchEmbed(**{**base, **kwargs})
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, *size)
    expected = reference(x)
    assert torch.equal(ours(x), expected)
    assert ours.flatten == reference.flatten and ours.dynamic_img_pad == reference.dynamic_img_pad
    positional = PatchEmbed(*(base[k] for k in ("img_size", "patch_size", "in_chans", "embed_dim")), None, False)
    assert positional.flatten is False and positional(torch.zeros(1, 3, 24, 40)).shape == (1, 6, 3, 5)  # timm's order


@pytest.mark.parametrize("dynamic_img_pad", [False, True])
def test_patch_embed_has_timms_feature_size_methods(dynamic_img_pad):
    """embed.feat_ratio() and embed.dynamic_feat_size((H, W)), which timm's ViT code calls on its patch embedding,
    failed with "'PatchEmbed' object has no attribute"."""
    kwargs = dict(img_size=None, patch_size=(8, 6), embed_dim=4, dynamic_img_pad=dynamic_img_pad)
    ours, reference = PatchEmbed(**kwargs), timm.layers.PatchEmbed(**kwargs)
    assert ours.feat_ratio() == reference.feat_ratio() == 8
    assert ours.feat_ratio(as_scalar=False) == reference.feat_ratio(as_scalar=False) == (8, 6)
    for size in [(30, 44), (32, 42), (7, 5)]:
        assert ours.dynamic_feat_size(size) == reference.dynamic_feat_size(size)
    if dynamic_img_pad:
        grid = PatchEmbed(**kwargs, output_fmt="NHWC")(torch.zeros(1, 3, 30, 44)).shape[1:3]
        assert ours.dynamic_feat_size((30, 44)) == tuple(grid) == (4, 8)


def test_layer_scale_takes_timms_inplace():
    """LayerScale(8, 1e-5, inplace=True), as timm users build it, failed with "got an unexpected keyword argument
    'inplace'"."""
    from visionzoo.layers import LayerScale

    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    for inplace in (False, True):
        ours, reference = LayerScale(8, 0.5, inplace=inplace), timm.layers.LayerScale(8, 0.5, inplace=inplace)
        ours.load_state_dict(reference.state_dict(), strict=True)
        given = x.clone()
        out = ours(given)
        assert torch.equal(out, reference(x.clone())) and torch.equal(out, x * 0.5)
        assert (out.data_ptr() == given.data_ptr()) is inplace and ours.inplace is inplace


@pytest.mark.parametrize("drop_prob", [1.5, -0.5, float("nan")])
def test_a_drop_probability_outside_0_1_is_refused_by_name(drop_prob):
    """drop_path(x, 1.5, training=True) failed with torch's "bernoulli_ expects p to be in [0, 1], but got p=-0.5"
    (the keep probability, not the argument given), and drop_path(x, nan, True) returned NaNs."""
    with pytest.raises(ValueError, match=re.escape(f"drop_prob must be in [0, 1], got {drop_prob}")):
        drop_path(torch.ones(2, 3), drop_prob, training=True)
    with pytest.raises(ValueError, match=re.escape(f"drop_prob must be in [0, 1], got {drop_prob}")):
        DropPath(drop_prob)


def test_drop_path_module_of_probability_one_zeroes_the_branch_like_timm():
    """DropPath(1.0) was refused ('drop_prob must be in [0, 1)'), where timm's, and our drop_path, zero every sample."""
    x = torch.randn(4, 3, 5)
    assert torch.equal(DropPath(1.0).train()(x), timm.layers.DropPath(1.0).train()(x))
    assert torch.equal(DropPath(1.0).train()(x), torch.zeros_like(x))
    assert torch.equal(DropPath(1.0).eval()(x), x)


def test_attention_and_block_defaults_are_timms():
    """Attention(64, 4) and Block(64, 4) built with timm's defaults had a qkv bias, which timm's do not: timm's state
    dict did not load (missing 'qkv.bias'), and with strict=False the randomly initialised bias stayed in the sum."""
    from timm.models.vision_transformer import Block as TimmBlock

    from visionzoo.layers import Block

    torch.manual_seed(0)
    x = torch.randn(2, 9, 64)
    for ours, reference in [(Attention(64, 4), timm.layers.Attention(64, 4)), (Block(64, 4), TimmBlock(64, 4))]:
        ours.eval().load_state_dict(reference.eval().state_dict(), strict=True)
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("kwargs", [
    dict(num_heads=4), dict(num_heads=4, norm_layer=torch.nn.LayerNorm, act_layer=torch.nn.SiLU),
    dict(num_heads=2, out_features=16, mlp_ratio=2.0, qkv_bias=False),
    dict(num_heads=4, latent_len=3, pool_type="avg", norm_layer=torch.nn.LayerNorm), dict(num_heads=4, out_features=0),
    dict(num_heads=4, latent_len=2, pool_type=""),
])
def test_attention_pool_latent_takes_timms_arguments_and_defaults(kwargs):
    """AttentionPoolLatent(32, num_heads=4) had a LayerNorm where timm's has none (its state dict did not load:
    missing 'norm.weight'), and timm's in_features=, out_features=, latent_len=, pool_type=, act_layer= failed with
    "got an unexpected keyword argument"."""
    from visionzoo.layers import AttentionPoolLatent

    torch.manual_seed(0)
    reference = timm.layers.AttentionPoolLatent(in_features=32, **kwargs).eval()
    ours = AttentionPoolLatent(in_features=32, **kwargs).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 9, 32)
    expected = reference(x)
    torch.testing.assert_close(ours(x), expected)
    assert ours.out_features == reference.out_features


def test_attention_pool_latent_refuses_heads_that_do_not_split_the_width():
    """AttentionPoolLatent(32, num_heads=0) failed with ZeroDivisionError: integer modulo by zero."""
    from visionzoo.layers import AttentionPoolLatent

    for heads in (0, -2):
        with pytest.raises(ValueError, match=f"num_heads must be positive, got {heads}"):
            AttentionPoolLatent(32, num_heads=heads)
    with pytest.raises(ValueError, match="dim 32 is not divisible by num_heads 5"):
        AttentionPoolLatent(32, num_heads=5)


@pytest.mark.parametrize("num_prefix_tokens", [0, 1, 2])
def test_resample_abs_pos_embed_takes_timms_align_corners_and_verbose(num_prefix_tokens, caplog):
    """resample_abs_pos_embed(..., align_corners=True) and (..., verbose=True), as timm's checkpoint filters call it,
    failed with "got an unexpected keyword argument"."""
    table = torch.randn(1, num_prefix_tokens + 6 * 8, 12, generator=torch.Generator().manual_seed(5))
    for interpolation in ("bicubic", "bilinear"):
        kwargs = dict(num_prefix_tokens=num_prefix_tokens, interpolation=interpolation, antialias=False,
                      align_corners=True)
        expected = timm.layers.resample_abs_pos_embed(table, [9, 5], [6, 8], **kwargs)
        got = resample_abs_pos_embed(table, (9, 5), (6, 8), **kwargs)
        assert torch.equal(got, expected)
        assert not torch.equal(got, resample_abs_pos_embed(table, (9, 5), (6, 8), **{**kwargs, "align_corners": None}))
    with caplog.at_level("INFO"):
        resample_abs_pos_embed(table, (9, 5), (6, 8), num_prefix_tokens=num_prefix_tokens, verbose=True)
    assert "(6, 8) to (9, 5)" in caplog.text



@pytest.mark.parametrize("img_size, patch_size", [(8, 16), ((32, 8), 16), ((32, 32), (4, 40))])
def test_an_image_size_smaller_than_a_patch_is_refused_when_built(img_size, patch_size):
    """PatchEmbed(img_size=8, patch_size=16), and a ViT built so, made a grid of 0 patches without a word: the model
    then failed on a larger input with dynamic_img_size ('Input and output sizes should be greater than 0, but got
    input (H: 0, W: 0)') or when its position table was resampled."""
    message = re.escape(f"img_size {_pair(img_size)} is smaller than one patch {_pair(patch_size)}")
    with pytest.raises(ValueError, match=message):
        PatchEmbed(img_size, patch_size, 3, 8)
    embed = PatchEmbed(64, 4, 3, 8)
    with pytest.raises(ValueError, match=message):
        embed.set_input_size(img_size=img_size, patch_size=patch_size)
    assert embed.img_size == (64, 64) and embed.patch_size == (4, 4) and embed.proj.kernel_size == (4, 4)  # unchanged
    from visionzoo.models import create_model

    with pytest.raises(ValueError, match=message):
        create_model("vit_tiny_patch8_32", img_size=img_size, patch_size=patch_size)


def test_a_new_image_size_smaller_than_the_patch_is_refused():
    embed = PatchEmbed(64, 32, 3, 8)
    with pytest.raises(ValueError, match=re.escape("img_size (16, 64) is smaller than one patch (32, 32)")):
        embed.set_input_size(img_size=(16, 64))
    assert embed.img_size == (64, 64) and embed.grid_size == (2, 2)


@pytest.mark.parametrize("shape, prefix, message", [
    ((17, 8), 1, "pos_embed must be a Tensor[1, num_prefix_tokens + h·w, D], got shape (17, 8)"),
    ((2, 17, 8), 1, "pos_embed must be a Tensor[1, num_prefix_tokens + h·w, D], got shape (2, 17, 8)"),
    ((1, 3, 8), 5, "num_prefix_tokens=5 must be in 0..3, the rows of the position table"),
    ((1, 17, 8), -1, "num_prefix_tokens=-1 must be in 0..17, the rows of the position table"),
])
def test_resample_refuses_a_table_of_another_shape_by_name(shape, prefix, message):
    """A table without its batch dimension was refused as 'a position table of 7 grid tokens is not square' (its
    width taken for its length), two tables with "shape '[1, 4, 4, 8]' is invalid for input of size 256", and more
    prefix tokens than rows with "isqrt() argument must be nonnegative"."""
    with pytest.raises(ValueError, match=re.escape(message)):
        resample_abs_pos_embed(torch.zeros(shape), (2, 2), num_prefix_tokens=prefix)


@pytest.mark.parametrize("kwargs", [dict(qk_norm=True), dict(proj_bias=False), dict(scale_attn_norm=True),
                                    dict(scale_mlp_norm=True, proj_bias=False), dict(qk_norm=True, qkv_bias=True)])
def test_attention_and_block_take_timms_norms_and_projection_bias(kwargs):
    """Block(64, 4, qk_norm=True) and Attention(64, 4, qk_norm=True, norm_layer=...), as timm users build them (timm's
    ViTs with qk_norm, proj_bias=False), failed with "got an unexpected keyword argument"."""
    from timm.models.vision_transformer import Block as TimmBlock

    from visionzoo.layers import Block
    from visionzoo.layers.block import LayerNorm

    torch.manual_seed(0)
    x = torch.randn(2, 9, 64)
    attention_kwargs = {{"scale_attn_norm": "scale_norm"}.get(k, k): v for k, v in kwargs.items() if k != "scale_mlp_norm"}
    pairs = [(Block(64, 4, **kwargs), TimmBlock(64, 4, **kwargs))]
    if attention_kwargs:
        pairs.append((Attention(64, 4, norm_layer=LayerNorm, **attention_kwargs),
                      timm.layers.Attention(64, 4, norm_layer=LayerNorm, **attention_kwargs)))
    for ours, reference in pairs:
        assert list(ours.state_dict()) == list(reference.state_dict())
        ours.eval().load_state_dict(reference.eval().state_dict(), strict=True)
        torch.testing.assert_close(ours(x), reference(x))
    with pytest.raises(ValueError, match="qk_norm and scale_norm need a norm_layer"):
        Attention(64, 4, qk_norm=True)


def test_attention_and_block_take_timms_attn_mask_keyword():
    """attn(x, attn_mask=mask) and block(x, attn_mask=mask), as timm's forward is called, failed with "got an
    unexpected keyword argument 'attn_mask'" (our name is attn_bias)."""
    from timm.models.vision_transformer import Block as TimmBlock

    from visionzoo.layers import Block

    torch.manual_seed(0)
    x = torch.randn(2, 9, 64)
    mask = torch.rand(2, 1, 9, 9) > 0.3
    mask[..., 0] = True
    bias = torch.randn(2, 4, 9, 9)
    for ours, reference in [(Attention(64, 4), timm.layers.Attention(64, 4)), (Block(64, 4), TimmBlock(64, 4))]:
        ours.eval().load_state_dict(reference.eval().state_dict(), strict=True)
        for given in (mask, bias):
            torch.testing.assert_close(ours(x, attn_mask=given), reference(x, attn_mask=given))
            torch.testing.assert_close(ours(x, attn_mask=given), ours(x, attn_bias=given))
        with pytest.raises(ValueError, match="attn_bias or attn_mask, not both"):
            ours(x, attn_bias=bias, attn_mask=mask)


@pytest.mark.parametrize("kwargs", [dict(), dict(num_heads=4, pool_type="avg"), dict(num_heads=2, pre_norm=True),
                                    dict(post_norm=True, norm_layer=torch.nn.LayerNorm, pool_type="avg")])
def test_attention_pool_prr_takes_timms_arguments(kwargs):
    """AttentionPoolPrr(64), as timm's is built (width first), took 64 for the number of heads and pooled with 64
    heads of width 1 without a word; AttentionPoolPrr(64, num_heads=4) failed with "got multiple values for argument
    'num_heads'", and pre_norm/post_norm with "unexpected keyword argument"."""
    from visionzoo.layers import AttentionPoolPrr

    torch.manual_seed(0)
    reference = timm.layers.AttentionPoolPrr(64, **kwargs).eval()
    ours = AttentionPoolPrr(64, **kwargs).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 9, 64)
    torch.testing.assert_close(ours(x), reference(x))
    assert ours.out_features == 64
    with pytest.raises(ValueError, match="dim 64 is not divisible by num_heads 5"):
        AttentionPoolPrr(64, num_heads=5)


def test_layers_take_timms_device_and_dtype():
    """Mlp(16, 48, device="meta"), PatchEmbed(..., dtype=torch.float64) and the other layers built with timm's
    device=/dtype= keywords (timm's own models build every layer so) failed with "got an unexpected keyword argument
    'device'"."""
    from timm.models.vision_transformer import Block as TimmBlock

    from visionzoo.layers import AttentionPoolLatent, AttentionPoolPrr, Block, LayerScale
    from visionzoo.layers.norm import LayerNorm2d

    built = [
        (Mlp, timm.layers.Mlp, (16, 48), dict(norm_layer=torch.nn.LayerNorm)),
        (Mlp, timm.layers.Mlp, (16, 48), dict(use_conv=True)),
        (PatchEmbed, timm.layers.PatchEmbed, (32, 8, 3, 12), dict(norm_layer=torch.nn.LayerNorm)),
        (LayerScale, timm.layers.LayerScale, (12,), {}),
        (Attention, timm.layers.Attention, (16, 4), dict(qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm)),
        (Block, TimmBlock, (16, 4), dict(init_values=1e-5, qk_norm=True)),
        (AttentionPoolLatent, timm.layers.AttentionPoolLatent, (16,), dict(num_heads=4, norm_layer=torch.nn.LayerNorm)),
        (LayerNorm2d, timm.layers.LayerNorm2d, (12,), {}),
        (AttentionPoolPrr, timm.layers.AttentionPoolPrr, (16,), dict(num_heads=4, pre_norm=True, post_norm=True)),
    ]
    for ours, theirs, args, kwargs in built:
        for factory in (dict(device="meta"), dict(dtype=torch.float64), dict(device="meta", dtype=torch.bfloat16)):
            mine, reference = ours(*args, **kwargs, **factory), theirs(*args, **kwargs, **factory)
            state = {key: (value.shape, value.device, value.dtype) for key, value in mine.state_dict().items()}
            assert state == {key: (value.shape, value.device, value.dtype)
                             for key, value in reference.state_dict().items()}, ours.__name__


def test_block_takes_timms_arguments_in_timms_order():
    """Block(64, 4, 4.0, True, True), timm's positional call for qk_norm=True, gave proj_drop=True (dropout of
    probability 1) instead, without a word: every training step zeroed the branches."""
    from timm.models.vision_transformer import Block as TimmBlock

    from visionzoo.layers import Block

    torch.manual_seed(0)
    args = (64, 4, 4.0, True, True, False, True, False, 0.0, 0.0, 0.1)  # ..., qk_norm, norms, proj_bias, drops, init
    ours, reference = Block(*args).train(), TimmBlock(*args).train()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 9, 64)
    torch.testing.assert_close(ours(x), reference(x))
