"""HIPT (ViT-256, ViT-4K, HIPT-4K) against a reference written from the DINO/HIPT description: sizes
and the official key layout, DINO's position-table interpolation, the forward of both ViTs, official
DINO checkpoint files, tile streaming (batching, pad/crop remainders, 1024² and 4096² regions), the
frozen first stage, and bad inputs and files."""

import argparse
import copy
import dataclasses
import fractions
import hashlib
import math
import re
import urllib.parse

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from model_helpers import (
    assert_export_runs_at_other_batch_sizes,
    assert_fx_traces,
    assert_grad_checkpointing_changes_nothing,
    assert_trace_runs_at_other_batch_sizes,
    count,
    images,
)
from test_hub import Server

from visionzoo.checkpoint import CheckpointError
from visionzoo.models import _registry as registry
from visionzoo.models import create_model, get_model_entry, load_checkpoint
from visionzoo.models.hipt import (
    ViT4K,
    ViT256,
    interpolate_pos_encoding,
    load_official_checkpoint,
    read_official_checkpoint,
    tile_view,
)

ATOL = 1e-4



def randomise(model, seed):
    """Random biases and norms (not DINO's 0/1), so that every parameter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


# --- the reference, from the DINO/HIPT description ------------------------------------------------

def dino_rule(pos_embed, rows, cols):
    """DINO's ``interpolate_pos_encoding`` for a ``rows × cols`` token grid: the table as it is when the
    grid is the table's own square one, else its grid part resized bicubically by the *scale factors*
    ``(rows + 0.1) / sqrt(N)`` and ``(cols + 0.1) / sqrt(N)`` (N grid rows in the table), [CLS] row kept."""
    n = pos_embed.shape[1] - 1
    if rows * cols == n and rows == cols:
        return pos_embed
    side, dim = math.sqrt(n), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic")
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)], dim=1)


def reference_forward(state, x, num_heads, patch_size=None):
    """A DINO ViT (pre-norm blocks, LayerNorm eps 1e-6, the [CLS] token after the final norm) run from
    a state dict in HIPT's names: ViT-256 on images (``patch_size``), ViT-4K (``phi``) on token grids."""
    def norm(t, name):
        return F.layer_norm(t, t.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6)

    def linear(t, name):
        return F.linear(t, state[f"{name}.weight"], state[f"{name}.bias"])

    if patch_size is None:
        rows, cols = x.shape[-2:]
        tokens = F.gelu(linear(x.flatten(2).transpose(1, 2), "phi.0"))
    else:
        tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch_size)
        rows, cols = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
    batch = x.shape[0]
    h = torch.cat([state["cls_token"].expand(batch, -1, -1), tokens], dim=1) + dino_rule(state["pos_embed"], rows, cols)
    width = h.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        b = f"blocks.{i}"
        qkv = linear(norm(h, f"{b}.norm1"), f"{b}.attn.qkv").reshape(batch, -1, 3, num_heads, width // num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (width // num_heads) ** -0.5, dim=-1)
        h = h + linear((attn @ v).transpose(1, 2).reshape(batch, -1, width), f"{b}.attn.proj")
        h = h + linear(F.gelu(linear(norm(h, f"{b}.norm2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    return norm(h, "norm")[:, 0]


def official_shapes(depth, width, grid_input):
    """The backbone keys and shapes of HIPT's files (DINO's ViT, 197-row tables)."""
    shapes = {"cls_token": (1, 1, width), "pos_embed": (1, 197, width), "norm.weight": (width,), "norm.bias": (width,)}
    shapes.update(grid_input)
    for i in range(depth):
        b = f"blocks.{i}"
        for name, shape in [("norm1", (width,)), ("norm2", (width,)), ("attn.qkv", (3 * width, width)),
                            ("attn.proj", (width, width)), ("mlp.fc1", (4 * width, width)), ("mlp.fc2", (width, 4 * width))]:
            shapes[f"{b}.{name}.weight"] = shape
            shapes[f"{b}.{name}.bias"] = (shape[0],)
    return shapes


VIT256_SHAPES = official_shapes(12, 384, {"patch_embed.proj.weight": (384, 3, 16, 16), "patch_embed.proj.bias": (384,)})
VIT4K_SHAPES = official_shapes(6, 192, {"phi.0.weight": (192, 384), "phi.0.bias": (192,)})


def dino_file(path, backbone, student=None, prefix="backbone."):
    """An official-style DINO training state (as ``vit256_small_dino.pth``), written with torch.save."""
    def wrap(state, extra_prefix=""):
        out = {f"{extra_prefix}{prefix}{k}": v for k, v in state.items()}
        out[f"{extra_prefix}head.mlp.0.weight"] = torch.randn(2048, backbone["norm.weight"].shape[0])
        out[f"{extra_prefix}head.mlp.0.bias"] = torch.zeros(2048)
        out[f"{extra_prefix}head.last_layer.weight_g"] = torch.ones(65536, 1)
        out[f"{extra_prefix}head.last_layer.weight_v"] = torch.randn(65536, 4)
        return out

    student = backbone if student is None else student
    torch.save({"teacher": wrap(backbone), "student": wrap(student, "module."), "epoch": 100,
                "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536, lr=5e-4)}, path)
    return path


# --- sizes and keys -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected, shapes", [
    ("hipt_vit256_small", 21_665_664, VIT256_SHAPES),
    ("vit4k_xs", 2_781_504, VIT4K_SHAPES),
    ("hipt_4k", 24_447_168, None),
])
def test_parameter_counts_and_official_keys(name, expected, shapes):
    with torch.device("meta"):
        model = create_model(name)
    assert count(model) == expected
    if shapes is not None:
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
        assert sum(math.prod(s) for s in shapes.values()) == expected
    else:
        assert {k.split(".")[0] for k in model.state_dict()} == {"model256", "model4k"}
    assert model.default_cfg["mean"] == model.default_cfg["std"] == (0.5, 0.5, 0.5)


# --- DINO's interpolation -------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [(16, 16), (14, 14), (8, 8), (12, 20), (20, 12), (7, 28), (1, 1), (32, 32)])
def test_interpolate_pos_encoding_is_dinos_rule(grid):
    table = images(1, 197, 12, seed=1)
    got = interpolate_pos_encoding(table, grid)
    assert got.shape == (1, 1 + grid[0] * grid[1], 12)
    torch.testing.assert_close(got, dino_rule(table, *grid), atol=1e-6, rtol=1e-6)
    assert torch.equal(got[:, 0], table[:, 0])
    if grid == (14, 14):
        assert got is table


def test_dinos_rule_is_not_a_plain_resize():
    table = images(1, 197, 12, seed=2)
    plain = F.interpolate(table[:, 1:].reshape(1, 14, 14, 12).permute(0, 3, 1, 2), size=(16, 16), mode="bicubic")
    plain = plain.permute(0, 2, 3, 1).reshape(1, 256, 12)
    assert (interpolate_pos_encoding(table, (16, 16))[:, 1:] - plain).abs().max() > 1e-3


def test_interpolate_pos_encoding_rejects_a_table_that_is_no_square_grid():
    with pytest.raises(ValueError, match="not a square grid"):
        interpolate_pos_encoding(torch.zeros(1, 1 + 14 * 13, 4), (16, 16))


# --- forward against the reference -----------------------------------------------------------------

@pytest.fixture(scope="module")
def vit256():
    torch.manual_seed(3)
    return randomise(create_model("hipt_vit256_small"), seed=4).eval()


@pytest.mark.parametrize("size", [(256, 256), (224, 224), (128, 192)])
def test_vit256_equals_dino_reference(vit256, size):
    x = images(2, 3, *size, seed=5)
    with torch.no_grad():
        got, expected = vit256(x), reference_forward(vit256.state_dict(), x, num_heads=6, patch_size=16)
    assert got.shape == (2, 384) and expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("grid", [(16, 16), (14, 14), (4, 6)])
def test_vit4k_equals_dino_reference(grid):
    torch.manual_seed(6)
    model = randomise(create_model("vit4k_xs"), seed=7).eval()
    x = images(3, 384, *grid, seed=8)
    with torch.no_grad():
        got, expected = model(x), reference_forward(model.state_dict(), x, num_heads=6)
        assert model.forward_features(x).shape == (3, 1 + grid[0] * grid[1], 192)
    assert got.shape == (3, 192)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


# --- official checkpoints ---------------------------------------------------------------------------

def test_official_vit256_file_loads_teacher_or_student(vit256, tmp_path):
    torch.manual_seed(9)
    other = randomise(create_model("hipt_vit256_small"), seed=10).eval()
    path = dino_file(tmp_path / "vit256_small_dino.pth", vit256.state_dict(), other.state_dict())
    x = images(2, 3, 256, 256, seed=11)
    with torch.no_grad():
        expected, expected_student = vit256(x), other(x)
    for key, target in [("teacher", expected), ("student", expected_student)]:
        model = ViT256().eval()
        load_official_checkpoint(model, path, checkpoint_key=key)
        with torch.no_grad():
            torch.testing.assert_close(model(x), target, atol=1e-6, rtol=1e-6)
    state = read_official_checkpoint(path)
    assert set(state) == set(VIT256_SHAPES)  # DINO's projection head dropped, prefixes stripped


def test_create_model_loads_an_extracted_teacher_dict(vit256, tmp_path):
    teacher = {f"backbone.{k}": v for k, v in vit256.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.randn(2048, 384)
    torch.save(teacher, tmp_path / "teacher.pth")
    model = create_model("hipt_vit256_small", checkpoint=tmp_path / "teacher.pth").eval()
    x = images(1, 3, 256, 256, seed=12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit256(x), atol=1e-6, rtol=1e-6)
    with_head = create_model("hipt_vit256_small", checkpoint=tmp_path / "teacher.pth", num_classes=4)
    assert with_head.head.weight.shape == (4, 384)  # the file has no classifier: the fresh one is kept


def test_create_model_loads_a_whole_official_file(vit256, tmp_path):
    """DINO's training state (teacher and student, projection heads, an argparse.Namespace) through create_model."""
    torch.manual_seed(21)
    student = randomise(create_model("hipt_vit256_small"), seed=22).state_dict()
    path = dino_file(tmp_path / "vit256_small_dino.pth", vit256.state_dict(), student=student)
    model = create_model("hipt_vit256_small", checkpoint=path).eval()
    assert all(torch.equal(v, vit256.state_dict()[k]) for k, v in model.state_dict().items())  # the teacher's
    fresh = create_model("hipt_vit256_small")
    load_checkpoint(fresh, path)
    assert torch.equal(fresh.pos_embed, vit256.pos_embed)
    # other families keep the generic reader, which takes the arguments (a Namespace) but no DINO training state
    with pytest.raises(CheckpointError, match=r"not a state dict of tensors: it has non-tensor entries \['teacher', "
                                              "'student'"):
        create_model("vit_small_patch16_224", checkpoint=path)


def test_official_files_load_into_hipt4k_and_match_the_two_stages(vit256, tmp_path):
    torch.manual_seed(13)
    region = randomise(create_model("vit4k_xs"), seed=14).eval()
    path256 = dino_file(tmp_path / "vit256_small_dino.pth", vit256.state_dict())
    path4k = dino_file(tmp_path / "vit4k_xs_dino.pth", region.state_dict())
    model = create_model("hipt_4k", num_classes=3).eval()
    head = model.model4k.head.weight.clone()
    load_official_checkpoint(model.model256, path256)
    load_official_checkpoint(model.model4k, path4k)
    assert torch.equal(model.model4k.head.weight, head)  # the classifier keeps its weights
    x = images(1, 3, 512, 512, seed=15)
    with torch.no_grad():
        tiles = torch.stack([x[0, :, r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] for r in range(2) for c in range(2)])
        grid = vit256(tiles).reshape(1, 2, 2, 384).permute(0, 3, 1, 2)
        expected = region(grid)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), expected,
                                   atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(model(x), model.model4k.head(expected), atol=ATOL, rtol=1e-5)
    vit4k = create_model("vit4k_xs", checkpoint=_extracted(path4k, tmp_path / "teacher4k.pth")).eval()
    with torch.no_grad():
        torch.testing.assert_close(vit4k(grid), expected, atol=1e-6, rtol=1e-6)


def _extracted(path, out):
    torch.save(read_official_checkpoint(path), out)
    return out


def test_missing_and_corrupt_files_name_the_path(vit256, tmp_path):
    missing = tmp_path / "nowhere" / "vit256_small_dino.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_official_checkpoint(ViT256(), missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        create_model("hipt_vit256_small", checkpoint=missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is no checkpoint" * 10)
    for load in (lambda p: load_official_checkpoint(ViT256(), p), lambda p: create_model("vit4k_xs", checkpoint=p)):
        with pytest.raises(CheckpointError, match="corrupt.pth"):
            load(corrupt)
    truncated = tmp_path / "truncated.pth"
    dino_file(truncated, vit256.state_dict())
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_official_checkpoint(ViT256(), truncated)
    teacher_only = tmp_path / "teacher_only.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1, 1, 384)}}, teacher_only)
    with pytest.raises(CheckpointError, match=r"teacher_only.pth has no 'student'"):
        load_official_checkpoint(ViT256(), teacher_only, checkpoint_key="student")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1)}, "args": fractions.Fraction(1, 3)}, unsafe)
    with pytest.raises(CheckpointError, match="unsafe.pth"):
        load_official_checkpoint(ViT256(), unsafe)


