"""The FID accumulator's state: update, compute, reset; folders of images."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from visionzoo.metrics import FID
from visionzoo.metrics.fid import feature_fingerprint, folder_statistics, load_statistics
from visionzoo.metrics.inception import InceptionFeatures


def pooled() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())  # 12-d features


def test_reset_forgets_the_images_and_can_keep_the_real_ones():
    # before: FID had no reset(), so scoring a second generator needed a new object (AttributeError)
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(40, 3, 8, 8, generator=generator)
    first, second = torch.rand(40, 3, 8, 8, generator=generator) * 0.5, torch.rand(40, 3, 8, 8, generator=generator)
    fresh = FID(pooled())
    fresh.update(real, real=True)
    fresh.update(second, real=False)
    expected = fresh.compute()

    metric = FID(pooled(), keep_features=True)
    metric.update(real, real=True)
    metric.update(first, real=False)
    assert metric.compute() > 2 * expected
    metric.reset(keep_real=True)
    with pytest.raises(ValueError, match="at least 2 generated images, has 0"):
        metric.compute()
    metric.update(second, real=False)
    assert metric.compute() == pytest.approx(expected, rel=1e-12)
    assert sum(len(f) for f in metric.kept[False]) == 40 and sum(len(f) for f in metric.kept[True]) == 40
    metric.reset()
    with pytest.raises(ValueError, match="at least 2 real images, has 0"):
        metric.compute()
    assert metric.kept == {True: [], False: []}


def test_update_names_an_input_that_is_not_a_tensor():
    # before: AttributeError "'numpy.ndarray' object has no attribute 'dim'"
    metric = FID(pooled())
    with pytest.raises(ValueError, match="FID.update takes a Tensor.*got ndarray"):
        metric.update(np.zeros((2, 3, 8, 8), dtype=np.float32), real=True)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused_by_name(batch_size):
    # before: accepted, then update raised torch's "split_size can only be 0 if dimension size is 0" (0),
    # "split expects split_size be non-negative" (-1) or "split_with_sizes(): ... not float" (2.5)
    with pytest.raises(ValueError, match=f"FID's batch_size must be a positive integer, got {batch_size}"):
        FID(pooled(), batch_size=batch_size)


class ListOfMaps(torch.nn.Module):
    """pytorch-fid's InceptionV3 output: a list of Tensor[B, D, 1, 1]."""

    def forward(self, images):
        return [images.mean(dim=(2, 3), keepdim=True)]


@pytest.mark.parametrize("features, got", [(ListOfMaps(), "got list"),
                                           (torch.nn.AdaptiveAvgPool2d(1), r"got \(2, 3, 1, 1\)")])
def test_a_feature_module_that_does_not_return_vectors_is_named(features, got):
    # before: AttributeError "'list' object has no attribute 'double'", or FeatureStatistics' "features must be
    # [N, D]" that did not say the module was at fault
    with pytest.raises(ValueError, match=f"FID's feature module must return Tensor\\[B, D\\], {got}"):
        FID(features).update(torch.rand(2, 3, 8, 8), real=True)


def test_a_numpy_integer_batch_size_works():
    # before: update raised "split_with_sizes(): argument 'split_sizes' must be tuple of ints, not numpy.int64"
    metric = FID(pooled(), batch_size=np.int64(3))
    metric.update(torch.rand(7, 3, 8, 8), real=True)
    assert metric.real.count == 7


def test_a_folder_of_mixed_image_sizes_gives_the_same_statistics_at_any_batch_size(tmp_path):
    # before: "images of different sizes ... resize them to one size first" whenever two sizes met in one batch
    # (the default 50), while --batch-size 1 scored the folder; clean-fid scores it at any batch size
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate([(16, 16), (20, 12), (16, 16), (9, 9), (20, 12)]):
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{index}.png")
    one_at_a_time = folder_statistics(tmp_path, pooled(), batch_size=1)
    for batch_size in (2, 50):
        stats = folder_statistics(tmp_path, pooled(), batch_size=batch_size)
        assert stats.count == 5
        np.testing.assert_allclose(stats.mean.numpy(), one_at_a_time.mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(stats.covariance.numpy(), one_at_a_time.covariance.numpy(), rtol=1e-10, atol=1e-14)


def test_a_folder_of_class_subfolders_says_they_are_not_read(tmp_path):
    # before: "... holds 0 image files; FID needs at least 2", with hundreds of images one level down
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for index in range(2):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name / f"{index}.png")
    with pytest.raises(ValueError, match=r"holds 0 image files \(its subfolders cat, dog are not read; give one of "
                                         r"them, or gather the images in one folder\); FID needs at least 2"):
        folder_statistics(tmp_path, pooled())
    assert folder_statistics(tmp_path / "cat", pooled()).count == 2


