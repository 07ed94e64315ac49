"""frechet_distance against pytorch-fid, exact cases, and the float64 feature statistics."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from visionzoo.metrics.frechet import FeatureStatistics, _psd_factor, frechet_distance

fid_score = pytest.importorskip("pytorch_fid.fid_score")
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")


def gaussian_stats(rng, n, d, shift=0.0):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n, d)) @ mix + shift + rng.normal(size=d) * 0.1
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("d", [8, 96, 200])
def test_equals_pytorch_fid(d):
    rng = np.random.default_rng(d)
    mu1, s1 = gaussian_stats(rng, 3 * d, d)
    mu2, s2 = gaussian_stats(rng, 3 * d, d, shift=0.05)
    ref = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ours == pytest.approx(
        frechet_distance(*(torch.from_numpy(a).float() for a in (mu1, s1, mu2, s2))), rel=1e-4
    )


def test_identical_gaussians_are_at_distance_zero_and_it_is_symmetric():
    rng = np.random.default_rng(0)
    mu, s = gaussian_stats(rng, 200, 32)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9 * np.trace(s)
    mu2, s2 = gaussian_stats(rng, 200, 32)
    assert frechet_distance(mu, s, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu, s), rel=1e-10)


def test_a_set_against_itself_with_fewer_samples_than_dimensions_is_at_distance_zero_not_below():
    # before: -1.6e-06 (pytorch-fid: -2e-05), which visionzoo fid printed as "FID: -0.000002"
    x = np.random.default_rng(0).normal(size=(6, 128))
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert fid_score.calculate_frechet_distance(mu, sigma, mu, sigma) < 0
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0


@pytest.mark.parametrize("d", [50, 520])  # 520: the blocked product path
@pytest.mark.parametrize("singular", [False, True])
def test_commuting_covariances_give_the_exact_value(d, singular):
    """S1 = Q D1 Q^T and S2 = Q D2 Q^T commute: tr sqrt(S1 S2) = sum sqrt(d1 d2).

    With zeros in D1 (rank deficient, as with fewer samples than dimensions) rounding leaves ~1e-16
    eigenvalues whose square roots (~1e-8) bound the accuracy."""
    rng = np.random.default_rng(d)
    q = np.eye(d)
    for _ in range(2):  # two Householder reflections: a dense orthogonal matrix, cheaply
        v = rng.normal(size=d)
        q = q - 2 * np.outer(q @ v, v) / (v @ v)
    d1 = rng.uniform(0.5, 2, d)
    if singular:
        d1[::3] = 0
    d2 = rng.uniform(0.5, 2, d)
    s1, s2 = (q * d1) @ q.T, (q * d2) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + d1.sum() + d2.sum() - 2 * np.sqrt(d1 * d2).sum()
    rel = 1e-8 if singular else 1e-11
    # the singular case takes the eigendecomposition path, the other the Cholesky one
    assert _psd_factor(torch.from_numpy((s1 + s1.T) / 2))[1] is not singular
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=rel)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=rel)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="expected mu1, mu2 of shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2 has non-finite values"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1, np.nan], [0, 1]]))


@pytest.mark.parametrize("scale", ["mu", "sigma"])
def test_statistics_too_large_for_float64_raise_instead_of_giving_inf(scale):
    """Statistics whose distance overflows float64 (an .npz with mu 1e200) gave FID inf, and sigmas of 1e300 a
    LinAlgError from eigvalsh ('failed to converge'); both now say that the statistics are too large."""
    mu, sigma = np.full(4, 1e200 if scale == "mu" else 0.0), np.eye(4) * (1e300 if scale == "sigma" else 1.0)
    with pytest.raises(ValueError, match=r"too large for float64 \(largest \|mu\| 1e\+200, largest \|sigma\| 1\)"
                       if scale == "mu" else r"too large for float64 \(largest \|mu\| 0, largest \|sigma\| 1e\+300\)"):
        frechet_distance(mu, sigma, -mu, sigma)


def test_feature_statistics_match_numpy_in_batches_and_merges():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(1000, 24)) * 3 + 1e4).astype(np.float32)  # a large offset: cancellation-prone
    ref_mean, ref_cov = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)
    a, b = FeatureStatistics(), FeatureStatistics()
    for chunk in np.array_split(x[:700], 9):
        a.update(torch.from_numpy(chunk))
    b.update(x[700:])
    merged = FeatureStatistics.from_state_dict(a.state_dict()).merge(b)
    one = FeatureStatistics().update(x)
    for stats in (merged, one):
        assert stats.count == 1000
        np.testing.assert_allclose(stats.mean.numpy(), ref_mean, rtol=1e-13)
        np.testing.assert_allclose(stats.covariance.numpy(), ref_cov, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="expected 24"):
        a.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = FeatureStatistics().update(np.zeros((1, 3))).covariance


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_feature_statistics_take_half_precision_features(dtype):
    # before: bfloat16 features (Inception under CPU autocast) raised "Got unsupported ScalarType BFloat16"
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(3)).to(dtype)
    stats = FeatureStatistics().update(x)
    np.testing.assert_allclose(stats.mean.numpy(), x.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance.numpy(), np.cov(x.double().numpy(), rowvar=False), rtol=1e-10)


def test_all_gather_merges_the_statistics_of_every_rank(monkeypatch):
    """Two ranks' states, as torch.distributed.all_gather_object would hand them over."""
    xs = [np.random.default_rng(r).normal(size=(50 + 10 * r, 6)) for r in range(2)]
    other = FeatureStatistics().update(xs[1]).state_dict()

    def fake_all_gather_object(out, state, group=None):
        out[0], out[1] = state, other

    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "all_gather_object", fake_all_gather_object)
    merged = FeatureStatistics().update(xs[0]).all_gather()
    x = np.concatenate(xs)
    assert merged.count == 110
    np.testing.assert_allclose(merged.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance.numpy(), np.cov(x, rowvar=False), rtol=1e-12)