def test_unreadable_files_are_refused_as_every_familys_are_never_advising_unsafe_loading(vit256, tmp_path):
    """HIPT's reader, which create_model falls back on for HIPT's names, wrapped torch's own message: a PNG or a Git
    LFS pointer read 'could not be read as a HIPT/DINO checkpoint: Weights only load failed. ... Re-running
    `torch.load` with `weights_only` set to `False` will likely succeed', advice to run arbitrary code for a file that
    was never weights, and an unsafe pickle's message carried terminal escape codes."""
    from PIL import Image

    picture = tmp_path / "picture.pth"
    Image.new("RGB", (8, 8)).save(picture, format="PNG")
    pointer = tmp_path / "pointer.pth"
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 86000000\n")
    truncated = tmp_path / "truncated.pth"
    dino_file(truncated, vit256.state_dict())
    truncated.write_bytes(truncated.read_bytes()[:5000])
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1)}, "args": fractions.Fraction(1, 3)}, unsafe)
    for path, expected in ((picture, "is a PNG image, not a weights file"), (pointer, "is a Git LFS pointer"),
                           (truncated, "is truncated or corrupt: "),
                           (unsafe, "is refused for safety: it holds a Python object of type fractions.Fraction")):
        for load in (lambda p: create_model("hipt_vit256_small", checkpoint=p),
                     lambda p: load_official_checkpoint(ViT256(), p)):
            with pytest.raises(CheckpointError) as info:
                load(path)
            message = str(info.value)
            assert message.startswith(f"checkpoint {path} {expected}"), message
            assert "weights_only" not in message and "\x1b" not in message and "\n" not in message


