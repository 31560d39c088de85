"""The irrelevant-share metric over a sample of the test set."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from trainer.data.benchmarks import TensorDataset
from trainer.explain.metrics import spread, test_irrelevant_share


@given(st.integers(0, 3000), st.integers(1, 600))
def test_spread_takes_distinct_indices_from_first_to_last(total, limit):
    picked = spread(total, limit).tolist()
    assert len(picked) == min(total, limit) == len(set(picked))
    assert picked == sorted(picked) and all(0 <= i < total for i in picked)
    if len(picked) > 1:
        assert picked[0] == 0 and picked[-1] == total - 1


def test_share_samples_the_whole_set_not_its_first_classes():
    """A folder lists its images class by class: 200 images of class 0 whose mask covers everything, then 200
    of class 1 with an empty mask. A sample of 200 must see both (share about 0.5), not class 0 only (1.0)."""
    n, size = 400, 8
    torch.manual_seed(0)
    images = torch.rand(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[: n // 2] = True
    data = TensorDataset(images, (torch.arange(n) >= n // 2).long(), ["a", "b"], decoy_masks=masks)
    model = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 2))
    share = test_irrelevant_share(model, data, method="saliency", limit=200)
    assert share == 0.5
    assert test_irrelevant_share(model, data, method="saliency", limit=n) == 0.5
