"""Feedback gathered so far: the mask W (as grid cells) per annotated image, label corrections, skips.

Shape legend: G_h x G_w grid cells, H x W pixels.

Masks are kept as cells, so memory grows with the number of annotated images, not with the dataset.
``simulated_cells`` is what the simulated annotator marks (``hitl experiment`` uses it directly;
``trainer.labelstudio.annotator`` makes it act through Label Studio).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from label_config.grid import Grid
from trainer.core.checks import check_share


@dataclass
class Feedback:
    """cells: sample id -> (G_h, G_w) bool; labels: sample id -> corrected label; skipped: sample ids."""

    cells: dict[int, np.ndarray] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)

    def annotated_ids(self) -> list[int]:
        """Sample ids whose mask W has at least one cell, sorted."""
        return sorted(i for i, c in self.cells.items() if np.any(c))

    def given_ids(self) -> set[int]:
        """Every sample id that received any feedback (a mask, a correction or a skip)."""
        return set(self.cells) | set(self.labels) | self.skipped

    def masks(self, ids: list[int] | torch.Tensor, grid: Grid) -> torch.Tensor:
        """The pixel mask W of each id, zeros where none. Returns (len(ids), H, W) float32."""
        out = torch.zeros(len(ids), grid.height, grid.width)
        for row, i in enumerate(ids):
            cells = self.cells.get(int(i))
            if cells is not None and np.any(cells):
                out[row] = torch.from_numpy(grid.cells_to_mask(cells))
        return out


@dataclass(frozen=True)
class AnnotatorConfig:
    """The simulated annotator: marks the cells overlapping the true decoy, misses each with ``miss_rate``
    and adds ``wrong_cells`` random cells outside it with probability ``wrong_rate`` per image."""

    miss_rate: float = 0.0
    wrong_rate: float = 0.0
    wrong_cells: int = 1

    def __post_init__(self) -> None:
        check_share(self.miss_rate, "miss_rate")
        check_share(self.wrong_rate, "wrong_rate")


def simulated_cells(decoy_mask: np.ndarray, grid: Grid, cfg: AnnotatorConfig, rng: np.random.Generator) -> np.ndarray:
    """What the simulated annotator marks for one image. decoy_mask: (H, W) bool. Returns (G_h, G_w) bool."""
    truth = grid.mask_to_cells(decoy_mask)
    cells = truth.copy()
    if cfg.miss_rate > 0:
        cells &= rng.random(cells.shape) >= cfg.miss_rate
    if cfg.wrong_rate > 0 and rng.random() < cfg.wrong_rate:
        free = np.flatnonzero(~truth.ravel())  # outside the decoy, also where a miss cleared a cell
        for flat in rng.choice(free, size=min(cfg.wrong_cells, len(free)), replace=False):
            cells.flat[flat] = True
    return cells
