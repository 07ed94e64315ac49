"""Digits: the fixed stratified split, pixel values, resize and channel repeat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import visionzoo.data.digits as digits_module
from visionzoo.data import Digits
from visionzoo.data.digits import SPLITS, digits_cache_path, digits_table, load_digits_arrays, split_indices


@pytest.fixture(scope="module")
def reference():
    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target


@pytest.fixture(scope="module")
def splits():
    return {split: Digits(split) for split in ("train", "val", "test")}


def test_splits_cover_every_image_exactly_once(splits):
    sizes = {split: len(ds) for split, ds in splits.items()}
    assert sizes == {"train": 1257, "val": 270, "test": 270}
    every = np.concatenate([ds.indices for ds in splits.values()])
    assert len(every) == 1797
    assert np.array_equal(np.sort(every), np.arange(1797))


def test_split_is_fixed_across_constructions(splits):
    assert np.array_equal(Digits("val").indices, splits["val"].indices)


def test_splits_are_stratified(splits, reference):
    _, labels = reference
    class_counts = np.bincount(labels, minlength=10)
    for split, fraction in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        counts = np.bincount(splits[split].targets, minlength=10)
        assert np.all(np.abs(counts - fraction * class_counts) <= 1.5), (split, counts)


def test_images_and_labels_match_sklearn(splits, reference):
    images, labels = reference
    for ds in splits.values():
        assert ds.targets == labels[ds.indices].tolist()
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images[ds.indices]))
        image, label = ds[5]
        assert image.shape == (1, 8, 8) and image.dtype == torch.float32
        assert label == ds.targets[5]
    assert splits["train"].images.min() == 0.0 and splits["train"].images.max() == 1.0
    assert splits["train"].classes == [str(d) for d in range(10)]


def test_resize_matches_bilinear_reference_and_channels_repeat(reference):
    images, _ = reference
    ds = Digits("test", image_size=32, channels=3)
    assert ds.images.shape == (270, 3, 32, 32)
    for i in (0, 100, 269):
        # PIL's bilinear resize of a float image agrees with interpolate(align_corners=False) when upsampling.
        expected = np.array(Image.fromarray(images[ds.indices[i]], mode="F").resize((32, 32), Image.BILINEAR))
        image, _ = ds[i]
        assert np.abs(image[0].numpy() - expected).max() < 1e-6
        assert torch.equal(image[1], image[0]) and torch.equal(image[2], image[0])
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0


def test_transform_and_bad_arguments():
    ds = Digits("val", transform=lambda image: 1 - image)
    assert torch.equal(ds[3][0], 1 - ds.images[3])
    with pytest.raises(ValueError, match="train, val, test"):
        Digits("validation")
    with pytest.raises(ValueError, match="channels"):
        Digits("train", channels=2)


@pytest.mark.parametrize("setting, value", [("image_size", 32.5), ("image_size", True), ("channels", 3.0)])
def test_settings_must_be_integers(setting, value):
    """Digits(image_size=32.5) gave 32 px images and image_size=True 1 x 1 ones, without a word (Shapes refuses)."""
    with pytest.raises(ValueError, match=f"Digits {setting} must be an integer, got {value}"):
        Digits("val", **{setting: value})
    assert Digits("val", image_size=np.int64(16)).images.shape[-1] == 16


def test_an_in_place_transform_does_not_change_the_data_set():
    """Digits handed its transform a view into the preloaded images: an in-place transform (torchvision's
    RandomErasing(inplace=True), Normalize(inplace=True)) rewrote the data set, so each epoch saw the earlier
    epochs' erasures piled up. The transform now gets the sample's own copy."""
    from torchvision.transforms import RandomErasing

    torch.manual_seed(0)
    ds = Digits("val", image_size=16, transform=RandomErasing(p=1.0, value=0.5, inplace=True))
    clean = Digits("val", image_size=16)
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert torch.equal(ds.images, clean.images)
    first, _ = ds[0]
    assert not torch.equal(first, clean.images[0])  # the transform ran, on its own copy


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache folder, and no table held in this process before or after the test."""
    monkeypatch.setenv("VISIONZOO_CACHE", str(tmp_path / "cache"))
    digits_table.cache_clear()
    yield tmp_path / "cache"
    digits_table.cache_clear()


def sklearns_splits() -> dict[str, np.ndarray]:
    _, labels = load_digits_arrays()
    return {split: split_indices(labels, split) for split in SPLITS}


def refuse_scikit_learn(monkeypatch):
    def refuse(*args):
        raise AssertionError("the table was read from scikit-learn again")

    monkeypatch.setattr(digits_module, "load_digits_arrays", refuse)
    monkeypatch.setattr(digits_module, "split_indices", refuse)


def test_the_table_is_cached_and_read_back_without_scikit_learn(own_cache, monkeypatch, reference):
    expected = sklearns_splits()
    first = {split: Digits(split) for split in SPLITS}
    assert digits_cache_path().parent == own_cache / "digits" and digits_cache_path().is_file()
    digits_table.cache_clear()
    refuse_scikit_learn(monkeypatch)
    for split in SPLITS:
        again = Digits(split, image_size=16, channels=3)
        assert np.array_equal(again.indices, expected[split]) and np.array_equal(first[split].indices, expected[split])
        assert again.targets == reference[1][expected[split]].tolist()
        assert torch.equal(again.images[:, :1], Digits(split, image_size=16).images)
        assert torch.equal(first[split].images, torch.from_numpy(reference[0][expected[split]])[:, None])
    again.indices[0] = -1  # the data set's own copy: the table stays as read
    assert digits_table()[2][split][0] != -1


@pytest.mark.parametrize("damage", ["not a zip", "overlapping splits", "float indices"])
def test_a_damaged_cache_file_is_read_again_from_scikit_learn_and_replaced(own_cache, damage):
    path = digits_cache_path()
    path.parent.mkdir(parents=True)
    images, labels = load_digits_arrays()
    splits = sklearns_splits()
    if damage == "not a zip":
        path.write_bytes(b"not numpy")
    else:
        if damage == "overlapping splits":
            splits["val"] = splits["train"][:270]
        else:
            splits = {split: indices.astype(np.float64) for split, indices in splits.items()}
        with open(path, "wb") as handle:
            np.savez(handle, images=images, labels=labels, **splits)
    assert np.array_equal(Digits("val").indices, sklearns_splits()["val"])
    digits_table.cache_clear()
    assert np.array_equal(digits_module._read_table(path)[2]["val"], sklearns_splits()["val"])


def test_a_cache_that_cannot_be_written_is_skipped(own_cache):
    own_cache.write_text("a file where the cache folder would be")
    assert np.array_equal(Digits("test").indices, sklearns_splits()["test"])
    assert own_cache.read_text() == "a file where the cache folder would be"