def test_pretrained_downloads_the_official_files_through_githubs_redirect(vit256, tmp_path, monkeypatch):
    """pretrained=True fetches the DINO training states from the HIPT repository's raw URLs, which GitHub redirects
    to its LFS host, checks their hashes and loads the teachers, as load_official_checkpoint does."""
    torch.manual_seed(31)
    region = randomise(create_model("vit4k_xs"), seed=32).eval()
    root = tmp_path / "www"
    server, expected_requests = Server(root), []
    try:
        monkeypatch.setenv("VISIONZOO_WEIGHTS_MIRROR", server.url)
        monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
        for name, model in (("hipt_vit256_small", vit256), ("vit4k_xs", region)):
            entry = get_model_entry(name)
            raw = urllib.parse.urlsplit(entry.pretrained.url).path
            assert raw.startswith("/mahmoodlab/HIPT/raw/master/HIPT_4K/Checkpoints/") and len(entry.pretrained.sha256) == 64
            media = "/media" + raw.replace("/raw/", "/", 1)
            (root / media.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            path = dino_file(root / media.lstrip("/"), model.state_dict())
            server.redirects[raw] = server.url + media
            expected_requests += [raw, media]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(
                entry, pretrained=dataclasses.replace(entry.pretrained, sha256=digest)))
            loaded = create_model(name, pretrained=True)
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items()), name
            assert create_model(name, pretrained=True, num_classes=3).head.weight.shape[0] == 3  # from the cache
        assert server.requests == expected_requests  # each file fetched once, through the redirect
        assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == ["vit256_small_dino.pth",
                                                                               "vit4k_xs_dino.pth"]
    finally:
        server.close()


