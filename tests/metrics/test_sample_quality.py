"""KID and Inception Score equal torchmetrics' on the same features and seed; FID's bootstrap interval."""

import warnings

import numpy as np
import pytest
import torch
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from visionzoo.metrics import frechet_distance
from visionzoo.metrics.sample_quality import (
    fid_confidence_interval,
    inception_score,
    kernel_inception_distance,
)


def features(seed: int, count: int, dim: int = 16, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_kid_equals_torchmetrics_with_the_same_seed():
    real, fake = features(0, 60), features(1, 50, shift=0.3)
    reference = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=7, subset_size=20)
    reference.real_features, reference.fake_features = [real], [fake]
    torch.manual_seed(5)
    expected_mean, expected_std = reference.compute()
    torch.manual_seed(5)
    mean, std = kernel_inception_distance(real, fake, subsets=7, subset_size=20)
    assert mean == pytest.approx(float(expected_mean), rel=1e-10) and std == pytest.approx(float(expected_std), rel=1e-10)
    same, _ = kernel_inception_distance(features(8, 400), features(9, 400), subsets=3, subset_size=400)
    far, _ = kernel_inception_distance(features(8, 400), features(9, 400, shift=0.3), subsets=3, subset_size=400)
    assert abs(same) < 0.05 * far  # unbiased: near 0 for two samples of one distribution
    with pytest.raises(ValueError, match="subset_size 100 is larger"):
        kernel_inception_distance(real, fake, subset_size=100)


def test_inception_score_equals_torchmetrics_with_the_same_seed():
    logits = features(2, 90, dim=12) * 3
    reference = InceptionScore(feature=torch.nn.Identity(), splits=3)
    reference.features = [logits]
    torch.manual_seed(7)
    expected_mean, expected_std = reference.compute()
    torch.manual_seed(7)
    mean, std = inception_score(logits, splits=3)
    assert mean == pytest.approx(float(expected_mean), rel=1e-10) and std == pytest.approx(float(expected_std), rel=1e-10)
    confident = torch.eye(12).repeat(5, 1) * 50  # every class predicted with certainty, equally often
    assert inception_score(confident, splits=1)[0] == pytest.approx(12.0, rel=1e-6)
    with pytest.raises(ValueError, match="N >= splits=10"):
        inception_score(logits[:5])


def test_inception_score_averages_over_the_chunks_torch_gives_fewer_than_splits_as_torchmetrics():
    # the docstring said "over splits chunks": 11 samples in 10 splits are 6 chunks (five of 2, one of 1)
    logits = features(5, 11, dim=6) * 3
    reference = InceptionScore(feature=torch.nn.Identity(), splits=10)
    reference.features = [logits]
    torch.manual_seed(3)
    expected = reference.compute()
    mean, std = inception_score(logits, splits=10, generator=torch.Generator().manual_seed(3))
    assert (mean, std) == pytest.approx((float(expected[0]), float(expected[1])), rel=1e-10)
    shuffled = logits[torch.randperm(11, generator=torch.Generator().manual_seed(3))].double()
    chunks = shuffled.chunk(10)
    assert [len(chunk) for chunk in chunks] == [2, 2, 2, 2, 2, 1]
    scores = torch.tensor([inception_score(chunk, splits=1)[0] for chunk in chunks], dtype=torch.float64)
    assert (mean, std) == pytest.approx((float(scores.mean()), float(scores.std())), rel=1e-10)


def test_fid_interval_brackets_the_full_sample_fid_and_narrows_with_more_samples():
    real, fake = features(3, 400, dim=8), features(4, 400, dim=8, shift=0.5)
    fid = frechet_distance(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T))
    low, high = fid_confidence_interval(real, fake, samples=60, generator=torch.Generator().manual_seed(0))
    assert low < fid < high
    small_low, small_high = fid_confidence_interval(real[:50], fake[:50], samples=60,
                                                    generator=torch.Generator().manual_seed(0))
    assert small_high - small_low > high - low
    again = fid_confidence_interval(real, fake, samples=60, generator=torch.Generator().manual_seed(0))
    assert again == (low, high)


