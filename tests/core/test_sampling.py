"""Sampling room: which training images go to the annotators each round."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainer.core.sampling import (
    STRATEGIES,
    SamplingConfig,
    entropy,
    eval_mode,
    margin,
    predict_probs,
    select,
)

# Rows: 0 confident right, 1 uniform, 2 confident wrong, 3 unsure wrong, 4 unsure right, 5 = row 1.
PROBS = torch.tensor(
    [
        [0.98, 0.01, 0.01],
        [1 / 3, 1 / 3, 1 / 3],
        [0.01, 0.97, 0.02],
        [0.30, 0.40, 0.30],
        [0.50, 0.45, 0.05],
        [1 / 3, 1 / 3, 1 / 3],
    ]
)
LABELS = torch.tensor([0, 0, 0, 0, 0, 1])


def test_entropy_and_margin_known_values():
    probs = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.3, 0.1]])
    torch.testing.assert_close(entropy(probs), torch.tensor([0.0, math.log(3), 0.8979457]))
    torch.testing.assert_close(margin(probs), torch.tensor([1.0, 0.0, 0.3]))


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("entropy", [1, 5, 3, 4, 2, 0]),  # uniform rows tie: smaller id first
        ("margin", [1, 5, 4, 3, 2, 0]),
        # Mistakes (2, 3, 5), lowest entropy first; then the right ones, highest entropy first.
        ("confident_mistakes", [2, 3, 5, 1, 4, 0]),
    ],
)
def test_ranking_strategies(strategy, expected):
    assert select(PROBS, LABELS, 6, strategy=strategy).tolist() == expected
    assert select(PROBS, LABELS, 2, strategy=strategy).tolist() == expected[:2]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "exclude",
    [{1, 2}, [2, 1], np.array([1, 2]), torch.tensor([False, True, True, False, False, False])],
)
def test_excluded_ids_never_come_back(strategy, exclude):
    picked = select(PROBS, LABELS, 10, strategy=strategy, exclude=exclude)
    assert sorted(picked.tolist()) == [0, 3, 4, 5]  # everything else, each once
    assert picked.dtype == np.int64


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budget_zero_and_nothing_left(strategy):
    assert select(PROBS, LABELS, 0, strategy=strategy).size == 0
    assert select(PROBS, LABELS, 3, strategy=strategy, exclude=set(range(6))).size == 0


def test_confident_mistakes_fill_with_highest_entropy_when_mistakes_run_out():
    labels = torch.tensor([0, 0, 1, 0, 0, 0])  # only row 3 is wrong
    assert select(PROBS, labels, 3, strategy="confident_mistakes").tolist() == [3, 1, 5]


def test_random_is_seeded_and_stays_inside_the_available_ids():
    probs = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.zeros(50, dtype=torch.long)

    def pick(seed: int) -> list[int]:
        return select(probs, labels, 10, strategy="random", seed=seed, exclude=set(range(20))).tolist()

    first = np.array(pick(7))
    assert pick(7) == first.tolist() and pick(8) != first.tolist()
    assert len(set(first.tolist())) == 10 and first.min() >= 20


def test_entropy_random_alternates_between_the_entropy_ranking_and_a_seeded_permutation():
    """Half the picks follow entropy, half a seeded random order, so a partial shortcut (images the model is
    sure of) is still asked about: here the 30 confident images are never picked by entropy alone."""
    g = torch.Generator().manual_seed(0)
    sure = torch.softmax(torch.randn(30, 4, generator=g) * 0.1 + torch.tensor([9.0, 0, 0, 0]), dim=1)
    unsure = torch.softmax(torch.randn(30, 4, generator=g) * 0.1, dim=1)
    probs, labels = torch.cat([unsure, sure]), torch.zeros(60, dtype=torch.long)
    by_entropy = select(probs, labels, 20, strategy="entropy").tolist()
    picked = select(probs, labels, 20, strategy="entropy_random", seed=3).tolist()
    assert max(by_entropy) < 30  # entropy alone: only the uncertain half
    assert picked[0] == by_entropy[0] and set(by_entropy[:10]) <= set(picked)  # the entropy half, best first
    assert len(set(picked)) == 20 and any(i >= 30 for i in picked)  # distinct, and the sure half is asked too
    assert picked == select(probs, labels, 20, strategy="entropy_random", seed=3).tolist()  # seeded
    assert picked != select(probs, labels, 20, strategy="entropy_random", seed=4).tolist()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "coreset"}, "entropy, confident_mistakes, margin, random"),
        ({"budget": -1}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"budget": True}, "budget"),
        ({"exclude": {6}}, r"outside \[0, 6\)"),
        ({"exclude": np.zeros(5, bool)}, "exclude mask"),
        ({"exclude": 3}, "exclude"),
        ({"labels": torch.zeros(5)}, "labels"),
        ({"probs": torch.zeros(6)}, r"\(N, K\)"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    args = {"probs": PROBS, "labels": LABELS, "budget": 2, "strategy": "entropy", **kwargs}
    probs, labels, budget = args.pop("probs"), args.pop("labels"), args.pop("budget")
    with pytest.raises(ValueError, match=match):
        select(probs, labels, budget, **args)


class _Items:
    """A dataset as trainer.data.benchmarks makes them, reduced to ``__len__`` and ``__getitem__``."""

    def __init__(self, images: torch.Tensor) -> None:
        self._images = images

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int):
        return self._images[i], 0, i


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 36, 3))


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_predict_probs_dataset_and_tensor_agree_in_eval_mode(batch_size):
    model, images = _model(), torch.rand(7, 1, 8, 8)
    model.train()
    model[1].eval()
    probs = predict_probs(model, images, batch_size=batch_size)
    assert probs.shape == (7, 3) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(7))
    torch.testing.assert_close(predict_probs(model, _Items(images), batch_size=batch_size), probs)
    assert [m.training for m in model] == [True, False, True, True, True]  # dropout off while predicting only


def test_eval_mode_restores_each_module():
    model = _model()
    model[2].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model] == [True, True, False, True, True]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "most-wrong"}, "strategy"),
        ({"per_round": 0}, "per_round"),
        ({"per_round": 1.5}, "per_round"),
    ],
)
def test_sampling_config_validates_and_is_frozen(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingConfig().per_round = 3  # type: ignore[misc]