def test_a_folder_of_other_files_names_them_and_the_extensions_read(tmp_path):
    """A folder of .gif frames (or of notes) was "holds 0 image files; FID needs at least 2": not saying that its
    files were there but not read, nor which files are."""
    for name in ("a.gif", "b.gif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(ValueError, match=r"holds 1 image file \(3 other files are not read: a\.gif, b\.gif, "
                                         r"notes\.txt; FID reads \.bmp, \.jpeg, \.jpg, .*\.webp files\); FID needs at "
                                         r"least 2"):
        folder_statistics(tmp_path, pooled())


def test_a_subfolder_named_like_an_image_is_not_read_as_one(tmp_path):
    # before: "image .../frames.png is a folder; give the image files in it" (pytorch-fid: IsADirectoryError)
    for index in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{index}.png")
    (tmp_path / "frames.png").mkdir()
    assert folder_statistics(tmp_path, pooled()).count == 2


class SqueezedPool(torch.nn.Module):
    """Pooled features squeezed as ``[B, D, 1, 1] -> squeeze()``: a batch of one comes out as [D]."""

    def forward(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 1).squeeze()


def test_an_update_that_fails_on_a_later_batch_adds_nothing():
    # before: the batches before the failing one were already folded in (and kept), so after the error the
    # statistics held 4 of the 5 images given, and a retry with a fixed batch size counted them twice
    metric = FID(SqueezedPool(), batch_size=2, keep_features=True)
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"must return Tensor\[B, D\], got \(3,\)"):
        metric.update(images, real=True)
    assert metric.real.count == 0 and metric.kept[True] == []
    metric.batch_size = 5
    metric.update(images, real=True)
    assert metric.real.count == 5 and sum(len(f) for f in metric.kept[True]) == 5


def test_the_feature_fingerprint_tells_resizes_and_weights_apart():
    torch.manual_seed(0)
    legacy = InceptionFeatures(resize="legacy")
    clean = InceptionFeatures(resize="clean")
    clean.load_state_dict(legacy.state_dict())
    again = InceptionFeatures(resize="legacy")
    again.load_state_dict(legacy.state_dict())
    assert feature_fingerprint(legacy).startswith("InceptionFeatures resize=legacy weights=")
    assert feature_fingerprint(again) == feature_fingerprint(legacy)
    assert feature_fingerprint(clean) == feature_fingerprint(legacy).replace("resize=legacy", "resize=clean")
    with torch.no_grad():
        again.fc.bias[0] += 1e-6
    assert feature_fingerprint(again) != feature_fingerprint(legacy)


def test_a_folder_named_like_a_statistics_file_is_not_called_missing(tmp_path):
    # before: "statistics file .../real.npz does not exist", of a folder that does
    (tmp_path / "real.npz").mkdir()
    with pytest.raises(ValueError, match=r"real\.npz is a folder, not an \.npz statistics file"):
        load_statistics(tmp_path / "real.npz")


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_batch_size_that_is_no_positive_integer_is_refused_naming_it(tmp_path, batch_size):
    # before: -1 read no image at all (statistics of 0 images, "needs at least 2 samples, have 0"), 0 and 2.5 raised
    # range()'s errors
    for index in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{index}.png")
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {batch_size}"):
        folder_statistics(tmp_path, pooled(), batch_size)