def test_fid_interval_brackets_a_small_fid_between_two_samples_of_one_distribution():
    real, other = features(3, 300, dim=16), features(5, 300, dim=16)
    fid = frechet_distance(real.mean(0), torch.cov(real.T), other.mean(0), torch.cov(other.T))
    low, high = fid_confidence_interval(real, other, samples=100, generator=torch.Generator().manual_seed(0))
    assert low <= fid < high  # the plain percentile interval lies wholly above: resamples add duplicates


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kid_of_half_precision_features_is_computed_in_float32(dtype):
    # before: the kernel sums ran in the features' dtype: float16 overflowed to (nan, nan) and bfloat16 gave
    # (5.5, 0.0) where the same values in float32 give 5.005 ± 5e-6
    real, fake = (features(0, 100) * 2).abs().to(dtype), (features(1, 100) * 2.2).abs().to(dtype)
    torch.manual_seed(4)
    expected = kernel_inception_distance(real.float(), fake.float(), subsets=3, subset_size=100)
    torch.manual_seed(4)
    assert kernel_inception_distance(real, fake, subsets=3, subset_size=100) == expected


def test_non_finite_features_or_logits_are_refused_by_name():
    # before: KID and IS gave (nan, nan); the FID interval said "mu1 has non-finite values"
    vectors, bad = features(0, 20, dim=4), features(1, 20, dim=4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="KID's generated features have non-finite values"):
        kernel_inception_distance(vectors, bad, subsets=2, subset_size=10)
    with pytest.raises(ValueError, match="the FID interval's real features have non-finite values"):
        fid_confidence_interval(bad.numpy(), vectors, samples=2)
    bad[3, 1] = float("inf")
    with pytest.raises(ValueError, match="the Inception Score's logits have non-finite values"):
        inception_score(bad, splits=2)


def test_parameter_checks_name_the_parameter():
    vectors = features(0, 20, dim=4)
    with pytest.raises(ValueError, match="splits must be >= 1, got 0"):
        inception_score(vectors, splits=0)
    with pytest.raises(ValueError, match="subsets must be >= 1, got 0"):
        kernel_inception_distance(vectors, vectors, subsets=0, subset_size=10)
    for samples in (0, 1):  # one resample gave the zero-width interval (x, x), which reads as certain
        with pytest.raises(ValueError, match=f"the FID interval's samples must be >= 2 .*, got {samples}$"):
            fid_confidence_interval(vectors, vectors, samples=samples)
    low, high = fid_confidence_interval(vectors, features(1, 20, dim=4), samples=2,
                                        generator=torch.Generator().manual_seed(0))
    assert low < high
    with pytest.raises(ValueError, match="at least 2 images per side, got 1 real and 20 generated"):
        fid_confidence_interval(vectors[:1], vectors, samples=5)
    with pytest.raises(ValueError, match=r"features \[N, D\] and \[M, D\]"):
        fid_confidence_interval(vectors, vectors[:, :3], samples=5)


@pytest.mark.parametrize("kernel, message", [
    (dict(degree=0), "KID's degree must be >= 1, got 0"),
    (dict(degree=2.5), "KID's degree must be a whole number, got 2.5"),
    (dict(gamma=float("nan")), "KID's gamma must be a positive number or None, got nan"),
    (dict(gamma=-1.0), "KID's gamma must be a positive number or None, got -1.0"),
    (dict(coef=float("nan")), "KID's coef must be a number >= 0, got nan"),
])
def test_kid_kernel_settings_that_give_no_distance_are_refused(kernel, message):
    # before: degree=0 made every kernel value 1 (KID 0 for any features), NaN gamma or coef gave KID NaN, silently;
    # torchmetrics refuses them
    vectors = features(0, 20, dim=4)
    with pytest.raises(ValueError, match=message):
        kernel_inception_distance(vectors, features(1, 20, dim=4, shift=1.0), subsets=2, subset_size=10, **kernel)


def test_counts_that_are_not_whole_numbers_are_refused_by_name():
    # before: TypeErrors from inside torch ("slice indices must be integers", "chunk(): argument 'chunks' must be
    # int, not float", "'float' object cannot be interpreted as an integer")
    vectors = features(0, 30, dim=4)
    for call, message in ((lambda: kernel_inception_distance(vectors, vectors, subsets=2, subset_size=10.0),
                           "KID's subset_size must be a whole number, got 10.0"),
                          (lambda: kernel_inception_distance(vectors, vectors, subsets=2.5, subset_size=10),
                           "KID's subsets must be a whole number, got 2.5"),
                          (lambda: inception_score(vectors, splits=True), "splits must be a whole number, got True"),
                          (lambda: fid_confidence_interval(vectors, vectors, samples=2.0),
                           "the FID interval's samples must be a whole number, got 2.0")):
        with pytest.raises(ValueError, match=message):
            call()
    seeded = [inception_score(vectors, splits=splits, generator=torch.Generator().manual_seed(0))
              for splits in (np.int64(3), 3)]  # NumPy's integers are whole numbers
    assert seeded[0] == seeded[1]