def test_non_finite_features_raise():
    x = np.ones((4, 3))
    x[2, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        FeatureStatistics().update(x)


def test_sigmas_that_are_not_covariances_are_refused_where_pytorch_fid_fails_or_errs():
    zeros, eye = np.zeros(2), np.eye(2)
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1
    for s1, s2, message in ((-eye, eye, "sigma1 is not positive semi-definite"),
                            (eye, indefinite, "sigma2 is not positive semi-definite"),
                            (indefinite, eye, "sigma1 is not positive semi-definite")):
        with pytest.raises(ValueError, match="Imaginary component"):
            fid_score.calculate_frechet_distance(zeros, s1, zeros, s2)
        with pytest.raises(ValueError, match=message):
            frechet_distance(zeros, s1, zeros, s2)
    asymmetric = np.array([[1.0, 0.0], [9.0, 1.0]])  # pytorch-fid: 0 here; ours read one triangle: -10.8
    with pytest.raises(ValueError, match="sigma2 is not symmetric"):
        frechet_distance(zeros, eye, zeros, asymmetric)


def test_a_sigma2_negative_outside_a_singular_sigma1s_range_is_refused_where_pytorch_fid_gives_a_number():
    zeros = np.zeros(3)
    sigma1 = np.diag([1.0, 0.0, 0.0])
    sigma2 = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0], [0.0, 2.0, 1.0]])  # eigenvalues 1, 3, -1
    assert fid_score.calculate_frechet_distance(zeros, sigma1, zeros, sigma2) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="sigma2 is not positive semi-definite"):
        frechet_distance(zeros, sigma1, zeros, sigma2)  # before: 2.0 as well
    with pytest.raises(ValueError, match="sigma2 is not positive semi-definite"):
        frechet_distance(zeros, np.zeros((3, 3)), zeros, sigma2)
    assert frechet_distance(zeros, np.zeros((3, 3)), zeros, np.zeros((3, 3))) == 0.0


def test_float32_rank_deficient_covariances_are_not_mistaken_for_bad_ones():
    # fewer samples than dimensions, rounded to float32: zero eigenvalues come out as ±1e-7 noise
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 64, generator=generator), torch.randn(12, 64, generator=generator) + 0.3
    exact = frechet_distance(x.double().mean(0), torch.cov(x.double().T), y.double().mean(0), torch.cov(y.double().T))
    rounded = frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))
    assert rounded == pytest.approx(exact, rel=1e-4)
