"""Scores beyond accuracy, from one confusion matrix per evaluation: balanced accuracy and macro-F1.

Shape legend: N images, K classes. A confusion matrix is (K, K) counts, rows the true class, columns the
predicted one. ``balanced_accuracy`` and ``macro_f1`` are pure; ``confusion_matrix`` runs the model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trainer.core.models import eval_mode


@torch.no_grad()
def confusion_matrix(model: nn.Module, dataset: Dataset, num_classes: int, *, device="cpu",
                     batch_size: int = 512) -> np.ndarray:  # fmt: skip
    """(K, K) int64 counts of (true, predicted) over ``dataset``."""
    out = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    with eval_mode(model):
        for x, y, _ in DataLoader(dataset, batch_size=batch_size):
            pred = model(x.to(device)).argmax(1).cpu()
            out += torch.bincount(torch.as_tensor(y) * num_classes + pred, minlength=num_classes**2)
    return out.reshape(num_classes, num_classes).numpy()


def _check(confusion) -> np.ndarray:
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be (K, K) with K >= 1, got shape {c.shape}")
    if (c < 0).any() or not np.isfinite(c).all():
        raise ValueError("a confusion matrix holds non-negative counts")
    return c


def balanced_accuracy(confusion) -> float:
    """Mean recall over the classes present in the truth (rows with at least one image)."""
    c = _check(confusion)
    support = c.sum(1)
    present = support > 0
    if not present.any():
        raise ValueError("the confusion matrix is empty: no images were scored")
    return float((np.diag(c)[present] / support[present]).mean())


def macro_f1(confusion) -> float:
    """Unweighted mean F1 over the classes that occur in the truth or the predictions (as scikit-learn's
    ``f1_score(average="macro")`` over those labels; a class never predicted scores 0)."""
    c = _check(confusion)
    tp, support, predicted = np.diag(c), c.sum(1), c.sum(0)
    seen = (support + predicted) > 0
    if not seen.any():
        raise ValueError("the confusion matrix is empty: no images were scored")
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    return float(f1[seen].mean())