def test_a_file_for_the_other_vit_is_refused_whole(tmp_path):
    torch.manual_seed(16)
    path = dino_file(tmp_path / "vit4k_xs_dino.pth", create_model("vit4k_xs").state_dict())
    model = ViT256()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"vit4k_xs_dino.pth: the checkpoint holds HIPT's ViT-4K"):
        load_official_checkpoint(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- tile streaming ---------------------------------------------------------------------------------

def small_hipt(**kwargs):
    """HIPT-4K over 64-pixel tiles (a 4 × 4 token grid each), so that many tiles stay cheap."""
    torch.manual_seed(17)
    model = create_model("hipt_4k", tile_size=64, **kwargs).eval()
    randomise(model.model256, seed=18)
    return model


def record_batches(model):
    sizes = []
    model.model256.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    return sizes


def manual_grid(model, x, tile):
    """ViT-256 on each tile cut by hand: Tensor[B, 384, rows, cols]."""
    rows, cols = x.shape[-2] // tile, x.shape[-1] // tile
    tiles = [x[b, :, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
             for b in range(x.shape[0]) for r in range(rows) for c in range(cols)]
    return model.model256(torch.stack(tiles)).reshape(x.shape[0], rows, cols, -1).permute(0, 3, 1, 2)


def test_tile_streaming_does_not_depend_on_tile_batch_size():
    model = small_hipt()
    sizes = record_batches(model)
    x = images(2, 3, 128, 192, seed=19)  # 2 × 3 tiles each: 12 tiles
    with torch.no_grad():
        expected = manual_grid(model, x, 64)
        sizes.clear()
        for tile_batch_size in (1, 5, 12, 64):
            grid = model.encode_tiles(x, tile_batch_size=tile_batch_size)
            assert grid.shape == (2, 384, 2, 3)
            torch.testing.assert_close(grid, expected, atol=1e-5, rtol=1e-5)
            assert sizes == [min(tile_batch_size, 12 - start) for start in range(0, 12, tile_batch_size)]
            sizes.clear()
        model.tile_batch_size = 5
        out = model(x)
        assert sizes == [5, 5, 2]
        torch.testing.assert_close(out, model.model4k(expected), atol=1e-5, rtol=1e-5)


def test_tiles_are_a_view_without_padding():
    x = images(1, 3, 128, 192, seed=20)
    tiles, grid = tile_view(x, 64)
    assert grid == (2, 3) and tiles.shape == (1, 2, 3, 3, 64, 64)
    assert tiles.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert torch.equal(tiles[0, 1, 2], x[0, :, 64:128, 128:192])


def test_pad_and_crop_remainders():
    model = small_hipt()
    x = images(1, 3, 150, 173, seed=21)
    # crop: the centred 128 × 128 (torchvision's CenterCrop, the official prepare_img_tensor)
    tiles, grid = tile_view(x, 64, "crop")
    assert grid == (2, 2)
    centre = TF.center_crop(x, [128, 128])
    assert torch.equal(tiles.permute(0, 3, 1, 4, 2, 5).reshape(1, 3, 128, 128), centre)
    # pad: right and bottom, with pad_value
    tiles, grid = tile_view(x, 64, "pad", pad_value=-1.0)
    assert grid == (3, 3)
    padded = F.pad(x, (0, 192 - 173, 0, 192 - 150), value=-1.0)
    assert torch.equal(tiles.permute(0, 3, 1, 4, 2, 5).reshape(1, 3, 192, 192), padded)
    with torch.no_grad():
        model.remainder = "crop"
        torch.testing.assert_close(model.encode_tiles(x), manual_grid(model, centre, 64), atol=1e-5, rtol=1e-5)
        model.remainder, model.pad_value = "pad", -1.0
        torch.testing.assert_close(model.encode_tiles(x), manual_grid(model, padded, 64), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="smaller than one 64×64 tile"):
        tile_view(images(1, 3, 50, 200), 64, "crop")
    with pytest.raises(ValueError, match="remainder"):
        tile_view(x, 64, "reflect")
    with pytest.raises(ValueError, match="remainder"):
        create_model("hipt_4k", remainder="reflect")


def test_hipt4k_1024_region_equals_the_two_stages():
    """The real geometry: 256-pixel tiles, ViT-S/16, 16 tiles streamed 5 at a time under inference_mode."""
    torch.manual_seed(22)
    model = create_model("hipt_4k", num_classes=3, tile_batch_size=5).eval()
    randomise(model, seed=23)
    sizes = record_batches(model)
    x = images(1, 3, 1024, 1024, seed=24)
    with torch.inference_mode():
        logits = model(x)
        assert sizes == [5, 5, 5, 1]
        expected = model.model4k(manual_grid(model, x, 256))
    assert logits.shape == (1, 3)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=1e-5)


def test_hipt4k_4096_region_streams_256_tiles():
    """A 4096 × 4096 region (a 16 × 16 grid, ViT-4K's table interpolated 14 → 16) under inference_mode;
    ViT-256 is cut to one block so that its 256 tiles fit the test's time budget."""
    torch.manual_seed(25)
    model = create_model("hipt_4k", tile_batch_size=48).eval()
    model.model256 = randomise(ViT256(depth=1), seed=26).eval().requires_grad_(False)
    sizes = record_batches(model)
    x = torch.rand(1, 3, 4096, 4096, generator=torch.Generator().manual_seed(27)) * 2 - 1
    with torch.inference_mode():
        tokens = model.forward_features(x)
        region = model.forward_head(tokens, pre_logits=True)
    assert tokens.shape == (1, 257, 192) and region.shape == (1, 192) and region.isfinite().all()
    assert sizes == [48] * 5 + [16]


# --- the frozen first stage, bad inputs -------------------------------------------------------------

def test_frozen_vit256_gets_no_gradients_and_stays_in_eval():
    model = small_hipt(num_classes=2)
    model.train()
    assert not model.model256.training and model.model4k.training
    assert not any(p.requires_grad for p in model.model256.parameters())
    loss = model(images(2, 3, 128, 128, seed=28)).sum()
    loss.backward()
    assert all(p.grad is None for p in model.model256.parameters())
    assert all(p.grad is not None for p in model.model4k.parameters())
    trainable = small_hipt(num_classes=2, freeze_vit256=False).train()
    assert trainable.model256.training
    trainable(images(2, 3, 128, 128, seed=28)).sum().backward()
    assert trainable.model256.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_name, shape, message", [
    ("hipt_4k", (1, 1, 512, 512), r"3-channel images"),
    ("hipt_4k", (3, 512, 512), r"3-channel images"),
    ("hipt_vit256_small", (1, 1, 256, 256), r"3-channel images, got 1 channels"),
    ("hipt_vit256_small", (1, 3, 256, 250), r"not a multiple of the 16×16 patch"),
    ("vit4k_xs", (1, 192, 4, 4), r"Tensor\[B, 384, gh, gw\]"),
    ("vit4k_xs", (384, 4, 4), r"Tensor\[B, 384, gh, gw\]"),
    ("vit4k_xs", (1, 384, 0, 4), r"grid 0×4 has no tokens"),
    ("vit4k_xs", (2, 384, 3, 0), r"grid 3×0 has no tokens"),
])
def test_wrong_inputs_raise_value_error(model_name, shape, message):
    model = create_model(model_name, tile_size=64) if model_name == "hipt_4k" else create_model(model_name)
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        model.eval()(torch.zeros(shape))

