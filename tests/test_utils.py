"""Shared helpers: reading a PIL image of any mode as floats in [0, 1]; checking model arguments' types."""

from __future__ import annotations  # as in the package: the annotations checked are strings

import logging
import re
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.utils import check_argument_types, check_unit_range, image_array, with_article

SIXTEEN_BIT = np.array([[0, 255, 256, 1000], [30000, 40000, 65534, 65535]], dtype=np.uint16)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_greyscale_is_scaled_by_65535_not_clipped_at_255(mode, channels):
    """convert("L") made every value above 255 white: 256, 1000 and 40000 all read as 1.0."""
    if mode == "I":
        image = Image.fromarray(SIXTEEN_BIT.astype(np.int32), "I")
    else:
        image = Image.frombytes(mode, (4, 2), SIXTEEN_BIT.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    assert image.mode == mode
    pixels = image_array(image, channels)
    assert pixels.shape == (2, 4, channels) and pixels.dtype == np.float32
    expected = (SIXTEEN_BIT.astype(np.float32) / 65535)[..., None]
    assert np.array_equal(pixels, np.repeat(expected, channels, axis=2))


def test_a_32_bit_integer_image_holding_0_to_255_is_read_as_8_bit_with_one_warning_naming_it(tmp_path, caplog):
    """A mode "I" image (a 32-bit integer TIFF, or Image.fromarray of int32) of values 0..255 was divided by 65535:
    nearly black, without a word. Its values say 8 bits; the guess is said once per file."""
    values = np.array([[0, 1, 128, 255]], dtype=np.int32)
    path = tmp_path / "scan.tif"
    Image.fromarray(values, "I").save(path)
    with caplog.at_level(logging.WARNING, logger="visionzoo.utils"):
        for _ in range(2):  # a data set reads its files every epoch: warned once
            with Image.open(path) as image:
                assert image.mode == "I"
                pixels = image_array(image, 3, f"image {path}")
            assert np.array_equal(pixels, np.repeat(values[..., None].astype(np.float32) / 255, 3, axis=2))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"image {path} is a 32-bit integer image with values 0..255: read as 8-bit" in warnings[0]


def test_a_32_bit_integer_image_beyond_255_is_read_as_16_bit_saying_so(caplog):
    with caplog.at_level(logging.WARNING, logger="visionzoo.utils"):
        pixels = image_array(Image.fromarray(np.array([[0, 4095]], dtype=np.int32), "I"), 1, "depth-4095.tif")
    assert np.array_equal(pixels[..., 0], np.array([[0, 4095]], dtype=np.float32) / 65535)
    assert "depth-4095.tif is a 32-bit integer image with values 0..4095: read as 16-bit" in caplog.text


def test_a_16_bit_pgm_opened_as_mode_i_stays_16_bit_even_when_dark(tmp_path, caplog):
    """PIL opens a 16-bit PGM as mode "I": the file says 16 bits, so 0..255 there is a dark image, not 8-bit data."""
    values = np.array([[0, 200, 255, 10]], dtype=np.uint16)
    path = tmp_path / "dark.pgm"
    Image.fromarray(values).save(path)
    with caplog.at_level(logging.WARNING, logger="visionzoo.utils"), Image.open(path) as image:
        assert image.mode == "I"
        pixels = image_array(image, 1, "dark.pgm")
    assert np.array_equal(pixels[..., 0], values.astype(np.float32) / 65535)
    assert not caplog.records


def test_eight_bit_images_are_divided_by_255_as_before():
    grey = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    assert np.array_equal(image_array(Image.fromarray(grey, "L"), 1)[..., 0], grey.astype(np.float32) / 255)
    rgb = np.arange(12, dtype=np.uint8).reshape(1, 4, 3) * 20
    assert np.array_equal(image_array(Image.fromarray(rgb, "RGB"), 3), rgb.astype(np.float32) / 255)
    assert np.array_equal(image_array(Image.fromarray(rgb, "RGB"), 1),
                          np.asarray(Image.fromarray(rgb, "RGB").convert("L"), dtype=np.float32)[..., None] / 255)


def test_thirty_two_bit_values_beyond_sixteen_bits_are_refused_naming_the_image():
    image = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I")
    with pytest.raises(ValueError, match=r"scan.png has values 0..70000, beyond 16 bits"):
        image_array(image, 1, "scan.png")


def test_float_images_in_the_unit_interval_are_read_as_they_are(tmp_path):
    """A float TIFF in [0, 1] went through PIL's convert, which rounds to 0..255: a black image, silently."""
    values = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    path = tmp_path / "scan.tif"
    Image.fromarray(values, "F").save(path)
    with Image.open(path) as image:
        assert np.array_equal(image_array(image, 1)[..., 0], values)
        assert np.array_equal(image_array(image, 3), np.repeat(values[..., None], 3, axis=2))


@pytest.mark.parametrize("bad", [255.0, -0.5])
def test_float_images_outside_the_unit_interval_are_refused_naming_the_image(bad):
    values = np.zeros((4, 4), dtype=np.float32)
    values[1, 2] = bad
    with pytest.raises(ValueError, match="scan.tif is a 32-bit float image with values"):
        image_array(Image.fromarray(values, "F"), 1, "scan.tif")


@pytest.mark.parametrize("bad, said", [(float("nan"), "2 NaN values"), (float("inf"), "2 infinite values")])
def test_a_float_image_holding_nan_or_infinity_is_refused_saying_so(bad, said):
    """A float TIFF of values in [0, 1] but for a NaN pixel was refused as 'a 32-bit float image with values
    0.1..0.9; float images are read in [0, 1]': its range was taken without the NaN, which the message hid."""
    values = np.linspace(0.1, 0.9, 16, dtype=np.float32).reshape(4, 4)
    values[1, 2] = values[3, 0] = bad
    with pytest.raises(ValueError, match=f"scan.tif is a 32-bit float image holding {said}; float images are read "
                                         r"in \[0, 1\]"):
        image_array(Image.fromarray(values, "F"), 1, "scan.tif")


class _Checked:
    @check_argument_types
    def __init__(self, depth: int = 2, rate: float = 0.0, flag: bool = False, name: str = "a",
                 scale: float | None = None, size: int | tuple[int, int] = 4, module: object = None,
                 depths: Sequence[int] = (2, 2), anchors: Sequence[Sequence[float]] | None = None,
                 table: dict[str, int] | None = None, mixed: tuple[int, str] = (1, "a")):
        self.settings = (depth, rate, flag, name, scale, size, module, depths, anchors, table, mixed)


@pytest.mark.parametrize("arguments", [
    {}, {"depth": np.int64(3)}, {"rate": 1}, {"rate": np.float32(0.5)}, {"flag": np.bool_(True)},
    {"scale": None}, {"scale": 2}, {"size": (2, 3)}, {"size": [2, 3]}, {"module": 1}, {"depths": [1, np.int64(2)]},
    {"depths": ()}, {"anchors": [[32], (64.0, 128)]}, {"table": "anything: not a checked annotation"},
    {"mixed": "anything: not a checked annotation"}, {"depths": np.array([2, 3])}, {"size": range(2, 4)},
])
def test_argument_types_of_the_right_kind_are_taken(arguments):
    assert _Checked(**arguments).settings is not None


@pytest.mark.parametrize("arguments, message", [
    ({"depth": 2.5}, "_Checked: depth must be an integer, got 2.5"),
    ({"depth": True}, "_Checked: depth must be an integer, got True"),
    ({"rate": "abc"}, "_Checked: rate must be a number, got 'abc'"),
    ({"flag": "no"}, "_Checked: flag must be a bool, got 'no'"),
    ({"name": 3}, "_Checked: name must be a string, got 3"),
    ({"scale": "x"}, "_Checked: scale must be a number or None, got 'x'"),
    ({"size": "abc"}, "_Checked: size must be an integer or a sequence of 2 integers, got 'abc'"),
    ({"size": [2, "a"]}, "_Checked: size must be an integer or a sequence of 2 integers, got [2, 'a']"),
    ({"size": (2, 3, 4)}, "_Checked: size must be an integer or a sequence of 2 integers, got (2, 3, 4)"),
    ({"size": 4.5}, "_Checked: size must be an integer or a sequence of 2 integers, got 4.5"),
    ({"depths": (2, "a")}, "_Checked: depths must be a sequence of integers, got (2, 'a')"),
    ({"depths": "22"}, "_Checked: depths must be a sequence of integers, got '22'"),
    ({"depths": [2, True]}, "_Checked: depths must be a sequence of integers, got [2, True]"),
    ({"depths": 2}, "_Checked: depths must be a sequence of integers, got 2"),
    ({"depths": np.array([2.5])}, "_Checked: depths must be a sequence of integers, got array([2.5])"),
    ({"depths": np.array(2)}, "_Checked: depths must be a sequence of integers, got array(2)"),
    ({"anchors": [[32], "x"]}, "_Checked: anchors must be a sequence of sequences of numbers or None, got [[32], 'x']"),
])
def test_argument_types_of_another_kind_are_refused_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _Checked(**arguments)
    with pytest.raises(ValueError, match=re.escape(message)):  # given by position too
        _Checked(*arguments.values()) if "depth" in arguments else _Checked(2, **arguments)


def test_the_annotations_are_read_once_per_constructor(monkeypatch):
    """Each construction evaluated every string annotation of the constructor again."""
    import visionzoo.utils as utils

    class Model:
        @check_argument_types
        def __init__(self, size: int | tuple[int, int] = 4, depths: Sequence[int] = (2, 2)):
            pass

    reads, read = [], utils._argument_kinds
    monkeypatch.setattr(utils, "_argument_kinds", lambda *args: reads.append(args[0]) or read(*args))
    Model()
    first = len(reads)
    Model(size=(2, 3))
    Model(depths=[1])
    assert len(reads) == first >= 3  # self, size and depths (and their items), at the first construction only
    with pytest.raises(ValueError, match="Model: depths must be a sequence of integers, got 'x'"):
        Model(depths="x")


def test_an_unknown_argument_is_left_to_the_constructor_own_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        _Checked(bogus=1)


@pytest.mark.parametrize("name", ["vit_tiny_patch8_32", "swin_tiny_patch2_window4_32", "convnext_atto_32", "resnet18",
                                  "hipt_vit256_small", "hipt_4k"])
@pytest.mark.parametrize("features_only", [False, True])
def test_images_that_are_no_tensor_are_refused_naming_what_they_are(name, features_only):
    """A NumPy batch failed inside conv2d ('received an invalid combination of arguments', ConvNeXt: "'numpy.ndarray'
    object has no attribute 'contiguous'") and a list of images with "'list' object has no attribute 'ndim'"."""
    import torch

    from visionzoo.models import create_model

    if features_only and name == "hipt_4k":
        vit4k = create_model("vit4k_xs").eval()  # HIPT's second stage takes grids of tile embeddings
        with pytest.raises(TypeError, match=re.escape("expected grids Tensor[B, 384, gh, gw], got a numpy.ndarray")):
            vit4k(np.zeros((1, 384, 2, 2), dtype=np.float32))
        return
    model = create_model(name, **({"features_only": True} if features_only else {})).eval()
    batch = np.zeros((1, 3, 32, 32), dtype=np.float32)
    with pytest.raises(TypeError, match=re.escape("expected images Tensor[B, C, H, W], got a numpy.ndarray; "
                                                  "convert it with torch.from_numpy")):
        model(batch)
    with pytest.raises(TypeError, match=re.escape("expected images Tensor[B, C, H, W], got a list")):
        model([torch.zeros(3, 32, 32)])


@pytest.mark.parametrize(("word", "expected"), [("image_gpt_small", "an image_gpt_small"), ("dcgan", "a dcgan"),
                                                ("vqvae_small", "a vqvae_small"), ("ImageNet", "an ImageNet")])
def test_a_word_gets_the_article_of_its_first_letter(word, expected):
    assert with_article(word) == expected


def test_keep_freed_memory_stops_large_buffers_from_being_faulted_in_again(tmp_path):
    """timm's bf16 ViT-S/16 forward took ~120,000 page faults (its activations mapped afresh at every call), a
    cost that varies with the process's history; keep_freed_memory() (benchmarks/backbones.py --keep-freed-memory) makes glibc keep
    freed blocks for reuse.
    Measured in a child process: the setting is process-wide."""
    import subprocess
    import sys

    script = tmp_path / "faults.py"
    script.write_text("""
import resource
import torch
from visionzoo.utils import keep_freed_memory

def faults():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):  # a forward pass: several activations of 12 MiB alive at once, then all freed
        held = [torch.empty(3 * 2**20).fill_(1.0) for _ in range(6)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

# glibc's default adapts its mmap threshold to the sizes freed so far, so its faults depend on the process's
# history; a fixed 1 MiB threshold is that default's worst case, every 12 MiB buffer mapped afresh
import ctypes, ctypes.util
ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 2**20)
faults()
before = faults()
keep_freed_memory()
faults()
print(before, faults())
""")
    before, after = map(int, subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                            check=True).stdout.split())
    assert before > 4 * 6 * 2000 and after < before / 10  # 12 MiB is 3,072 pages of 4 KiB


def test_the_unit_range_check_of_images_that_require_grad_warns_nothing(recwarn):
    """A generator's output fed to a VQGAN or to InceptionFeatures (a feature loss) requires grad: the range check's
    conversion to Python floats made PyTorch warn 'Converting a tensor with requires_grad=True to a scalar', a
    warning about the library's code that the user could do nothing about."""
    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    check_unit_range(images, "VQGAN")
    with pytest.raises(ValueError, match=r"span \[0, 2\]"):
        check_unit_range(torch.tensor([0.0, 2.0], requires_grad=True), "VQGAN")
    assert not [str(w.message) for w in recwarn.list if "requires_grad" in str(w.message)]
