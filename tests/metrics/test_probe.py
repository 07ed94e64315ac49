import numpy as np
import pytest
import torch

from visionzoo.metrics import linear_probe_accuracy


def _clusters(n: int, seed: int, informative: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    features = torch.randn(n, 2, 4, generator=generator)  # flattened to 8 features by the probe
    if informative:
        features[:, 0, 0] += 6.0 * labels  # only one feature carries the label, on a large offset scale
    features[:, 1] *= 1000.0  # standardisation keeps these loud, useless features from dominating
    return features, labels


def test_a_linearly_separable_label_is_read_out_and_noise_is_not():
    train, test = _clusters(300, 0, True), _clusters(300, 1, True)
    assert linear_probe_accuracy(*train, *test) > 0.97
    noise_train, noise_test = _clusters(300, 0, False), _clusters(300, 1, False)
    assert linear_probe_accuracy(*noise_train, *noise_test) < 0.5


def test_accepts_numpy_and_lists_and_checks_lengths():
    features, labels = _clusters(200, 2, True)
    as_numpy = linear_probe_accuracy(features.numpy(), labels.tolist(), features.numpy(), labels.numpy())
    assert as_numpy == linear_probe_accuracy(features, labels, features, labels)
    with pytest.raises(ValueError, match="differ in length: train 200 vs 199"):
        linear_probe_accuracy(features, labels[:-1], features, labels)
    assert isinstance(as_numpy, float) and 0.0 <= as_numpy <= 1.0 and not np.isnan(as_numpy)


def test_fractional_labels_and_an_empty_test_set_are_refused_by_name():
    # before: labels 0.5 and 1.5 were truncated to 0 and 1 and scored, and an empty test set raised
    # "cannot reshape array of size 0 into shape (0,newaxis)"
    features, labels = _clusters(60, 3, True)
    with pytest.raises(ValueError, match=r"train_labels must be whole numbers.*0\.5"):
        linear_probe_accuracy(features, labels.double() + 0.5, features, labels)
    with pytest.raises(ValueError, match="test_labels must be whole numbers"):
        linear_probe_accuracy(features, labels, features, ["a"] * 60)
    with pytest.raises(ValueError, match="test_features is empty"):
        linear_probe_accuracy(features, labels, features[:0], labels[:0])
    whole = linear_probe_accuracy(features, labels.double(), features, labels.float())
    assert whole == linear_probe_accuracy(features, labels, features, labels)
