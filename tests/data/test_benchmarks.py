"""Decoy-MNIST follows Ross et al.'s protocol; the dispatcher names what is wrong."""

import numpy as np
import pytest
import torch

from trainer.data.benchmarks import PATCH
from trainer.data.registry import load_dataset, train_fraction


@pytest.fixture(scope="module")
def decoy():
    return load_dataset("decoy-mnist", seed=0)


def _patch_levels(ds):
    m = ds.decoy_masks
    assert torch.all(m.flatten(1).sum(1) == PATCH * PATCH)  # one 4x4 patch per image
    return torch.stack([ds.images[i, 0][m[i]].unique() for i in range(len(ds))]).squeeze(1) * 255


def test_sizes_shapes_and_classes(decoy):
    train, test = decoy
    assert (len(train), len(test)) == (4000, 1000)
    assert train.image_shape == (1, 28, 28)
    assert train.classes == [str(k) for k in range(10)]
    x, y, sid = train[7]
    assert (
        x.shape == (1, 28, 28)
        and 0 <= float(x.min())
        and float(x.max()) <= 1
        and sid == 7
        and y == int(train.labels[7])
    )


def test_training_patch_encodes_the_label(decoy):
    train, _ = decoy
    levels = _patch_levels(train)
    assert torch.allclose(levels, (255 - 25 * train.labels).float(), atol=1e-3)


def test_test_patch_is_a_random_class_level(decoy):
    _, test = decoy
    levels = _patch_levels(test)
    classes = torch.round((255 - levels) / 25).long()
    assert set(classes.tolist()) <= set(range(10))
    agree = (classes == test.labels).float().mean().item()
    assert 0.03 < agree < 0.2  # about 1 in 10 by chance: the decoy does not carry the test label


def test_patch_sits_in_a_corner_and_all_corners_occur(decoy):
    train, _ = decoy
    m = train.decoy_masks
    corners = {(bool(m[i, 0, 0]), bool(m[i, 0, -1]), bool(m[i, -1, 0]), bool(m[i, -1, -1])) for i in range(200)}
    assert len(corners) == 4 and all(sum(c) == 1 for c in corners)


@pytest.mark.slow
def test_split_is_fixed_across_seeds_and_clean_variant_has_same_digits():
    a, _ = load_dataset("decoy-mnist", seed=0)
    b, _ = load_dataset("decoy-mnist", seed=1)
    clean, _ = load_dataset("decoy-mnist-clean", seed=0)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.labels, clean.labels)
    outside = ~a.decoy_masks & ~b.decoy_masks
    assert torch.equal(a.images[:, 0][outside], b.images[:, 0][outside])
    assert not clean.decoy_masks.any()
    assert torch.equal(clean.images[:, 0][~a.decoy_masks], a.images[:, 0][~a.decoy_masks])


def test_rgb_variant_is_larger_and_keeps_masks_aligned():
    train, _ = load_dataset("decoy-mnist-rgb", seed=0)
    assert train.image_shape == (3, 112, 112)
    assert train.decoy_masks.shape == (4000, 112, 112)
    assert int(train.decoy_masks[0].sum()) == (PATCH * 4) ** 2


def test_train_fraction_is_stratified(decoy):
    part = train_fraction(decoy[0], 0.1, seed=0)
    assert len(part) == pytest.approx(400, abs=10)
    assert set(np.unique(part.labels.numpy())) == set(range(10))
    with pytest.raises(ValueError, match="train fraction"):
        train_fraction(decoy[0], 0.0)


def test_unknown_dataset_is_named():
    with pytest.raises(ValueError, match="'nope'"):
        load_dataset("nope")
