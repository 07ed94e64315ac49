"""Linear probes: how much of a label a frozen representation holds, read out by a linear classifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[int]


def _numpy(values: ArrayLike) -> np.ndarray:
    return values.detach().float().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)


def _labels(values: ArrayLike, name: str) -> np.ndarray:
    """int64[N] labels; ValueError naming ``name`` for fractional or non-numeric values (not truncated)."""
    labels = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    labels = labels.reshape(-1)
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "f" and not np.all(np.mod(labels, 1) == 0)):
        raise ValueError(f"{name} must be whole numbers (class indices), got {labels[:5].tolist()!r:.80}")
    return labels.astype(np.int64)


def linear_probe_accuracy(train_features: Tensor | np.ndarray, train_labels: ArrayLike,
                          test_features: Tensor | np.ndarray, test_labels: ArrayLike, max_iter: int = 2000) -> float:
    """Test accuracy of a logistic regression fitted on standardised frozen features.

    ``train_features`` [N, D] and ``test_features`` [M, D] (Tensor or array; flattened from dim 1 when
    they have more dims), integer labels [N] and [M]. The standardisation (per-feature mean and scale)
    is fitted on the training features only.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x = _numpy(train_features).reshape(len(train_features), -1)
    test_x = _numpy(test_features)
    test_x = test_x.reshape(len(test_x), int(np.prod(test_x.shape[1:])))
    train_y, test_y = _labels(train_labels, "train_labels"), _labels(test_labels, "test_labels")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"features and labels differ in length: train {len(train_x)} vs {len(train_y)}, "
                         f"test {len(test_x)} vs {len(test_y)}")
    if len(test_x) == 0:
        raise ValueError("test_features is empty: there is nothing to score the probe on")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(train_x, train_y)
    return float(probe.score(test_x, test_y))
