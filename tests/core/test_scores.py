"""Balanced accuracy and macro-F1 from a confusion matrix agree with scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score
from torch import nn
from torch.utils.data import TensorDataset

from trainer.core.scores import balanced_accuracy, confusion_matrix, macro_f1


def _confusion(y, p, k):
    c = np.zeros((k, k), dtype=np.int64)
    np.add.at(c, (y, p), 1)
    return c


@pytest.mark.parametrize("seed, k, skew", [(0, 2, 0.5), (1, 3, 0.9), (2, 5, 0.7), (3, 4, 0.0)])
def test_scores_match_scikit_learn(seed, k, skew):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, 200)
    p = np.where(rng.random(200) < skew, 0, rng.integers(0, k, 200))  # a model that leans on class 0
    c = _confusion(y, p, k)
    assert balanced_accuracy(c) == pytest.approx(balanced_accuracy_score(y, p))
    assert macro_f1(c) == pytest.approx(f1_score(y, p, average="macro", labels=sorted(set(y) | set(p))))


def test_always_the_majority_class_is_plain_accurate_but_not_balanced():
    c = np.array([[90, 0], [10, 0]])  # 90% accuracy
    assert balanced_accuracy(c) == 0.5
    assert macro_f1(c) == pytest.approx((2 * 90 / 190 + 0) / 2)


@pytest.mark.parametrize("bad, match", [(np.zeros((2, 3)), r"\(K, K\)"), (np.zeros((2, 2)), "empty"),
                                        (np.array([[1, -1], [0, 1]]), "non-negative")])  # fmt: skip
def test_bad_confusion_matrices_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        balanced_accuracy(bad)


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    y = torch.tensor([0, 1, 2, 2])
    model = nn.Identity()  # logits = the one-hot rows
    data = TensorDataset(x, y, torch.arange(4))
    assert confusion_matrix(model, data, 3).tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