@pytest.mark.parametrize("channels", [1, 4])
def test_a_grayscale_or_rgba_batch_is_told_the_in_chans_that_takes_it(channels):
    """hipt_4k given a grayscale or RGBA batch said "HIPT takes 3-channel images Tensor[B, 3, H, W], got shape
    (1, 1, 64, 64)" without the way out the other models name; it now names in_chans as they do."""
    with torch.no_grad(), pytest.raises(ValueError, match=rf"got shape \(1, {channels}, 64, 64\); build it with "
                                                          rf"in_chans={channels}"):
        small_hipt().eval()(torch.zeros(1, channels, 64, 64))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="img_size"):
        create_model("hipt_vit256_small", img_size=256)
    with pytest.raises(ValueError, match="tile_batch_size"):
        create_model("hipt_4k", tile_batch_size=0)
    model = small_hipt()
    with pytest.raises(ValueError, match="tile_batch_size"):
        model.encode_tiles(images(1, 3, 64, 64), tile_batch_size=-1)


@pytest.mark.parametrize("tile_size", [0, 40])
def test_a_tile_size_that_is_no_multiple_of_the_patch_is_refused_by_name(tile_size):
    with pytest.raises(ValueError, match=f"tile_size must be a positive multiple of ViT-256's 16-pixel patch, got {tile_size}"):
        create_model("hipt_4k", tile_size=tile_size)


