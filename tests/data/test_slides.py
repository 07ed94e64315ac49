"""ShapeSlides: determinism, labels that match the tiles, no ties, tiles taken from the split's pool."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from visionzoo.data import Shapes
from visionzoo.data.slides import ShapeSlides, draw_tile_classes


def _small(split: str = "train", **kwargs) -> ShapeSlides:
    """Slides of 3 × 3 tiles of 32 pixels: the same logic as the defaults at a fraction of the cost."""
    return ShapeSlides(split, **{"grid_size": 3, "tile_size": 32, "length": 12, "pool_size": 60, **kwargs})


def _digest(ds: ShapeSlides) -> str:
    h = hashlib.sha256()
    for i in range(len(ds)):
        image, target = ds[i]
        h.update(image.numpy().tobytes())
        h.update(target["tile_indices"].numpy().tobytes())
        h.update(bytes([target["label"]]))
    return h.hexdigest()


def test_slides_are_a_function_of_seed_split_and_index():
    assert _digest(_small()) == _digest(_small())
    assert _digest(_small()) != _digest(_small(seed=1))
    assert _digest(_small()) != _digest(_small("test"))
    ds = _small()
    backwards = [ds.layout(i).tile_indices for i in reversed(range(len(ds)))][::-1]
    for i, indices in enumerate(backwards):
        np.testing.assert_array_equal(indices, ds.layout(i).tile_indices)


@pytest.mark.parametrize("margin", [1, 2])
def test_label_is_the_strict_majority_of_the_tiles_shapes_labels(margin):
    ds = _small(margin=margin, length=20)
    pool = Shapes("train", image_size=32, length=60, seed=0, min_objects=1, max_objects=1)
    seen = set()
    for i in range(len(ds)):
        image, target = ds[i]
        tile_labels = target["tile_labels"].numpy()
        # each tile's class is the Shapes label of the pool scene placed there
        for (row, col), j in np.ndenumerate(target["tile_indices"].numpy()):
            assert tile_labels[row, col] == pool[int(j)][1]["label"]
        counts = np.bincount(tile_labels.ravel(), minlength=6)
        np.testing.assert_array_equal(target["counts"].numpy(), counts)
        ordered = np.sort(counts)
        assert ordered[-1] - ordered[-2] >= margin
        assert target["label"] == int(np.argmax(counts))
        seen.add(target["label"])
    assert len(seen) >= 4  # labels vary: uniform over six classes by symmetry


def test_image_is_the_mosaic_of_pool_tiles():
    ds = _small()
    image, target = ds[3]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32
    for (row, col), j in np.ndenumerate(target["tile_indices"].numpy()):
        tile = image[:, row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32]
        assert torch.equal(tile, ds.tile(int(j)))


def test_splits_draw_tiles_from_different_pools():
    train, test = _small("train"), _small("test")
    assert not torch.equal(train.tile(0), test.tile(0))
    assert train.pool_labels.shape == (60,) and set(train.pool_labels.tolist()) <= set(range(6))


def test_draw_tile_classes_leads_by_margin_and_refuses_the_impossible():
    rng = np.random.default_rng(0)
    for _ in range(50):
        classes = draw_tile_classes(rng, 16, 6, margin=3)
        top = np.sort(np.bincount(classes, minlength=6))
        assert top[-1] - top[-2] >= 3
    with pytest.raises(ValueError, match="margin=3"):
        draw_tile_classes(np.random.default_rng(0), 2, 6, margin=3)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="split"):
        ShapeSlides("holdout")
    with pytest.raises(ValueError, match="margin"):
        ShapeSlides(grid_size=2, margin=5)
    with pytest.raises(ValueError, match="no tile of class"):
        _small(pool_size=3).layout(0)
    with pytest.raises(IndexError):
        _small()[12]


def test_indices_must_be_integers_and_errors_name_the_index_given():
    # before: slides[1.5] returned slide 1 and slides[-13] of 12 said "index -1 out of range"
    slides = _small("val")
    with pytest.raises(TypeError, match="ShapeSlides indices must be integers, got float"):
        slides[1.5]
    with pytest.raises(IndexError, match="ShapeSlides index -13 out of range for length 12"):
        slides[-13]
    assert torch.equal(slides[np.int64(11)][0], slides[-1][0])


@pytest.mark.parametrize("setting, value", [("grid_size", 2.5), ("length", 2.5), ("pool_size", 40.5), ("margin", 1.5),
                                            ("tile_size", 16.5), ("grid_size", True)])
def test_settings_must_be_integers(setting, value):
    """ShapeSlides(grid_size=2.5) built 2 x 2 slides, length=2.5 two slides, margin=1.5 a lead of 1, without a word."""
    settings = {"tile_size": 16, "length": 4, "pool_size": 40, setting: value}
    with pytest.raises(ValueError, match=f"ShapeSlides {setting} must be an integer, got {value}"):
        ShapeSlides("val", **settings)


@pytest.mark.parametrize("settings, message", [
    ({"tile_size": 8}, "ShapeSlides tile_size must be at least 16 and at most 4096 \\(Shapes' scene sizes\\), got 8"),
    ({"tile_size": 0}, "ShapeSlides tile_size must be at least 16 and at most 4096 \\(Shapes' scene sizes\\), got 0"),
    ({"tile_size": 5000}, "ShapeSlides tile_size must be at least 16 and at most 4096 \\(Shapes' scene sizes\\), got 5000"),
    ({"seed": "a"}, "ShapeSlides seed must be an integer, got 'a'"),
    ({"seed": -1}, r"ShapeSlides seed must be in \[0, 2\*\*32\), got -1"),
    ({"min_objects": 0}, "ShapeSlides needs 1 <= min_objects <= max_objects <= 7, got 0, 1"),
])
def test_tile_size_seed_and_objects_are_refused_by_shapeslides_own_names(settings, message):
    """ShapeSlides(tile_size=8) said "Shapes image_size must be at least 16", an argument the user never gave, and
    seed="a" "invalid literal for int() with base 10: 'a'", naming no argument."""
    with pytest.raises(ValueError, match=message):
        ShapeSlides("val", **{"grid_size": 2, "tile_size": 16, "length": 2, "pool_size": 40, **settings})


def test_pool_tile_indices_are_checked_against_the_pool_by_name():
    """slides.tile(60) of a pool of 60 said "Shapes index 60 out of range for length 60", a data set the user never
    made; tile and tile_label now name the pool, and take negative indices from its end."""
    slides = _small()
    for method in (slides.tile, slides.tile_label):
        with pytest.raises(IndexError, match="ShapeSlides pool index 60 out of range for length 60"):
            method(60)
        with pytest.raises(TypeError, match="ShapeSlides pool indices must be integers, got float 1.5"):
            method(1.5)
    assert torch.equal(slides.tile(-1), slides.tile(59))


def test_default_tiles_are_the_slides_of_before_and_options_reach_the_pool():
    # the slides before object_sizes and background existed: the README's slide figures depend on them
    assert _digest(_small("val")) == "d192474614d1e1552fb2ab0efaaacdfff677ca7ea6e9f029d2ad3b83373816a3"
    easy = _small("val", object_sizes=("large",), background="plain")
    assert (easy.pool.object_sizes, easy.pool.background) == (("large",), "plain")
    assert _digest(easy) == _digest(_small("val", object_sizes=["large"], background="plain"))
    assert _digest(easy) != _digest(_small("val"))
    sizes = np.concatenate([easy.pool.scene(j).sizes for j in range(len(easy.pool))])
    assert set(sizes.tolist()) == {2}
    assert repr(easy).endswith("margin=1, object_sizes=('large',), background='plain')")


@pytest.mark.parametrize("settings, message", [
    ({"object_sizes": ("huge",)}, "ShapeSlides object_sizes has unknown size 'huge'"),
    ({"object_sizes": "large"}, "ShapeSlides object_sizes must be a sequence of size names"),
    ({"background": "flat"}, "ShapeSlides background must be one of textured, plain, got 'flat'"),
])
def test_tile_options_are_refused_by_shapeslides_own_names(settings, message):
    with pytest.raises(ValueError, match=message):
        _small("val", **settings)