def test_an_antialiased_resizes_rounding_past_1_is_taken_and_real_excess_is_refused_with_its_digits():
    """torch's antialiased bilinear resize of a white image (CocoDetection's, torchvision's Resize) gives
    1 + 3.6e-7: FID refused it with "these span [1, 1]"; a true excess is still refused, its digits shown."""
    resized = torch.nn.functional.interpolate(torch.ones(4, 3, 45, 50), size=(16, 16), mode="bilinear",
                                              align_corners=False, antialias=True)
    assert resized.max() > 1
    metric = FID(pooled())
    metric.update(resized, real=True)
    assert metric.real.count == 4
    with pytest.raises(ValueError, match=r"FID takes images in \[0, 1\]; these span \[0, 1.001\]"):
        metric.update(torch.cat([torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 1.001)]), real=False)
    with pytest.raises(ValueError, match=r"these span \[-1e-05, -1e-05\]"):
        metric.update(torch.full((1, 3, 4, 4), -1e-5), real=False)


def test_a_refusal_shows_the_bounds_in_three_digits_unless_that_hides_the_excess():
    """Bounds were shown to 6 digits ('these span [0.208259, 254.98]'), and an excess below that precision
    (1.000002) still read as 1: 'these span [0.2, 1]'."""
    metric = FID(pooled())
    with pytest.raises(ValueError, match=r"these span \[0.2, 1.000002\] \("):
        metric.update(torch.tensor([0.2, 1.000002]).reshape(1, 1, 1, 2).expand(1, 3, 4, 2), real=True)
    with pytest.raises(ValueError, match=r"these span \[0.208, 255\] \("):
        metric.update(torch.tensor([0.20826, 254.98]).reshape(1, 1, 1, 2).expand(1, 3, 4, 2), real=True)
    with pytest.raises(ValueError, match=r"these span \[-3e-06, 0.5\] \("):
        metric.update(torch.tensor([-3e-6, 0.5]).reshape(1, 1, 1, 2).expand(1, 3, 4, 2), real=True)