def test_encode_tiles_refuses_a_tile_batch_size_of_zero():
    with pytest.raises(ValueError, match="tile_batch_size must be >= 1, got 0"):
        small_hipt().encode_tiles(images(1, 3, 64, 64), tile_batch_size=0)


@pytest.mark.parametrize("tile_size", [0, -3, 2.5])
def test_tile_view_refuses_a_tile_size_that_is_no_positive_integer_by_name(tile_size):
    """tile_view(x, 0) ended in "ZeroDivisionError: integer modulo by zero", -3 in "size is -3 but must be >= 0" and
    2.5 in a message about pad()'s argument, none naming tile_size."""
    with pytest.raises(ValueError, match=f"tile_size must be an integer >= 1, got {tile_size}"):
        tile_view(images(1, 3, 64, 64), tile_size)


@pytest.mark.parametrize("value", [2.5, "4", True])
def test_encode_tiles_refuses_a_tile_batch_size_that_is_no_integer_by_name(value):
    """encode_tiles(x, tile_batch_size=2.5) ended in "'float' object cannot be interpreted as an integer" and "4" in
    "'<' not supported between instances of 'str' and 'int'", naming no argument; True ran one tile at a time."""
    with pytest.raises(ValueError, match=f"tile_batch_size must be an integer, got {value!r}"):
        small_hipt().encode_tiles(images(1, 3, 64, 64), tile_batch_size=value)


# --- gradient checkpointing ---------------------------------------------------------------------

def test_grad_checkpointing_changes_neither_outputs_nor_gradients():
    torch.manual_seed(80)
    vit256 = randomise(create_model("hipt_vit256_small", drop_path_rate=0.2), seed=81)
    assert_grad_checkpointing_changes_nothing(vit256, images(2, 3, 32, 48, seed=82))
    vit4k = randomise(create_model("vit4k_xs", num_classes=3, drop_rate=0.1, drop_path_rate=0.2), seed=83)
    assert_grad_checkpointing_changes_nothing(vit4k, images(2, 384, 3, 4, seed=84))
    hipt = create_model("hipt_4k", tile_size=32, freeze_vit256=False, num_classes=3, drop_path_rate=0.2)
    assert_grad_checkpointing_changes_nothing(hipt, images(1, 3, 64, 96, seed=85))
    assert hipt.model256.grad_checkpointing and hipt.model4k.grad_checkpointing


def test_set_input_size_of_vit256_is_refused():
    """Any tile size already gets the official table by DINO's rule; timm's resampling would change it."""
    with pytest.raises(ValueError, match="224-pixel position table"):
        create_model("hipt_vit256_small").set_input_size(img_size=256)


def test_an_empty_batch_of_regions_gives_empty_outputs():
    """A batch of no regions (the last batch of a filtered loader) gives Tensor[0, ...], as the ViTs do."""
    model = small_hipt(num_classes=3)
    with torch.no_grad():
        assert model.encode_tiles(images(0, 3, 128, 192)).shape == (0, 384, 2, 3)
        assert model(images(0, 3, 128, 192)).shape == (0, 3)


@pytest.mark.parametrize(("name", "part"), [("hipt_vit256_small", "ViT-256"), ("vit4k_xs", "ViT-4K")])
def test_one_vits_file_given_to_hipt_4k_names_the_part_it_belongs_to(tmp_path, name, part):
    """create_model("hipt_4k", checkpoint=vit256_small_dino.pth) listed 228 missing and 150 unexpected keys."""
    path = dino_file(tmp_path / "official.pth", create_model(name).state_dict())
    with pytest.raises(CheckpointError, match=rf"official.pth.*one of HIPT's two ViTs \({part}.*load_official_checkpoint\(model.model"):
        create_model("hipt_4k", checkpoint=path)


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "vit_tiny_patch16_224"])
def test_another_familys_file_given_to_hipt_4k_is_not_called_one_of_its_vits(tmp_path, name):
    """Any file with a patch_embed.proj.weight (a Swin's, a ViT-Ti's) was said to hold HIPT's ViT-256."""
    path = tmp_path / f"{name}.pth"
    with torch.device("meta"):
        state = create_model(name).state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match=rf"{name}.pth does not fit model hipt_4k: .*missing keys: model256\.") as error:
        create_model("hipt_4k", checkpoint=path)
    assert "HIPT's two ViTs" not in str(error.value)


@pytest.mark.parametrize("shape", [(1, 3, 0, 128), (2, 3, 128, 0), (0, 3, 0, 0)])
@pytest.mark.parametrize("remainder", ["pad", "crop"])
def test_an_image_without_pixels_is_refused_by_name(shape, remainder):
    """An image with a side of 0 failed inside unfold with "maximum size for tensor at dimension 2 is 0"."""
    model = small_hipt(remainder=remainder)
    with torch.no_grad(), pytest.raises(ValueError, match=rf"image {shape[2]}×{shape[3]} has no pixels"):
        model(torch.zeros(shape))


