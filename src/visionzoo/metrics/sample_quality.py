"""Scores of generated samples from their features: KID, Inception Score, and a bootstrap interval for FID.

- :func:`kernel_inception_distance` (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial
  kernel ``(f·g / D + 1)³``, averaged over ``subsets`` random subsets of ``subset_size`` real and
  generated samples (torchmetrics' and torch-fidelity's definition and defaults);
- :func:`inception_score` (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` from classifier logits,
  per split of the (shuffled) samples;
- :func:`fid_confidence_interval`: FID's percentile bootstrap over resampled real and generated
  features. FID is biased upwards at small sample sizes (Chong & Forsyth 2020), so a single number
  from a few hundred samples hides how far it could move; the interval shows it.

Features and logits are Tensors or NumPy arrays. Random draws use ``generator`` (default: torch's global generator, as torchmetrics does, so the same
seed gives torchmetrics' numbers).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor

from visionzoo.metrics.frechet import frechet_distance
from visionzoo.utils import check_generator, is_integer


def _tensor(values: Any, name: str) -> Tensor:
    """``values`` (a Tensor or a NumPy array) as a Tensor cut from autograd (a score needs no gradient, and
    logits taken outside ``torch.no_grad`` would make torch warn); ValueError naming ``name`` otherwise, or when
    a value is NaN or infinite (the scores would come out NaN)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        values = torch.from_numpy(values)
    if not isinstance(values, Tensor):
        raise ValueError(f"{name} must be a Tensor or a NumPy array of numbers, got {type(values).__name__}")
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} have non-finite values")
    return values.detach()


def _check_whole(value: Any, name: str) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer (Python's or NumPy's; not a bool or a float)."""
    if not is_integer(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef: float = 1.0) -> Tensor:
    """``(gamma · x yᵀ + coef) ** degree`` for Tensor[N, D] and Tensor[M, D] → Tensor[N, M]; gamma defaults to 1/D."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef) ** degree


def _check_kernel(degree: Any, gamma: Any, coef: Any) -> None:
    """ValueError naming the setting of :func:`polynomial_kernel` that gives no distance: a degree of 0 makes every
    kernel value 1 (KID 0 for any features), a NaN gamma or coef makes it NaN."""
    _check_whole(degree, "KID's degree")
    if degree < 1:
        raise ValueError(f"KID's degree must be >= 1, got {degree}")
    if gamma is not None and not (isinstance(gamma, numbers.Real) and 0 < gamma < math.inf):
        raise ValueError(f"KID's gamma must be a positive number or None, got {gamma!r}")
    if not (isinstance(coef, numbers.Real) and 0 <= coef < math.inf):
        raise ValueError(f"KID's coef must be a number >= 0, got {coef!r}")


def unbiased_mmd2(k_xx: Tensor, k_xy: Tensor, k_yy: Tensor) -> Tensor:
    """The unbiased MMD² estimate from the three kernel matrices of m samples each (diagonals left out)."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / m ** 2


def kernel_inception_distance(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: float | None = None, coef: float = 1.0,
                              generator: torch.Generator | None = None) -> tuple[float, float]:
    """KID of feature sets Tensor[N, D] (real) and Tensor[M, D] (generated): (mean, population std) over subsets.

    Sets of different dtypes (float64 real features saved earlier, float32 new ones) meet in the wider dtype, and
    never below float32: the kernel sums of half-precision features (autocast's) overflow or round away the score."""
    real, fake = _tensor(real, "KID's real features"), _tensor(fake, "KID's generated features")
    _check_whole(subsets, "KID's subsets")
    _check_whole(subset_size, "KID's subset_size")
    common = torch.promote_types(torch.promote_types(real.dtype, fake.dtype), torch.float32)
    real, fake = real.to(common), fake.to(common)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID needs features [N, D] and [M, D], got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) < subset_size:
        raise ValueError(f"KID's subset_size {subset_size} is larger than the samples ({len(real)} real, "
                         f"{len(fake)} generated); lower subset_size")
    if subset_size < 2:
        raise ValueError(f"KID needs subset_size >= 2, got {subset_size}")
    if subsets < 1:
        raise ValueError(f"KID's subsets must be >= 1, got {subsets}")
    _check_kernel(degree, gamma, coef)
    check_generator(generator, "KID's")
    scores = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:subset_size]]
        y = fake[torch.randperm(len(fake), generator=generator)[:subset_size]]
        scores.append(unbiased_mmd2(polynomial_kernel(x, x, degree, gamma, coef), polynomial_kernel(x, y, degree, gamma, coef),
                                    polynomial_kernel(y, y, degree, gamma, coef)))
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(unbiased=False))