def test_a_broken_link_among_the_images_is_refused_before_any_feature(tmp_path):
    """A dangling symlink (a dataset cache moved away) was read in its turn: the folder's features up to it were
    computed, minutes for a large folder, and then FID ended with 'image .../z.png does not exist'."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 60, 0, 0)).save(folder / f"{index}.png")
    (folder / "z.png").symlink_to(tmp_path / "moved" / "z.png")
    calls = []

    class Counted(torch.nn.Module):
        def forward(self, images):
            calls.append(len(images))
            return pooled()(images)

    with pytest.raises(ValueError, match=r"z.png is a link to .*moved/z.png, which does not exist"):
        folder_statistics(folder, Counted(), batch_size=1)
    assert calls == []


def test_images_holding_nan_are_refused_as_such_not_as_out_of_range():
    """A generator that diverged gives NaN pixels: FID refused one NaN among values in [0, 1] with "these span
    [nan, nan] (convert uint8 with / 255, ...)", advice about a range the images are in. It now counts the values
    that are not numbers."""
    metric = FID(pooled())
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    images[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^FID takes images in \[0, 1\]; these hold 1 NaN value$"):
        metric.update(images, real=True)
    images[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"these hold 17 NaN values"):
        metric.update(images, real=True)
    assert metric.real.count == 0


def test_an_empty_batch_adds_nothing_as_in_torchmetrics():
    # before: ValueError "FID.update takes a batch Tensor[B, C, H, W] of images in [0, 1], got (0, 3, 8, 8)", which
    # a loop over a generator's batches could hit at its remainder; torchmetrics' FID takes it as a no-op
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.rand(6, 3, 8, 8, generator=generator), torch.rand(5, 3, 8, 8, generator=generator)
    expected = FID(pooled())
    expected.update(real, real=True)
    expected.update(fake, real=False)
    metric = FID(pooled(), keep_features=True)
    for is_real, images in ((True, real), (False, fake)):
        metric.update(images[:0], real=is_real)
        metric.update(images, real=is_real)
        metric.update(images[:0], real=is_real)
    assert (metric.real.count, metric.fake.count) == (6, 5)
    assert metric.compute() == pytest.approx(expected.compute(), rel=1e-12)
    assert sum(len(f) for f in metric.kept[True]) == 6 and sum(len(f) for f in metric.kept[False]) == 5
    with pytest.raises(ValueError, match=r"FID.update takes a batch Tensor\[B, C, H, W\].*got \(0, 8, 8\)"):
        metric.update(torch.rand(0, 8, 8), real=True)


@pytest.mark.parametrize("seed", [None, 1.5, "0"])
def test_a_confidence_interval_seed_that_is_not_a_whole_number_is_refused_by_name(seed):
    # before: RuntimeError "manual_seed expected a long, but got NoneType" (or float, str) from inside torch
    generator = torch.Generator().manual_seed(0)
    metric = FID(pooled(), keep_features=True)
    metric.update(torch.rand(6, 3, 8, 8, generator=generator), real=True)
    metric.update(torch.rand(6, 3, 8, 8, generator=generator), real=False)
    with pytest.raises(ValueError, match=f"FID.confidence_interval's seed must be a whole number, got {seed!r}"):
        metric.confidence_interval(samples=3, seed=seed)
    assert metric.confidence_interval(samples=3, seed=np.int64(4)) == metric.confidence_interval(samples=3, seed=4)


@pytest.mark.parametrize("keep_features", [False, True])
@pytest.mark.parametrize("real", ["False", None, 1, torch.tensor([True, False])])
def test_a_real_flag_that_is_not_true_or_false_is_refused_and_adds_nothing(real, keep_features):
    # before: "False" was counted as real and None as generated without a word; with keep_features=True any such
    # flag raised KeyError after the features were already folded into the statistics, which then held images
    # the kept features (and so confidence_interval) did not
    metric = FID(pooled(), keep_features=keep_features)
    with pytest.raises(ValueError, match=re.escape(f"FID.update's real must be True or False, got {real!r}")):
        metric.update(torch.rand(4, 3, 8, 8), real=real)
    assert (metric.real.count, metric.fake.count) == (0, 0)
    if keep_features:
        assert metric.kept == {True: [], False: []}


def test_numpy_and_one_element_tensor_flags_name_the_side():
    generator = torch.Generator().manual_seed(0)
    metric = FID(pooled(), keep_features=True)
    metric.update(torch.rand(3, 3, 8, 8, generator=generator), real=np.bool_(True))
    metric.update(torch.rand(2, 3, 8, 8, generator=generator), real=torch.tensor(False))
    assert (metric.real.count, metric.fake.count) == (3, 2)
    assert [len(f) for f in metric.kept[True]] == [3] and [len(f) for f in metric.kept[False]] == [2]


@pytest.mark.parametrize("features, got", [(None, "got None"), (InceptionFeatures, "got the class InceptionFeatures"),
                                           (lambda images: images.mean(dim=(2, 3)), "got function")])
def test_features_that_are_not_a_module_are_refused_by_name(features, got):
    # before: AttributeError "'NoneType' object has no attribute 'eval'", or TypeError "Module.eval() missing 1
    # required positional argument: 'self'" for the class given uncalled
    with pytest.raises(ValueError, match=f"FID's features must be a torch.nn.Module .*, {got}"):
        FID(features)


def test_features_switched_to_training_mode_after_construction_are_read_in_eval_mode():
    # before: FID put its features in eval mode only when built; a feature network that a parent module's .train()
    # (a training loop holding it) switched back read every batch with its batch norms' batch statistics, which
    # made each image's features depend on its batch, and moved their running statistics for good: a silently
    # wrong FID. torchmetrics' FID keeps its Inception in eval mode (NoTrainInceptionV3.train)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten())
    images = torch.rand(8, 3, 8, 8, generator=generator)
    expected = FID(features, batch_size=3)
    expected.update(images, real=True)
    running = features[1].running_mean.clone()
    metric = FID(features, batch_size=3)
    features.train()
    metric.update(images, real=True)
    torch.testing.assert_close(metric.real.mean, expected.real.mean, rtol=0, atol=0)
    torch.testing.assert_close(features[1].running_mean, running, rtol=0, atol=0)
    assert features.training and features[1].training  # its own mode back for the loop that holds it



def test_images_are_taken_to_the_device_of_the_feature_network():
    """FID(InceptionFeatures(...).cuda()).update(cpu_images) failed in the first conv ('Input type
    (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the same'); pytorch-fid, and our folder
    statistics, take each batch to the network's device. Shown with a network on the meta device."""
    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(1, device="meta"))
            self.seen = []

        def forward(self, images):
            self.seen.append(images.device.type)
            return torch.rand(len(images), 2)

    probe = Probe()
    fid = FID(probe, batch_size=2)
    fid.update(torch.rand(3, 3, 8, 8), real=True)
    assert probe.seen == ["meta", "meta"] and fid.real.count == 3

def test_features_of_another_dimension_than_earlier_ones_are_refused_naming_both():
    # before: generated images of another size through a feature module whose output grows with it were taken, and
    # compute() said "expected mu1, mu2 of shape [D] and sigma1, sigma2 of shape [D, D]; got [12], [48], ..."; more
    # real ones said "features have 48 dimensions, expected 12", naming neither side
    generator = torch.Generator().manual_seed(0)
    metric = FID(torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten()), keep_features=True)  # 3·(H/4)² features
    metric.update(torch.rand(4, 3, 8, 8, generator=generator), real=True)
    for real, side in ((False, "generated"), (True, "real")):
        with pytest.raises(ValueError, match=f"FID's features of these {side} images have 48 dimensions, but those of "
                                             "the real images before have 12: .* one network at one image size"):
            metric.update(torch.rand(3, 3, 16, 16, generator=generator), real=real)
    assert (metric.real.count, metric.fake.count) == (4, 0) and metric.kept[False] == []
    metric.update(torch.rand(3, 3, 8, 8, generator=generator), real=False)
    assert metric.compute() >= 0