def test_hipt4k_lists_both_vits_position_tables_and_class_tokens_for_timms_optimizer_factory():
    # timm's param_groups_weight_decay reads the top-level no_weight_decay() only: without it, model4k.pos_embed and
    # both class tokens were weight-decayed
    from timm.optim import param_groups_weight_decay

    model = create_model("hipt_4k", num_classes=3)
    names = {name for name, _ in model.named_parameters()}
    assert {"model256.pos_embed", "model256.cls_token", "model4k.pos_embed", "model4k.cls_token"} <= (
        model.no_weight_decay() & names)
    decayed = next(group for group in param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
                   if group["weight_decay"] > 0)["params"]
    assert not any(p is model.model4k.pos_embed or p is model.model4k.cls_token for p in decayed)


def test_a_trace_or_export_runs_at_other_batch_sizes():
    """The tile batches were a loop that torch.jit.trace unrolled: traced on 2 images (18 tiles, 5 batches of 4), a
    model failed on 3 (27 tiles) in the TorchScript interpreter, and torch.export with a dynamic batch failed
    ('specialized it to be a constant (2)'); traced, all tiles are encoded at once."""
    torch.manual_seed(0)
    model = create_model("hipt_4k", tile_size=32, tile_batch_size=4, num_classes=3).eval()
    x = images(3, 3, 96, 96, seed=1)
    assert_trace_runs_at_other_batch_sizes(model, x)
    assert_export_runs_at_other_batch_sizes(model, x)


def test_torch_fx_traces_both_stages_and_the_hierarchy():
    """torch.fx.symbolic_trace, and with it torchvision's create_feature_extractor, failed on the input checks and
    DINO's interpolation of the position table ('symbolically traced variables cannot be used as inputs to control
    flow', 'int() argument must be ... not Proxy'); the traced ViT-256 and HIPT-4K, which have no input size, give the
    eager outputs (a padded 70×102 region of 3×4 tiles), ViT-4K's node norm its forward_features, and a wrong input
    is still refused."""
    torch.manual_seed(0)
    vit256, tiles = create_model("hipt_vit256_small").eval(), images(2, 3, 64, 48, seed=1)
    with torch.no_grad():
        tokens = vit256.forward_features(tiles)
    assert_fx_traces(vit256, tiles, {"norm": tokens})
    model = create_model("hipt_4k", tile_size=32, tile_batch_size=4, num_classes=3).eval()
    x = images(3, 3, 70, 102, seed=2)
    with torch.no_grad():
        tokens = model.forward_features(x)
    assert_fx_traces(model, x, {"model4k.norm": tokens})
    with pytest.raises(ValueError, match="HIPT takes 3-channel images"):
        torch.fx.symbolic_trace(model)(x[:, :1])


def test_a_file_with_only_the_student_names_how_to_load_it(vit256, tmp_path):
    """A DINO file saved with its student alone said "has no 'teacher' entry; it has ['student']" through create_model,
    which has no way to ask for the student; the error now names the call that loads it."""
    path = tmp_path / "student.pth"
    torch.save({"student": {f"module.backbone.{k}": v for k, v in vit256.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match=r"has no 'teacher' entry; it has \['student'\]: "
                                              r"load_official_checkpoint\(model, .*student.pth', checkpoint_key='student'\)"):
        create_model("hipt_vit256_small", checkpoint=path)
    model = ViT256().eval()
    load_official_checkpoint(model, path, checkpoint_key="student")
    assert torch.equal(model.pos_embed, vit256.pos_embed)


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_load_official_checkpoint_takes_a_state_dict_under_model_or_state_dict_as_create_model_does(tmp_path, wrapper):
    """A ViT-4K saved as {"model": state_dict} (a fine-tuning script's layout) loaded through create_model, but
    load_official_checkpoint refused it with "does not hold a state dict of tensors under 'teacher'", a key the file
    never had."""
    torch.manual_seed(31)
    region = randomise(create_model("vit4k_xs"), seed=32)
    path = tmp_path / "vit4k.pth"
    torch.save({wrapper: region.state_dict(), "epoch": 3}, path)
    model = ViT4K()
    load_official_checkpoint(model, path)
    assert all(torch.equal(value, region.state_dict()[key]) for key, value in model.state_dict().items())
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="is not a state dict of tensors: it has non-tensor entries"):
        load_official_checkpoint(ViT4K(), path)


def test_the_dino_file_loads_into_an_avg_pooled_classifier_as_a_vits_does(vit256, tmp_path):
    """create_model("hipt_vit256_small", checkpoint=DINO file, num_classes=5, global_pool="avg"), a linear probe on
    the mean token, failed with "2 missing keys: fc_norm.bias, fc_norm.weight; 2 unexpected keys: norm.bias,
    norm.weight", where a ViT's file loads so: as for a ViT (and timm), the file's final norm, which precedes the
    pooling, is dropped and the model's fc_norm after it keeps its fresh initialisation."""
    path = dino_file(tmp_path / "vit256_small_dino.pth", vit256.state_dict())
    model = create_model("hipt_vit256_small", checkpoint=path, num_classes=5, global_pool="avg").eval()
    assert torch.equal(model.fc_norm.weight, torch.ones(384)) and torch.equal(model.fc_norm.bias, torch.zeros(384))
    unnormed = copy.deepcopy(vit256)
    unnormed.norm = torch.nn.Identity()
    x = images(1, 3, 64, 64, seed=33)
    with torch.no_grad():
        tokens = unnormed.forward_features(x)
        expected = model.head(F.layer_norm(tokens[:, 1:].mean(1), (384,), eps=1e-6))
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
def test_a_region_of_integer_pixels_is_told_the_normalisation_hipt_takes(dtype):
    """A region read as uint8 (PIL or OpenSlide through torch.from_numpy) ended in "Input type (unsigned char) and
    bias type (float) should be the same", naming neither the input nor the normalisation HIPT expects."""
    x = torch.zeros(1, 3, 64, 64, dtype=dtype)
    with torch.no_grad(), pytest.raises(ValueError, match=rf"HIPT takes floating-point images normalised with "
                                                          rf"mean = std = 0.5, got dtype {dtype}"):
        small_hipt()(x)


def test_a_region_with_nan_pixels_is_refused_by_name():
    """A region with NaN pixels (a failed stain normalisation) gave a NaN embedding without a word; the tile
    streaming then carried it into every slide-level feature built from that region."""
    x = images(2, 3, 128, 128, seed=90)
    x[1, 0, 70, 3] = x[1, 2, 5, 100] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match=r"HIPT's images hold 2 NaN or infinite values \(region 1\)"):
        small_hipt()(x)


