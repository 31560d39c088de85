"""The dataset registry: one dict of built-in datasets that validates a name and dispatches to its loader,
plus the ``folder:PATH`` / ``csv:PATH`` specs for user data on disk and ``labelstudio:PROJECT``, a team's project
as the run directory's snapshot (``trainer.data.snapshot``: read from ``root``, the run directory).

Shape legend: N images, C channels, H x W pixels.

Every dataset yields ``(image (C, H, W) float32 in [0, 1], label int, sample_id int)``, where the sample id is
the item's index, and exposes ``classes``, ``image_shape``, ``labels`` (N,) and ``decoy_masks`` (N, H, W) bool
or None (the true irrelevant region: kept for the simulated annotator and for metrics, never given to the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from trainer.data.benchmarks import builtin_spec, decoy_mnist
from trainer.data.confounders import PAINTERS
from trainer.data.files import load_user_dataset, probe_shape
from trainer.data.snapshot import SNAPSHOT_PREFIX, load_snapshot, snapshot_shape

USER_PREFIXES = ("folder:", "csv:", SNAPSHOT_PREFIX)


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in dataset: ``load(size, channels, seed) -> (train, test)``; ``clean`` names its twin without
    the confounder (None for a clean set); ``confounder`` says what kind of shortcut it plants (``none``);
    ``shape`` is its default (C, H, W)."""

    load: Callable[..., tuple[Dataset, Dataset]]
    confounder: str
    clean: str | None
    shape: tuple[int, int, int]


def _builtin(kind: str, rgb: bool) -> BuiltinDataset:
    def load(*, size=None, channels=None, seed=0):
        return decoy_mnist(builtin_spec(kind, rgb=rgb, size=size, channels=channels), seed=seed)

    clean = None if kind == "clean" else ("decoy-mnist-rgb-clean" if rgb else "decoy-mnist-clean")
    return BuiltinDataset(load, "none" if kind == "clean" else kind, clean, (3, 112, 112) if rgb else (1, 28, 28))


def _name(kind: str, rgb: bool) -> str:
    """decoy-mnist[-rgb][-clean] for Ross et al.'s corner patch and the clean twin, KIND-mnist[-rgb] otherwise."""
    if kind in ("corner", "clean"):
        return "decoy-mnist" + ("-rgb" if rgb else "") + ("-clean" if kind == "clean" else "")
    return f"{kind}-mnist" + ("-rgb" if rgb else "")


DATASETS: dict[str, BuiltinDataset] = {
    _name(kind, rgb): _builtin(kind, rgb) for rgb in (False, True) for kind in ("clean", *PAINTERS)
}
CONFOUNDED = tuple(name for name, entry in DATASETS.items() if entry.clean)  # the family: each has a clean twin


def check_dataset(name: str) -> str:
    """``name`` when it is a built-in or a user spec; else a ValueError listing the choices."""
    if name in DATASETS or (isinstance(name, str) and name.startswith(USER_PREFIXES)):
        return name
    raise ValueError(
        f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}, 'folder:PATH', 'csv:PATH' "
        "or 'labelstudio:PROJECT'"
    )


def load_dataset(
    name: str, *, size: int | None = None, seed: int = 0, channels: int | None = None, root=None, **opts
) -> tuple[Dataset, Dataset]:
    """(train, test) for a built-in name, a user spec ``folder:PATH`` / ``csv:PATH``, or ``labelstudio:PROJECT``
    (the snapshot in run directory ``root``; its split is the snapshot's, ``seed`` does not change it)."""
    check_dataset(name)
    if name in DATASETS:
        return DATASETS[name].load(size=size, channels=channels, seed=seed)
    if name.startswith(SNAPSHOT_PREFIX):
        return load_snapshot(name, root, size=size or 224, channels=channels or 3, **opts)
    return load_user_dataset(name, size=size or 224, channels=channels or 3, seed=seed, **opts)


def native_shape(name: str, *, root=None) -> tuple[int, int]:
    """``(channels, size)`` of a dataset as it is: a built-in's default, or what a user's files are (their
    headers: greyscale or colour, median shorter side up to 224 px); a snapshot's are in run directory ``root``."""
    check_dataset(name)
    if name in DATASETS:
        c, h, _ = DATASETS[name].shape
        return c, h
    if name.startswith(SNAPSHOT_PREFIX):
        return snapshot_shape(root)
    train, _ = load_user_dataset(name, size=8, channels=1, on_error="skip")
    return probe_shape(list(train.paths))


def clean_twin(name: str) -> str | None:
    """The built-in dataset without ``name``'s confounder, or None (user data, or already clean)."""
    entry = DATASETS.get(name)
    return None if entry is None else entry.clean


def train_fraction(train: Dataset, fraction: float, *, seed: int = 0) -> Dataset:
    """A seeded, class-stratified share of a training set (the paper's 10%, 0.5%, 50% settings)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return train
    labels = np.asarray(train.labels)
    rng = np.random.default_rng(seed)
    keep = []
    for k in np.unique(labels):
        ids = np.flatnonzero(labels == k)
        keep.extend(rng.choice(ids, size=max(1, round(fraction * len(ids))), replace=False))
    keep = np.sort(np.asarray(keep))
    if not hasattr(train, "subset"):
        raise ValueError(f"{type(train).__name__} does not support --train-fraction")
    return train.subset(keep)