RANKS_FID_WORK = """
from visionzoo.metrics import FID

def work(rank):
    generator = torch.Generator().manual_seed(0)
    real, fake = torch.rand(41, 3, 8, 8, generator=generator), torch.rand(30, 3, 8, 8, generator=generator) * 0.8
    pooled = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    result = {}
    for sync in (True, False):
        metric = FID(pooled, sync_on_compute=sync, keep_features=True)
        metric.update(real[rank::2], real=True)  # 21 and 20 real images
        metric.update(fake[rank * 29:(rank + 1) * 29], real=False)  # 29 and 1 generated images
        if not sync:  # rank 1's one generated image has no covariance of its own
            result["False"] = metric.compute() if rank == 0 else None
        else:
            result["True"] = [metric.compute(), metric.compute()]
            result["interval"] = metric.confidence_interval(samples=20)
            result["counts"] = [metric.real.count, metric.fake.count]  # its own images, kept for more updates
    return result
"""


def test_compute_under_torch_distributed_scores_the_images_of_every_rank(two_ranks):
    """Under an initialised process group (torchrun), compute() gave each rank the FID of its own share of the
    images, unless the user merged them with FeatureStatistics.all_gather() by hand; a rank with one generated image
    could not compute at all. It now syncs every rank's statistics at compute, as torchmetrics' FID does
    (sync_on_compute=False keeps each rank's own), and every rank gets the FID of all the images."""
    results = two_ranks(RANKS_FID_WORK)

    generator = torch.Generator().manual_seed(0)
    real, fake = torch.rand(41, 3, 8, 8, generator=generator), torch.rand(30, 3, 8, 8, generator=generator) * 0.8
    whole = FID(pooled(), keep_features=True)
    whole.update(real, real=True)
    whole.update(fake[:30], real=False)
    own = FID(pooled())
    own.update(real[0::2], real=True)
    own.update(fake[:29], real=False)
    for result in results:
        assert result["True"] == pytest.approx([whole.compute()] * 2, rel=1e-10, abs=1e-12)
    assert results[0]["True"] == results[1]["True"]  # the same statistics, merged in rank order, on every rank
    assert results[0]["interval"] == results[1]["interval"]
    in_rank_order = FID(pooled(), keep_features=True)  # the kept features, gathered in rank order
    for images, real_side in ((real[0::2], True), (real[1::2], True), (fake[:29], False), (fake[29:], False)):
        in_rank_order.update(images, real=real_side)
    assert results[0]["interval"] == pytest.approx(list(in_rank_order.confidence_interval(samples=20)), rel=1e-9)
    assert results[0]["counts"] == [21, 29] and results[1]["counts"] == [20, 1]
    assert results[0]["False"] == pytest.approx(own.compute(), rel=1e-10)
    assert results[0]["False"] != pytest.approx(whole.compute(), rel=1e-3)