@pytest.mark.parametrize(("file_of", "given_to", "says"), [
    ("vit4k_xs", "hipt_vit256_small", r"holds HIPT's ViT-4K \(vit4k_xs\), not its ViT-256"),
    ("hipt_vit256_small", "vit4k_xs", r"holds HIPT's ViT-256 \(hipt_vit256_small\), not its ViT-4K"),
])
def test_the_other_vits_file_names_the_file_and_the_vit_it_holds(tmp_path, file_of, given_to, says):
    """vit4k_xs_dino.pth given to a ViT-256 (or the other way round) listed 74 missing keys, 2 unexpected and 76
    shape mismatches, which do not say that the file is simply the other ViT's."""
    torch.manual_seed(91)
    path = dino_file(tmp_path / "official.pth", create_model(file_of).state_dict())
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(str(path))}: the checkpoint {says}; load it into"):
        create_model(given_to, checkpoint=path)
    model = create_model(given_to)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"^checkpoint {re.escape(str(path))}: the checkpoint {says}; load it into"):
        load_official_checkpoint(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("pad_value", [float("nan"), float("inf")])
def test_a_pad_value_that_is_no_finite_number_is_refused_by_name(pad_value):
    """create_model("hipt_4k", pad_value=nan) was taken, and every region whose sides are not multiples of the tile
    then gave a NaN embedding, the padded pixels spreading through attention."""
    with pytest.raises(ValueError, match=rf"pad_value must be a finite number, got {pad_value}"):
        create_model("hipt_4k", pad_value=pad_value)


def test_vit4k_xs_given_images_channels_says_it_takes_token_grids():
    """`visionzoo train vit4k_xs --data shapes` (which builds the model with the images' in_chans) said "vit4k_xs
    takes no argument 'in_chans'", an argument the user never gave, and not that ViT-4K takes no images at all."""
    from visionzoo.train.classification import build_classifier

    message = (r"vit4k_xs takes grids Tensor\[B, 384, gh, gw\] of ViT-256 \[CLS\] tokens, not images, so it has no "
               r"in_chans; hipt_4k takes images")
    with pytest.raises(ValueError, match=message):
        create_model("vit4k_xs", in_chans=3)
    with pytest.raises(ValueError, match=message):
        build_classifier("vit4k_xs", 6, 3, {})


def test_tiles_of_a_slide_in_cpu_memory_are_copied_to_the_models_device_a_batch_at_a_time():
    """A slide is read where it lies (a 4096² region in the CPU's memory) and each tile batch goes to ViT-256's
    device; before, the tiles were handed over on the slide's device, so a model on a GPU refused a slide on the CPU.
    The meta device stands in for a GPU here: every tile batch reaches the model on it, and so does the grid."""
    model = small_hipt().to("meta")
    devices = []
    model.model256.register_forward_pre_hook(lambda module, args: devices.append(args[0].device))
    x = images(1, 3, 128, 192, seed=23)  # on the CPU: 6 tiles
    with torch.no_grad():
        grid = model.encode_tiles(x, tile_batch_size=4)
        logits = model(x)
    assert devices == [torch.device("meta")] * 3  # two batches, then one of the model's 64
    assert grid.device.type == "meta" and grid.shape == (1, 384, 2, 3)
    assert logits.device.type == "meta" and logits.shape == (1, 192)  # no head: the region embedding