def inception_score(logits: Tensor | np.ndarray, splits: int = 10, generator: torch.Generator | None = None) -> tuple[float, float]:
    """IS of classifier ``logits`` Tensor[N, K]: (mean, sample std) over the chunks of the shuffled samples that
    ``Tensor.chunk(splits)`` gives, as torchmetrics does: chunks of ceil(N / splits) samples, the last holding the
    rest, so fewer than ``splits`` where N is no multiple of them (N=11, splits=10: six, five of 2 and one of 1).

    For numbers comparable with published ones and torchmetrics' give
    :meth:`~visionzoo.metrics.inception.InceptionFeatures.logits_unbiased` (the classifier without its bias)."""
    logits = _tensor(logits, "the Inception Score's logits")
    _check_whole(splits, "the Inception Score's splits")
    if splits < 1:
        raise ValueError(f"the Inception Score's splits must be >= 1, got {splits}")
    if logits.dim() != 2 or len(logits) < splits:
        raise ValueError(f"the Inception Score needs logits [N, K] with N >= splits={splits}, got {tuple(logits.shape)}")
    check_generator(generator, "the Inception Score's")
    logits = logits[torch.randperm(len(logits), generator=generator)].double()
    scores = []
    for part in logits.chunk(splits):
        log_p = part.log_softmax(dim=1)
        p = log_p.exp()
        marginal = p.mean(dim=0, keepdim=True)
        scores.append((p * (log_p - marginal.log())).sum(dim=1).mean().exp())
    values = torch.stack(scores)
    return float(values.mean()), float(values.std()) if splits > 1 else 0.0


def _gaussian(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean Tensor[D] and covariance Tensor[D, D] (ddof 1) of Tensor[N, D]; torch.cov gives a 0-d one for D = 1."""
    dim = features.shape[1]
    return features.mean(0), torch.cov(features.T).reshape(dim, dim)


def fid_confidence_interval(real: Tensor | np.ndarray, fake: Tensor | np.ndarray, samples: int = 100, confidence: float = 0.95,
                            generator: torch.Generator | None = None) -> tuple[float, float]:
    """Bias-corrected bootstrap interval of FID between feature sets ``real`` Tensor[N, D] and ``fake`` Tensor[M, D].

    Both sets are resampled with replacement ``samples`` times (at least 2). A resample repeats some vectors and so
    looks less spread than the data: its FID is biased upwards, by about as much as the distance itself
    when two sets come from one distribution, and the plain percentile interval then misses the
    full-sample FID. The interval is therefore the percentile interval moved down by the bootstrap's
    bias (the mean of the resampled FIDs minus the full-sample FID), clamped at 0.
    """
    real, fake = _tensor(real, "the FID interval's real features"), _tensor(fake, "the FID interval's generated features")
    if not (isinstance(confidence, numbers.Real) and 0 < confidence < 1):
        raise ValueError(f"the FID interval's confidence must be a number in (0, 1), got {confidence!r}")
    _check_whole(samples, "the FID interval's samples")
    if samples < 2:  # one resample's FID is both ends of its interval: a width of 0, which reads as certain
        raise ValueError(f"the FID interval's samples must be >= 2 (the resamples whose spread it reads), got {samples}")
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"the FID interval needs features [N, D] and [M, D], got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"the FID interval needs at least 2 images per side, got {len(real)} real and {len(fake)} "
                         "generated (a covariance needs 2)")
    check_generator(generator, "the FID interval's")
    real, fake = real.double(), fake.double()
    full = frechet_distance(*_gaussian(real), *_gaussian(fake))
    values = []
    for _ in range(samples):
        x = real[torch.randint(len(real), (len(real),), generator=generator)]
        y = fake[torch.randint(len(fake), (len(fake),), generator=generator)]
        values.append(frechet_distance(*_gaussian(x), *_gaussian(y)))
    values = torch.tensor(values, dtype=torch.float64)
    bias = float(values.mean()) - full
    tail = (1 - confidence) / 2
    low, high = values.quantile(torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return max(0.0, low - bias), max(0.0, high - bias)
