"""Fréchet distance between Gaussians (the FID formula) and a float64 feature-statistics accumulator.

The distance between N(mu1, S1) and N(mu2, S2) is ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)``.
pytorch-fid takes a general matrix square root of S1 S2 (scipy's ``sqrtm``), which is the cost.
Only the trace is needed: with S1 = F F^T (a Cholesky factor), F^T S2 F is symmetric positive
semi-definite and has the eigenvalues of S1 S2, so the trace is the sum of the square roots of
its eigenvalues: one Cholesky, two products and one symmetric eigenvalue problem, in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

_BLOCK = 512  # below this size two plain products beat splitting off the triangular blocks
# Relative tolerances: a covariance computed in float32 is symmetric and PSD to ~1e-7 of its largest
# entry (eigenvalue); anything beyond these is a wrong matrix, not rounding.
SYMMETRY_TOLERANCE = 1e-5
_NEGATIVE_EIGENVALUE_TOLERANCE = 1e-5


def _float64(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            t = torch.from_numpy(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an array of numbers, got {type(x).__name__}") from None
    # a NaN or inf reaches the sum; only when the sum is not finite look at every element
    if not math.isfinite(float(t.sum())) and not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite values")
    return t


def asymmetry(sigma: Tensor) -> float:
    """max |sigma - sigma^T| relative to max |sigma| for a square Tensor[D, D] (0 for a zero matrix)."""
    scale = float(sigma.abs().max()) if sigma.numel() else 0.0
    return float((sigma - sigma.T).abs().max()) / scale if scale > 0 else 0.0


def _check_not_negative(eigenvalues: Tensor, what: str) -> None:
    """ValueError when ascending ``eigenvalues`` go below zero by more than rounding explains."""
    if not eigenvalues.numel():
        return
    scale = float(eigenvalues.abs().max())
    if float(eigenvalues[0]) < -_NEGATIVE_EIGENVALUE_TOLERANCE * scale:
        raise ValueError(f"{what} is not positive semi-definite (eigenvalue {float(eigenvalues[0]):.3g}, "
                         f"largest magnitude {scale:.3g}); a covariance matrix is")


def is_positive_semidefinite(sigma: Tensor) -> bool:
    """Whether a symmetric float64 Tensor[D, D] has no eigenvalue below -1e-5 × its trace (never stricter than
    :func:`trace_sqrt_product`'s -1e-5 × the largest eigenvalue): a Cholesky factorisation of sigma shifted up
    by that much succeeds, several times cheaper than its eigenvalues."""
    trace = float(sigma.diagonal().sum())
    if trace <= 0:  # a negative variance, or all zero: then so must every covariance be
        return trace == 0 and not bool(sigma.any())
    shift = torch.eye(sigma.shape[0], dtype=sigma.dtype) * (_NEGATIVE_EIGENVALUE_TOLERANCE * trace)
    return int(torch.linalg.cholesky_ex(sigma + shift)[1]) == 0


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _psd_factor(sigma: Tensor) -> tuple[Tensor, bool]:
    """(F, lower) with F F^T = sigma: the Cholesky factor (lower triangular), or for a singular
    sigma V diag(sqrt(max(w, 0))) from its eigendecomposition (not triangular)."""
    factor, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0:
        return factor, True
    with _one_thread():  # see trace_sqrt_product
        w, v = torch.linalg.eigh(sigma)
    _check_not_negative(w, "sigma1")
    return v * w.clamp(min=0).sqrt(), False


def _congruence_lower(factor: Tensor, sigma: Tensor, triangular: bool) -> Tensor:
    """F^T sigma F for a symmetric sigma [D, D]; with a lower-triangular F only the lower triangle
    is computed, in half blocks that skip F's zero block (5/8 of the work of two full products)."""
    n = factor.shape[0]
    if not triangular or n < _BLOCK:
        return factor.T @ sigma @ factor
    h = n // 2
    f11, f21, f22 = factor[:h, :h], factor[h:, :h], factor[h:, h:]
    b_left = sigma[:, :h] @ f11 + sigma[:, h:] @ f21  # (sigma F)[:, :h]
    b_right = sigma[:, h:] @ f22  # (sigma F)[:, h:]
    out = torch.empty(n, n, dtype=sigma.dtype)
    out[:h, :h] = f11.T @ b_left[:h] + f21.T @ b_left[h:]
    out[h:, :h] = f22.T @ b_left[h:]
    out[h:, h:] = f22.T @ b_right[h:]
    out[:h, h:] = out[h:, :h].T
    return out


def trace_sqrt_product(sigma1: Tensor, sigma2: Tensor) -> float:
    """tr((sigma1 sigma2)^1/2) for symmetric positive semi-definite float64 [D, D] matrices.

    With the Cholesky factor sigma1 = L L^T, the symmetric L^T sigma2 L has the eigenvalues of
    sigma1 sigma2; the answer is the sum of their square roots. Only its lower triangle is formed,
    and the eigenvalues run on one thread: the tridiagonal reduction synchronises its threads at
    every column, which buys little on an idle machine and costs several times over on a busy one.

    Singular (rank-deficient) matrices, e.g. covariances of fewer samples than dimensions, are
    handled exactly: their factor comes from the eigendecomposition with eigenvalues clipped at 0,
    so no ``eps * I`` is added (pytorch-fid adds ``1e-6 * I`` to both only when its ``sqrtm``
    fails). Tiny negative eigenvalues from rounding are clipped to 0; larger ones (a matrix that is not
    positive semi-definite, where pytorch-fid's ``sqrtm`` turns complex and it raises) raise ValueError.
    """
    factor, triangular = _psd_factor(sigma1)
    if not triangular and not is_positive_semidefinite(sigma2):
        # F^T sigma2 F only sees sigma2 on sigma1's range; a negative direction outside it would pass unseen
        raise ValueError("sigma2 is not positive semi-definite; a covariance matrix is")
    inner = _congruence_lower(factor, sigma2, triangular)
    with _one_thread():
        eigenvalues = torch.linalg.eigvalsh(inner)  # reads the lower triangle
    _check_not_negative(eigenvalues, "sigma2")  # F^T sigma2 F has a negative eigenvalue only if sigma2 has
    return float(eigenvalues.clamp(min=0).sqrt().sum())


# Bound on |mu1 - mu2|^2 D and on the entries of sigma1 sigma2 (|sigma|^2 D^2) for the distance to stay finite in
# float64 (max ~1.8e308), with room for the sums over D.
FLOAT64_BUDGET = 1e300


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid's
    ``calculate_frechet_distance`` (within ~1e-10 relative where its ``sqrtm`` is accurate).

    mu1, mu2: [D]; sigma1, sigma2: [D, D] symmetric positive semi-definite; NumPy arrays, tensors
    or lists, computed in float64 on the CPU. Returns a Python float, never negative: the distance is not
    (tr (S1 S2)^1/2 <= (tr S1 + tr S2) / 2), so rounding below 0 (about -1e-6 for a set against itself with
    fewer samples than dimensions; pytorch-fid's -1e-5) gives 0. Raises ValueError on shape
    mismatches, non-finite values, sigmas that are not symmetric (beyond :data:`SYMMETRY_TOLERANCE`
    relative) or not positive semi-definite. sigma1's lower triangle is factored and sigma2 multiplied
    as given.
    """
    m1, m2 = _float64(mu1, "mu1").reshape(-1), _float64(mu2, "mu2").reshape(-1)
    s1, s2 = _float64(sigma1, "sigma1"), _float64(sigma2, "sigma2")
    d = m1.numel()
    if m2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected mu1, mu2 of shape [D] and sigma1, sigma2 of shape [D, D]; got {list(m1.shape)}, "
            f"{list(m2.shape)}, {list(s1.shape)}, {list(s2.shape)}"
        )
    for name, sigma in (("sigma1", s1), ("sigma2", s2)):
        if asymmetry(sigma) > SYMMETRY_TOLERANCE:
            raise ValueError(f"{name} is not symmetric (max |S - S^T| / max |S| = {asymmetry(sigma):.3g}); "
                             "a covariance matrix is")
    largest_mu, largest_sigma = float(max(m1.abs().max(), m2.abs().max())), float(max(s1.abs().max(), s2.abs().max()))
    if 4 * largest_mu * largest_mu * d > FLOAT64_BUDGET or largest_sigma * largest_sigma * d * d > FLOAT64_BUDGET:
        raise ValueError(f"the statistics are too large for float64 (largest |mu| {largest_mu:.3g}, largest |sigma| "
                         f"{largest_sigma:.3g}): their distance would overflow; a feature network's are not")
    diff = m1 - m2
    return max(0.0, float(diff @ diff + s1.trace() + s2.trace()) - 2.0 * trace_sqrt_product(s1, s2))


class FeatureStatistics:
    """Running mean and covariance of feature vectors in float64, mergeable across workers.

    ``update(features)`` takes a Tensor or array [N, D] (any float dtype; converted to float64 before
    any arithmetic) and folds the batch in with the pairwise (Chan et al.) update: per batch, its
    mean and centred scatter, then one rank-one correction, so no large sums of squares cancel.
    ``mean``: Tensor float64[D]; ``covariance``: Tensor float64[D, D] with ``ddof=1`` (``np.cov``,
    what pytorch-fid uses). ``merge(other)`` folds in another accumulator (e.g. from another process:
    send ``state_dict()``, rebuild with ``from_state_dict``, merge); ``all_gather()`` does that over
    an initialised ``torch.distributed`` group. Non-finite features raise ValueError.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.count = 0
        self._mean: np.ndarray | None = None
        self._scatter: np.ndarray | None = None

    def update(self, features: Any) -> FeatureStatistics:
        if isinstance(features, Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()  # NumPy has no bfloat16
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {list(x.shape)}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, expected {self.dim}")
        if x.shape[0] == 0:
            return self
        mean = x.mean(axis=0)
        if not np.isfinite(mean).all():  # any NaN or inf in the batch reaches its mean
            raise ValueError("features have non-finite values")
        centred = x - mean
        return self._fold(x.shape[0], mean, centred.T @ centred)  # NumPy uses syrk for X^T X

    def _fold(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> FeatureStatistics:
        if self.count == 0:
            self.count, self._mean, self._scatter = count, mean.copy(), scatter.copy()
            return self
        total = self.count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._scatter = self._scatter + scatter + np.outer(delta, delta) * (self.count * count / total)
        self.count = total
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Fold ``other``'s samples into this accumulator (in place; returns self)."""
        if other.count == 0:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim} dimensions into {self.dim}")
        self.dim = other.dim
        return self._fold(other.count, other._mean, other._scatter)

    @property
    def mean(self) -> Tensor:
        if self._mean is None:
            raise ValueError("no features seen yet")
        return torch.from_numpy(self._mean)

    @property
    def covariance(self) -> Tensor:
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 samples, have {self.count}")
        return torch.from_numpy(self._scatter / (self.count - 1))

    def state_dict(self) -> dict[str, Any]:
        """Plain data (counts and NumPy arrays) to send to another process."""
        return {"dim": self.dim, "count": self.count, "mean": self._mean, "scatter": self._scatter}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureStatistics:
        stats = cls(state["dim"])
        stats.count = int(state["count"])
        if stats.count:
            stats._mean = np.asarray(state["mean"], dtype=np.float64)
            stats._scatter = np.asarray(state["scatter"], dtype=np.float64)
        return stats

    def all_gather(self, group: Any = None) -> FeatureStatistics:
        """The statistics of every rank's samples (merged in rank order) over ``torch.distributed``."""
        import torch.distributed as dist

        states: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, self.state_dict(), group=group)
        merged = FeatureStatistics(self.dim)
        for state in states:
            merged.merge(FeatureStatistics.from_state_dict(state))
        return merged