def test_kid_of_float64_and_float32_features_and_numpy_arrays():
    # before: float64 real features with float32 generated ones raised "expected m1 and m2 to have the same
    # dtype" from inside a matmul, and NumPy arrays "'numpy.ndarray' object has no attribute 'dim'"
    real, fake = features(0, 40), features(1, 40, shift=0.3)
    torch.manual_seed(3)
    expected = kernel_inception_distance(real, fake.float().double(), subsets=4, subset_size=20)
    torch.manual_seed(3)
    assert kernel_inception_distance(real, fake.float(), subsets=4, subset_size=20) == expected
    torch.manual_seed(3)
    assert kernel_inception_distance(real.numpy(), fake.float().double().numpy(), subsets=4, subset_size=20) == expected
    scores = [inception_score(x, splits=2, generator=torch.Generator().manual_seed(0)) for x in (real, real.numpy())]
    assert scores[0] == scores[1]
    interval = fid_confidence_interval(real.numpy(), fake.numpy(), samples=5, generator=torch.Generator().manual_seed(0))
    assert interval == fid_confidence_interval(real, fake, samples=5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="KID's real features must be a Tensor or a NumPy array of numbers, got list"):
        kernel_inception_distance([[0.0, 1.0]], fake)


def test_scores_of_logits_that_require_grad_warn_nothing():
    """The README's inception_score(fid.features.logits_unbiased(images)), called outside torch.no_grad, warned
    'Converting a tensor with requires_grad=True to a scalar' (as did KID and the FID interval on such features)."""
    real, fake = features(12, 40), features(13, 30, shift=0.2)
    expected = (kernel_inception_distance(real, fake, subsets=2, subset_size=20, generator=torch.Generator().manual_seed(0)),
                inception_score(real, splits=2, generator=torch.Generator().manual_seed(0)),
                fid_confidence_interval(real, fake, samples=5, generator=torch.Generator().manual_seed(0)))
    real.requires_grad_(), fake.requires_grad_()
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch gives this warning once per process; here every time
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = (kernel_inception_distance(real, fake, subsets=2, subset_size=20, generator=torch.Generator().manual_seed(0)),
                   inception_score(real, splits=2, generator=torch.Generator().manual_seed(0)),
                   fid_confidence_interval(real, fake, samples=5, generator=torch.Generator().manual_seed(0)))
    finally:
        torch.set_warn_always(warn_always)
    assert got == expected


def test_fid_interval_of_one_dimensional_features():
    # before: torch.cov of [1, N] is 0-d, so frechet_distance raised "expected mu1, mu2 of shape [D] and sigma1, sigma2
    # of shape [D, D]; got [1], [1], [], []", although FID of such features computes
    real, fake = features(3, 40, dim=1), features(4, 40, dim=1, shift=0.5)
    fid = frechet_distance(real.mean(0), real.var()[None, None], fake.mean(0), fake.var()[None, None])
    low, high = fid_confidence_interval(real, fake, samples=50, generator=torch.Generator().manual_seed(0))
    assert low < fid < high and fid > 0.1


def test_a_generator_that_is_not_a_torch_generator_is_refused_by_name():
    # before: TypeError "randperm() received an invalid combination of arguments - got (int, generator=int) ..." (or
    # randint's) from inside torch, for a seed given where the Generator goes
    vectors = features(0, 20, dim=4)
    for call, who in ((lambda g: kernel_inception_distance(vectors, vectors, subsets=2, subset_size=10, generator=g),
                       "KID's"),
                      (lambda g: inception_score(vectors, splits=2, generator=g), "the Inception Score's"),
                      (lambda g: fid_confidence_interval(vectors, vectors, samples=2, generator=g), "the FID interval's")):
        with pytest.raises(ValueError, match=f"{who} generator must be a torch.Generator or None, got 0 "
                                             r"\(seed one with torch.Generator\(\).manual_seed\(0\)\)"):
            call(0)
        assert call(torch.Generator().manual_seed(3)) == call(torch.Generator().manual_seed(3))


@pytest.mark.parametrize("confidence", ["0.9", None, float("nan"), 1.0])
def test_a_confidence_that_is_not_a_number_in_the_unit_interval_is_refused_by_name(confidence):
    # before: "0.9" and None raised TypeError "'<' not supported between instances of 'int' and 'str'" (NoneType)
    vectors = features(0, 20, dim=4)
    with pytest.raises(ValueError, match=r"the FID interval's confidence must be a number in \(0, 1\), got "):
        fid_confidence_interval(vectors, vectors, samples=2, confidence=confidence)
