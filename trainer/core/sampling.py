"""Sampling: which training images go to the annotators each round.

Shape legend: N images, C channels, H x W pixels, K classes.

Uncertainty sampling follows Serrano e Silva et al. (IbPRIA 2023): the model's predictive entropy ranks
the images, and "confident mistakes" (wrong predictions the model is sure of, lowest entropy first) are
the images most likely to show a shortcut the annotator can point at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.core.checks import check_choice, check_int
from trainer.core.models import eval_mode


@dataclass(frozen=True)
class SamplingConfig:
    """How many images each round sends to Label Studio, and how they are picked. The default alternates
    entropy with a seeded random order (``entropy_random``): entropy alone never asks about a shortcut the
    model is sure of when it sits in only part of the images (see ``select``)."""

    strategy: str = "entropy_random"
    per_round: int = 10

    def __post_init__(self) -> None:
        check_choice(self.strategy, "sampling strategy", SAMPLERS)
        check_int(self.per_round, "per_round", minimum=1)


def predict_probs(
    model: nn.Module,
    dataset_or_images,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Softmax probabilities (N, K), float32 on CPU, in eval mode without gradients.

    dataset_or_images: a dataset yielding ``(image (C, H, W), label, sample_id)`` or a tensor (N, C, H, W).
    device: where the images go; by default the device of the model's parameters. The model is not moved.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    out = []
    with eval_mode(model), torch.no_grad():
        for images in _image_batches(dataset_or_images, batch_size):
            logits = model(images.to(device, non_blocking=True))
            out.append(torch.softmax(logits.float(), dim=1).cpu())
    if not out:
        raise ValueError("no images to predict: the dataset is empty")
    return torch.cat(out)


def _image_batches(source, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(source, torch.Tensor):
        if source.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(source.shape)}")
        yield from source.split(batch_size)
        return
    for start in range(0, len(source), batch_size):
        stop = min(start + batch_size, len(source))
        yield torch.stack([source[i][0] for i in range(start, stop)])


def entropy(probs) -> torch.Tensor:
    """Predictive entropy in nats. probs: (N, K). Returns (N,) float32; 0 * log 0 counts as 0."""
    p = _as_probs(probs)
    return torch.special.entr(p).sum(dim=1)


def margin(probs) -> torch.Tensor:
    """Top-1 minus top-2 probability. probs: (N, K) with K >= 2. Returns (N,) float32."""
    p = _as_probs(probs)
    if p.shape[1] < 2:
        raise ValueError(f"margin needs at least 2 classes, got probs of shape {tuple(p.shape)}")
    top2 = p.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def select(
    probs,
    labels,
    budget: int,
    *,
    strategy: str,
    exclude=None,
    seed: int = 0,
) -> np.ndarray:
    """Sample ids to annotate this round, most informative first.

    probs: (N, K) softmax output; labels: (N,) true labels (used by "confident_mistakes").
    strategy: "entropy" (highest first), "confident_mistakes" (wrong predictions, lowest entropy first,
    then the rest by highest entropy), "margin" (smallest top1 - top2 first), "random" (seeded),
    "entropy_random" (alternately the next by entropy and the next of a seeded random order).
    exclude: None, a bool mask (N,) or an iterable of sample ids never to return (e.g. already annotated).
    Ties go to the smaller sample id. Returns at most ``budget`` distinct ids, int64; all available ids
    when fewer than ``budget`` remain.
    """
    p = _as_probs(probs)
    n = p.shape[0]
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"labels have {y.shape[0]} entries, probs have {n} rows")
    sort_keys = SAMPLERS[check_choice(strategy, "sampling strategy", SAMPLERS)]
    check_int(budget, "budget")
    ids = np.flatnonzero(~_exclusion_mask(exclude, n))
    keys = sort_keys(p[ids], y[ids], np.random.default_rng(seed))  # keys of the available rows only
    order = ids[np.lexsort([ids, *keys])]  # the last key is the primary one
    return order[:budget].astype(np.int64)


# A sampler maps (probs (M, K), labels (M,), rng) of the M selectable images to (M,) sort keys, least significant
# first; a smaller key is picked earlier. The dict is the registry: it names the strategies, validates them and
# dispatches.
SortKeys = Callable[[torch.Tensor, torch.Tensor, np.random.Generator], list[np.ndarray]]


def _entropy_keys(p, y, rng) -> list[np.ndarray]:
    return [-entropy(p).double().numpy()]


def _confident_mistake_keys(p, y, rng) -> list[np.ndarray]:
    # Mistakes first, the most confident (lowest entropy) of them first; then the rest, most uncertain first.
    ent = entropy(p).double().numpy()
    right = (p.argmax(dim=1) == y).numpy().astype(np.int8)
    return [np.where(right, -ent, ent), right]


def _margin_keys(p, y, rng) -> list[np.ndarray]:
    return [margin(p).double().numpy()]


def _random_keys(p, y, rng) -> list[np.ndarray]:
    rank = np.empty(p.shape[0], dtype=np.int64)
    rank[rng.permutation(p.shape[0])] = np.arange(p.shape[0])  # picked in the order of a seeded permutation
    return [rank]


EXPLORE = 0.5  # entropy_random: the share of picks that follow the random order


def _entropy_random_keys(p, y, rng) -> list[np.ndarray]:
    # Entropy and a seeded random order share the picks, EXPLORE of them random: the r-th most uncertain image
    # gets slot r / (1 - EXPLORE), the r-th of the permutation (r + 1/2) / EXPLORE (EXPLORE = 1/2: slots 2r and
    # 2r + 1, alternately); an image keeps its earlier slot. Entropy alone starves on a shortcut in only part of
    # the images: the model is sure of exactly those, so it asks about the rest (ruler-mnist: 0 of 40
    # questions had a ruler at seed 2).
    by_entropy = np.empty(p.shape[0], dtype=np.int64)
    by_entropy[np.argsort(-entropy(p).double().numpy(), kind="stable")] = np.arange(p.shape[0])
    (by_chance,) = _random_keys(p, y, rng)
    return [np.minimum(by_entropy / (1 - EXPLORE), (by_chance + 0.5) / EXPLORE)]


SAMPLERS: dict[str, SortKeys] = {
    "entropy": _entropy_keys,
    "confident_mistakes": _confident_mistake_keys,
    "margin": _margin_keys,
    "random": _random_keys,
    "entropy_random": _entropy_random_keys,
}
STRATEGIES = tuple(SAMPLERS)


def _exclusion_mask(exclude, n: int) -> np.ndarray:
    """(N,) bool, True for the sample ids that must not be picked."""
    if exclude is None:
        return np.zeros(n, dtype=bool)
    if isinstance(exclude, torch.Tensor):
        exclude = exclude.cpu().numpy()
    try:
        ids = exclude if isinstance(exclude, np.ndarray) else np.asarray(list(exclude))
    except TypeError as err:
        raise ValueError(f"exclude must be None, a bool mask or sample ids, got {exclude!r:.80}") from err
    if ids.dtype == np.bool_:
        if ids.shape != (n,):
            raise ValueError(f"exclude mask has shape {ids.shape}, expected ({n},)")
        return ids
    ids = ids.reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"exclude sample ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise ValueError(f"exclude holds sample ids outside [0, {n}): {bad[:5].tolist()}")
    mask = np.zeros(n, dtype=bool)
    mask[ids] = True
    return mask


def _as_probs(probs) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(probs) if not isinstance(probs, torch.Tensor) else probs)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must be (N, K), got shape {tuple(p.shape)}")
    return p.detach().float().cpu()
