"""Metrics beyond accuracy and loss: how much of the model's attention falls on what it must not use.

Shape legend: N images, C channels, H x W pixels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from trainer.core.models import eval_mode
from trainer.explain.attribute import attribute, irrelevant_share


def test_irrelevant_share(
    model: nn.Module, dataset: Dataset, *, method: str = "deeplift", limit: int = 500
) -> float | None:
    """Mean share of the saliency (for the predicted class) inside the true irrelevant region, over ``limit``
    images spread evenly over the set (a folder lists its images class by class, so the first ``limit`` could be
    one or two classes); None for a dataset without known irrelevant regions (``decoy_masks`` is None)."""
    masks = getattr(dataset, "decoy_masks", None)
    if masks is None:
        return None
    picked = spread(len(dataset), limit)
    images = torch.stack([dataset[i][0] for i in picked.tolist()])  # (n, C, H, W)
    device = next(model.parameters()).device
    with torch.no_grad(), eval_mode(model):
        target = model(images.to(device)).argmax(1).cpu()
    sal = attribute(model, images, target, method=method, batch_size=128)  # (n, H, W)
    return float(irrelevant_share(sal, masks[picked]).mean())


test_irrelevant_share.__test__ = False  # a metric, not a pytest test


def spread(total: int, limit: int) -> torch.Tensor:
    """``min(limit, total)`` distinct indices into ``range(total)``, evenly spaced from the first to the last,
    in order: (n,) long."""
    if total <= limit:
        return torch.arange(total)
    return torch.linspace(0, total - 1, limit).round().long()
