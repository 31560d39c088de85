"""The confounder family: each kind encodes the label in training images only, inside its true mask."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from trainer.data.confounders import PAINTERS, PALETTE, PARTIAL_SHARE
from trainer.data.registry import CONFOUNDED, DATASETS, load_dataset

KINDS = [k for k in PAINTERS if k != "corner"]  # the corner patch has its own tests (test_benchmarks.py)


@functools.cache
def _load(kind: str, rgb: bool, size: int = 28):
    return load_dataset(f"{kind}-mnist" + ("-rgb" if rgb else ""), seed=0, size=size)


def _signature(ds, i: int) -> bytes:
    """What is painted inside the mask of image i (its pixels, exactly)."""
    m = ds.decoy_masks[i]
    return ds.images[i][:, m].numpy().tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rgb", [False, True])
def test_training_confounder_determines_the_label_and_test_confounder_does_not(kind, rgb):
    train, test = _load(kind, rgb)
    clean, _ = load_dataset("decoy-mnist-rgb-clean" if rgb else "decoy-mnist-clean", seed=0, size=28)
    outside = ~train.decoy_masks[:, None].expand_as(train.images)
    assert torch.equal(train.images[outside], clean.images[outside])  # only the mask's pixels differ
    carriers = [i for i in range(len(train)) if train.decoy_masks[i].any()]

    def label_of(ds, ids):  # a signature -> label table built on the training images
        table: dict[bytes, set[int]] = {}
        for i in ids:
            table.setdefault(_signature(ds, i), set()).add(int(ds.labels[i]))
        return table

    table = label_of(train, carriers)
    if kind in ("frame", "watermark", "ruler"):  # position fixed: the pixels alone tell the class
        assert all(len(labels) == 1 for labels in table.values()), "a training confounder maps to two labels"
    test_carriers = [i for i in range(len(test)) if test.decoy_masks[i].any()]
    agree = np.mean([_signature(test, i) in table and int(test.labels[i]) in table[_signature(test, i)]
                     for i in test_carriers])  # fmt: skip
    assert agree < 0.3  # in test images the confounder names a random class


@pytest.mark.parametrize(
    "kind, share", [("frame", 1.0), ("texture", 1.0), ("watermark", 1.0), ("ruler", PARTIAL_SHARE)]
)
def test_share_of_images_carrying_the_confounder(kind, share):
    train, test = _load(kind, rgb=False)
    for ds in (train, test):
        carried = ds.decoy_masks.flatten(1).any(1).float().mean().item()
        assert carried == pytest.approx(share, abs=0.03)


def test_rgb_form_colours_the_confounder_by_class_and_keeps_the_digit_grey():
    train, _ = _load("frame", rgb=True)
    x, m = train.images, train.decoy_masks
    assert train.image_shape == (3, 28, 28)
    grey = x[:, :, ~m[0]]  # frame pixels are the same in every image; the rest is the digit
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    for i in range(5):
        k = int(train.labels[i])
        level = (255 - 25 * k) / 255
        assert torch.allclose(x[i, :, 0, 5], torch.from_numpy(PALETTE[k]) * level, atol=1e-6)


def test_rgb_default_size_is_112_and_masks_follow_the_resize():
    train, _ = load_dataset("watermark-mnist-rgb", seed=0)
    assert train.image_shape == (3, 112, 112) and train.decoy_masks.shape == (4000, 112, 112)
    assert train.decoy_masks[0].sum() == 5 * 5 * 16  # the 5 x 5 glyph box, 4 x 4 pixels each


def test_registry_lists_every_confounder_in_both_forms_with_a_clean_twin():
    assert set(CONFOUNDED) == {f"{k}-mnist{r}" for k in KINDS for r in ("", "-rgb")} | {
        "decoy-mnist",
        "decoy-mnist-rgb",
    }
    for name in CONFOUNDED:
        assert DATASETS[DATASETS[name].clean].clean is None
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        load_dataset("nope")
