"""The feedback grid: the one owner of how an image is cut into cells.

Shape legend: H x W model-input pixels, G_h x G_w grid cells.

The same ``Grid`` reaches the labelling config (``gridSize``), the saliency overlay, the rasteriser
(regions -> cells) and the penalty (cells -> mask W). Cell ``(r, c)`` covers pixel rows
``[r*H//G_h, (r+1)*H//G_h)`` and columns ``[c*W//G_w, (c+1)*W//G_w)``, i.e. percent
``[100*c/G_w, 100*(c+1)/G_w)`` horizontally, so a grid need not divide the image exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A ``rows x cols`` (G_h x G_w) grid over a ``height x width`` (H x W) model input."""

    height: int
    width: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        for name in ("height", "width", "rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Grid.{name} must be a positive integer, got {value!r}")
        if self.rows > self.height or self.cols > self.width:
            raise ValueError(
                f"Grid of {self.rows}x{self.cols} cells is finer than the {self.height}x{self.width} image"
            )

    @classmethod
    def from_cell_px(cls, height: int, width: int, cell_px: int) -> Grid:
        """Square cells of ``cell_px`` pixels (the last row/column absorbs any remainder)."""
        if cell_px < 1:
            raise ValueError(f"cell_px must be >= 1, got {cell_px}")
        return cls(height, width, max(1, height // cell_px), max(1, width // cell_px))

    @property
    def shape(self) -> tuple[int, int]:
        """(G_h, G_w)."""
        return (self.rows, self.cols)

    def row_edges(self) -> np.ndarray:
        """(G_h + 1,) pixel row boundaries."""
        return (np.arange(self.rows + 1) * self.height) // self.rows

    def col_edges(self) -> np.ndarray:
        """(G_w + 1,) pixel column boundaries."""
        return (np.arange(self.cols + 1) * self.width) // self.cols

    def cell_box_percent(self, row: int, col: int) -> tuple[float, float, float, float]:
        """``(x, y, width, height)`` of a cell in percent of the image, as Label Studio stores rectangles."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise ValueError(f"cell ({row}, {col}) is outside the {self.rows}x{self.cols} grid")
        return (100.0 * col / self.cols, 100.0 * row / self.rows, 100.0 / self.cols, 100.0 / self.rows)

    def cells_to_mask(self, cells: np.ndarray) -> np.ndarray:
        """Upsample cells to pixels.

        cells: (G_h, G_w) bool or float. Returns (H, W) float32, each pixel the value of its cell.
        """
        cells = np.asarray(cells)
        if cells.shape != self.shape:
            raise ValueError(f"cells have shape {cells.shape}, the grid is {self.shape}")
        r_idx = np.repeat(np.arange(self.rows), np.diff(self.row_edges()))
        c_idx = np.repeat(np.arange(self.cols), np.diff(self.col_edges()))
        return cells.astype(np.float32)[r_idx][:, c_idx]

    def mask_to_cells(self, mask: np.ndarray, *, min_fraction: float = 0.0) -> np.ndarray:
        """Cells that a pixel mask touches.

        mask: (H, W) bool/float. A cell is on when more than ``min_fraction`` of its pixels are non-zero.
        Returns (G_h, G_w) bool.
        """
        mask = np.asarray(mask)
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask has shape {mask.shape}, the grid covers {(self.height, self.width)}")
        return self.pool(mask != 0) > min_fraction

    def pool(self, values: np.ndarray) -> np.ndarray:
        """Mean of a pixel map over each cell.

        values: (..., H, W). Returns (..., G_h, G_w) float64.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.shape[-2:] != (self.height, self.width):
            raise ValueError(f"map has spatial shape {values.shape[-2:]}, expected {(self.height, self.width)}")
        re, ce = self.row_edges(), self.col_edges()
        rows = np.add.reduceat(values, re[:-1], axis=-2) / np.diff(re)[:, None]
        return np.add.reduceat(rows, ce[:-1], axis=-1) / np.diff(ce)
