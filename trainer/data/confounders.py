"""Confounders: shortcuts painted into 28 x 28 digits, each with its true mask (the region an annotator should
mark). Pure numpy, seeded; the benchmarks (``trainer.data.benchmarks``) put them on MNIST digits.

Shape legend: N images, H x W = 28 x 28 pixels.

Each painter gets the class that the confounder encodes (the label in training images, a random class in test
images, as in Ross et al.'s Decoy-MNIST) and returns ``(mask (N, 28, 28) bool, ink (N, 28, 28) float in [0, 1])``:
the confounder's pixels and their intensity. The grey form writes ``ink`` into the mask; the RGB form colours
it with the class's colour (``PALETTE``), so colour encodes the class too.

Kinds (the name of each built-in dataset says which):
- ``corner``: Ross et al.'s 4 x 4 patch in a random corner, grey level 255 - 25 k (``add_decoy`` keeps their
  exact recipe);
- ``frame``: a one-pixel frame around the image, grey level 255 - 25 k (a border or a scanner edge);
- ``texture``: an 8 x 8 patch of stripes whose orientation encodes the class, in a random corner (a texture;
  at 6 x 6 the baseline lost only 0.065 to it, too little to tell feedback from no feedback);
- ``watermark``: a sparse 5 x 5 glyph, one per class, always at the bottom right (a logo or a stamp);
- ``ruler``: a 3-pixel bar along the top whose length encodes the class, in only ``PARTIAL_SHARE`` (65%) of the
  images (a ruler in some dermoscopy photos): which images are asked matters, since a third carry nothing to
  mark. (A 2-pixel bar in half the images cost the baseline only 0.090.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SIDE = 28
PATCH = 4  # corner patch side, pixels at 28 x 28
TEXTURE = 8  # texture patch side
GLYPH = 5  # watermark side
PARTIAL_SHARE = 0.65  # share of images that carry a partial confounder (ruler)
# Ten distinct colours (matplotlib's tab10): the RGB form's colour for class k.
PALETTE = np.array([
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
], dtype=np.float32) / 255.0  # fmt: skip

Painter = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _level(k: np.ndarray) -> np.ndarray:
    return (255 - 25 * k).astype(np.float32) / 255.0  # Ross et al.'s grey levels


def _corners(n: int, side: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    corners = rng.integers(0, 4, size=n)
    return [(0 if c in (0, 1) else SIDE - side, 0 if c in (0, 2) else SIDE - side) for c in corners]


def paint_corner(k: np.ndarray, rng: np.random.Generator):
    mask = np.zeros((len(k), SIDE, SIDE), dtype=bool)
    for i, (r0, c0) in enumerate(_corners(len(k), PATCH, rng)):
        mask[i, r0 : r0 + PATCH, c0 : c0 + PATCH] = True
    return mask, mask * _level(k)[:, None, None]


def paint_frame(k: np.ndarray, rng: np.random.Generator):
    mask = np.zeros((len(k), SIDE, SIDE), dtype=bool)
    mask[:, [0, -1], :] = True
    mask[:, :, [0, -1]] = True
    return mask, mask * _level(k)[:, None, None]


def _patterns(side: int, density: float, seed: int) -> np.ndarray:
    """One fixed binary pattern per class: (10, side, side), all distinct and none empty."""
    rng = np.random.default_rng(seed)
    while True:
        p = rng.random((10, side, side)) < density
        if p.reshape(10, -1).any(1).all() and len({row.tobytes() for row in p}) == 10:
            return p.astype(np.float32)


def _stripes(side: int, period: float = 3.0) -> np.ndarray:
    """(10, side, side) binary stripes, class k at 18 k degrees: orientation is what a convolution sees."""
    r, c = np.mgrid[0:side, 0:side].astype(np.float32)
    angles = np.deg2rad(18.0 * np.arange(10))[:, None, None]
    phase = (c * np.cos(angles) + r * np.sin(angles)) * (2 * np.pi / period)
    return (np.sin(phase) > 0).astype(np.float32)


_TEXTURES = _stripes(TEXTURE)
_GLYPHS = _patterns(GLYPH, 0.35, 78)


def paint_texture(k: np.ndarray, rng: np.random.Generator):
    mask = np.zeros((len(k), SIDE, SIDE), dtype=bool)
    ink = np.zeros((len(k), SIDE, SIDE), dtype=np.float32)
    for i, (r0, c0) in enumerate(_corners(len(k), TEXTURE, rng)):
        mask[i, r0 : r0 + TEXTURE, c0 : c0 + TEXTURE] = True
        ink[i, r0 : r0 + TEXTURE, c0 : c0 + TEXTURE] = _TEXTURES[k[i]]
    return mask, ink


def paint_watermark(k: np.ndarray, rng: np.random.Generator):
    mask = np.zeros((len(k), SIDE, SIDE), dtype=bool)
    ink = np.zeros((len(k), SIDE, SIDE), dtype=np.float32)
    r0 = c0 = SIDE - GLYPH - 1
    mask[:, r0 : r0 + GLYPH, c0 : c0 + GLYPH] = True
    ink[:, r0 : r0 + GLYPH, c0 : c0 + GLYPH] = _GLYPHS[k]
    return mask, ink


def paint_ruler(k: np.ndarray, rng: np.random.Generator):
    mask = np.zeros((len(k), SIDE, SIDE), dtype=bool)
    present = rng.random(len(k)) < PARTIAL_SHARE
    for i in np.flatnonzero(present):
        mask[i, 1:4, 2 : 2 + 4 + 2 * int(k[i])] = True  # 3 px thick, 4 to 22 pixels long
    return mask, mask.astype(np.float32)


PAINTERS: dict[str, Painter] = {
    "corner": paint_corner,
    "frame": paint_frame,
    "texture": paint_texture,
    "watermark": paint_watermark,
    "ruler": paint_ruler,
}


def paint(images: np.ndarray, kind: str, k: np.ndarray, rng: np.random.Generator, *, rgb: bool):
    """Digits (N, 28, 28) uint8 with a ``kind`` confounder encoding classes ``k`` (N,): ``(images, masks)``,
    images (N, C, 28, 28) float32 in [0, 1] (C = 3 when ``rgb``), masks (N, 28, 28) bool."""
    mask, ink = PAINTERS[kind](k, rng)
    grey = images.astype(np.float32) / 255.0
    if not rgb:
        return np.where(mask, ink, grey)[:, None], mask
    colour = PALETTE[k][:, :, None, None] * ink[:, None]  # (N, 3, 28, 28)
    return np.where(mask[:, None], colour, grey[:, None].repeat(3, axis=1)), mask
