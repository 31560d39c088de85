"""Label Studio image regions <-> pixel masks, and masks -> grid cells. Pure: no I/O.

Shape legend: H x W model-input pixels, G_h x G_w grid cells.

Every image region type becomes a mask: rectangles (rotated too), polygons, ellipses, keypoints and brush
strokes (RLE). Geometry follows Label Studio and ``rasterise``: coordinates are percent of ``original_width``
/ ``original_height``; a rectangle's ``(x, y)`` is its top-left corner, ``rotation`` turns it clockwise (y
down) about that corner, an ellipse's ``(x, y)`` is its centre and it turns about it, both in original
pixels (so the image's aspect ratio matters).

The pixel rule: model pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)`` and is in a shape when its centre
``(c + 0.5, r + 0.5)`` is, with half-open edges (a centre on a left/top edge is in, on a right/bottom edge
out). So a cell-sized rectangle covers exactly its cell's pixels whatever the float noise (its edges sit half
a pixel from every centre) on a grid that divides the image (elsewhere ``Grid.cell_box_percent`` and the
grid's pixel cells differ by under a pixel), and a shape that covers no pixel centre becomes the one pixel
under its centre, as ``rasterise`` makes a zero-size rectangle the cell under it: a mark is never lost.
A brush stroke is decoded at the original size by the SDK, a pixel counted from alpha 128, and resampled
by the same rule: each model pixel takes the original pixel under its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from label_config.grid import Grid

COORD_SLOP = 0.05  # percent, as rasterise: LS float noise (or a rotated corner) may poke out this far
MIN_FRACTION = 1e-6  # of a cell's pixels: any pixel marks it, as any overlap does in rasterise
MAX_POLYGON_POINTS = 10_000
MAX_ORIGINAL_PIXELS = 100_000_000  # a brush's image; bounds the decoded RGBA array at 400 MB
BRUSH_ALPHA_MIN = 128  # an anti-aliased brush pixel's alpha is its coverage: at least half counts
ELLIPSE_TOLERANCE_PX = 0.01  # most an ellipse's inscribed polygon falls inside the true curve
_SNAP = 1e-6  # pixels: a point this close to a pixel border is on it (then in the next pixel)


class RegionError(ValueError):
    """A region that cannot become a mask; ``region_type`` and ``region_id`` name it, so a pull can report
    and count it and keep the rest."""

    def __init__(self, message: str, *, region_type=None, region_id=None):
        super().__init__(message)
        self.region_type = region_type
        self.region_id = region_id


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class _Ctx:
    kind: str
    rid: object
    where: str

    def error(self, problem: str) -> RegionError:
        head = f"{self.where}, " if self.where else ""
        return RegionError(
            f"{head}{self.kind or 'untyped'} region {_show(self.rid)}: {problem}",
            region_type=self.kind,
            region_id=self.rid,
        )


_MISSING = object()


def _number(ctx: _Ctx, raw, name: str) -> float:
    if raw is _MISSING:
        raise ctx.error(f"{name} is missing")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, np.integer, np.floating)):
        raise ctx.error(f"{name} must be a number, got {_show(raw)}")
    try:
        number = float(raw)
    except OverflowError:  # an int past float range: 10**400
        number = math.inf
    if not math.isfinite(number):
        raise ctx.error(f"{name} must be finite, got {_show(raw)}")
    return number


def _percent(ctx: _Ctx, raw, name: str) -> float:
    number = _number(ctx, raw, name)
    if not -COORD_SLOP <= number <= 100.0 + COORD_SLOP:
        raise ctx.error(f"{name}={number!r} falls outside 0..100 %")
    return number


def _size(ctx: _Ctx, raw, name: str, maximum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)) or not 1 <= raw <= maximum:
        raise ctx.error(f"{name} must be an integer in 1..{maximum}, got {_show(raw)}")
    return int(raw)


def _original_size(ctx: _Ctx, item: dict, default: tuple[float, float]) -> tuple[float, float]:
    """(height, width) of the labelled image, which sets the aspect ratio of rotations; the model's when
    absent (as rasterise)."""
    h = _number(ctx, item.get("original_height", default[0]), "original_height")
    w = _number(ctx, item.get("original_width", default[1]), "original_width")
    if h <= 0 or w <= 0:
        raise ctx.error(f"original size must be positive, got {w!r} x {h!r}")
    return h, w


def _cos_sin(degrees: float) -> tuple[float, float]:
    """Exact at multiples of 90 degrees (right-angle turns stay axis-aligned); any angle modulo 360 first."""
    degrees = math.fmod(degrees, 360.0)
    quarter = degrees / 90.0
    if quarter == round(quarter):
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(round(quarter)) % 4]
    return math.cos(math.radians(degrees)), math.sin(math.radians(degrees))


def _pixel(x: float, y: float, height: int, width: int) -> tuple[int, int]:
    """(row, col) of the model pixel holding point (x, y) in pixels; on a border, the next pixel."""
    x = round(x) if abs(x - round(x)) < _SNAP else x
    y = round(y) if abs(y - round(y)) < _SNAP else y
    return min(max(math.floor(y), 0), height - 1), min(max(math.floor(x), 0), width - 1)


def fill_polygon(xs: np.ndarray, ys: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre is inside the polygon (even-odd rule, half-open edges).

    xs, ys: (N,) vertices in model pixels. Written by hand because the libraries at hand fill a different
    set: cv2.fillPoly and PIL's ImageDraw.polygon fill every pixel the closed polygon touches (an 8 x 8
    pixel square fills 9 x 9, measured), so a cell-sized rectangle would spill into its neighbours; skimage's
    polygon (the centre rule) is not a dependency, and matplotlib's Path.contains_points leaves points on
    an edge undefined and reads its rc file on import. One vectorised pass: O(N * H + H * W).
    """
    x0, y0 = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    # Rows whose centre r + 0.5 lies in [lo, hi): each edge crosses them once (vertices are not counted twice).
    r_lo = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)
    r_hi = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)
    counts = np.maximum(r_hi - r_lo, 0)
    edge = np.repeat(np.arange(len(x0)), counts)
    rows = r_lo[edge] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    yc = rows + 0.5
    x = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    # A crossing at x flips every pixel whose centre is at or right of it; only the rows the polygon spans.
    cols = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)
    mask = np.zeros((height, width), dtype=bool)
    if len(rows):
        top, bottom = int(rows.min()), int(rows.max()) + 1
        flips = np.bincount((rows - top) * (width + 1) + cols, minlength=(bottom - top) * (width + 1))
        mask[top:bottom] = np.cumsum(flips.reshape(bottom - top, width + 1), axis=1)[:, :width] % 2 == 1
    return mask


def _shape_mask(xs: np.ndarray, ys: np.ndarray, centre: tuple[float, float], height: int, width: int):
    mask = fill_polygon(xs, ys, height, width)
    if not mask.any():  # smaller than a pixel, or between centres: the pixel under it
        mask[_pixel(*centre, height, width)] = True
    return mask


def _rectangle(ctx: _Ctx, item: dict, value: dict, height: int, width: int) -> np.ndarray:
    x, y = _number(ctx, value.get("x", _MISSING), "x"), _number(ctx, value.get("y", _MISSING), "y")
    w = _number(ctx, value.get("width", _MISSING), "width")
    h = _number(ctx, value.get("height", _MISSING), "height")
    rot = _number(ctx, value.get("rotation", 0.0), "rotation")
    if w < 0 or h < 0:
        raise ctx.error(f"width and height must be >= 0, got width={w!r}, height={h!r}")
    img_h, img_w = _original_size(ctx, item, (height, width))
    cos, sin = _cos_sin(rot)
    dx = np.array([0.0, w, w, 0.0]) * img_w / 100.0  # original pixels
    dy = np.array([0.0, 0.0, h, h]) * img_h / 100.0
    px = x + (dx * cos - dy * sin) * 100.0 / img_w  # percent
    py = y + (dx * sin + dy * cos) * 100.0 / img_h
    bad = (np.minimum(px, py) < -COORD_SLOP) | (np.maximum(px, py) > 100.0 + COORD_SLOP)
    if bad.any():
        corners = np.stack([px, py], axis=1)[bad].round(4).tolist()
        raise ctx.error(f"corners {corners} fall outside 0..100 %")
    xs, ys = px * width / 100.0, py * height / 100.0
    return _shape_mask(xs, ys, (xs.mean(), ys.mean()), height, width)


def _ellipse(ctx: _Ctx, item: dict, value: dict, height: int, width: int) -> np.ndarray:
    cx, cy = (_percent(ctx, value.get(k, _MISSING), k) for k in ("x", "y"))
    radii = [_number(ctx, value.get(k, _MISSING), k) for k in ("radiusX", "radiusY")]
    if not all(0 < r <= 100.0 + COORD_SLOP for r in radii):
        raise ctx.error(f"radiusX and radiusY must be in (0, 100] %, got {radii[0]!r}, {radii[1]!r}")
    cos, sin = _cos_sin(_number(ctx, value.get("rotation", 0.0), "rotation"))
    img_h, img_w = _original_size(ctx, item, (height, width))
    rx, ry = radii[0] * img_w / 100.0, radii[1] * img_h / 100.0  # original pixels
    # Enough vertices that the inscribed polygon's sagitta r (1 - cos(pi / n)) stays under the tolerance.
    r_model = max(radii) * max(height, width) / 100.0
    n = int(np.clip(math.ceil(math.pi / math.acos(max(1.0 - ELLIPSE_TOLERANCE_PX / r_model, 0.0))), 16, 4096))
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    ex, ey = rx * np.cos(t), ry * np.sin(t)
    xs = (cx + (ex * cos - ey * sin) * 100.0 / img_w) * width / 100.0
    ys = (cy + (ex * sin + ey * cos) * 100.0 / img_h) * height / 100.0
    return _shape_mask(xs, ys, (cx * width / 100.0, cy * height / 100.0), height, width)


def _polygon(ctx: _Ctx, item: dict, value: dict, height: int, width: int) -> np.ndarray:
    points = value.get("points", _MISSING)
    if not isinstance(points, (list, tuple)):
        raise ctx.error(f"points must be a list of [x, y] pairs, got {_show(points)}")
    if not 3 <= len(points) <= MAX_POLYGON_POINTS:
        raise ctx.error(f"a polygon needs 3..{MAX_POLYGON_POINTS} points, got {len(points)}")
    xy = np.empty((len(points), 2))
    for i, p in enumerate(points):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ctx.error(f"points[{i}] must be an [x, y] pair, got {_show(p)}")
        xy[i] = [_percent(ctx, p[j], f"points[{i}][{j}]") for j in (0, 1)]
    xs, ys = xy[:, 0] * width / 100.0, xy[:, 1] * height / 100.0
    return _shape_mask(xs, ys, (xs.mean(), ys.mean()), height, width)


def _keypoint(ctx: _Ctx, item: dict, value: dict, height: int, width: int) -> np.ndarray:
    """The pixel under the click. The point ``width`` is checked but unused: it is the size the tool draws
    the point at, not an area the annotator chose (rasterise marks the one cell under the point too)."""
    x, y = (_percent(ctx, value.get(k, _MISSING), k) for k in ("x", "y"))
    if "width" in value and _number(ctx, value["width"], "width") < 0:
        raise ctx.error(f"width must be >= 0, got {value['width']!r}")
    mask = np.zeros((height, width), dtype=bool)
    mask[_pixel(x * width / 100.0, y * height / 100.0, height, width)] = True
    return mask


def resample_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) -> (H, W): each output pixel takes the input pixel under its centre (the pixel rule again, so
    a brush that paints a rectangle's pixels gives the rectangle's mask). Exact integer indexing: cv2's
    INTER_NEAREST samples at ``floor(i * scale)``, half a pixel off the centre."""
    in_h, in_w = mask.shape
    rows = ((2 * np.arange(height) + 1) * in_h) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * in_w) // (2 * width)
    return mask[rows][:, cols]


def _rle_bytes(ctx: _Ctx, rle, n_values: int) -> list[int]:
    if not isinstance(rle, (list, tuple)) or not rle:
        raise ctx.error(f"rle must be a non-empty list of ints 0..255, got {_show(rle)}")
    bad = next(
        (
            i
            for i, b in enumerate(rle)
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b <= 255
        ),
        None,
    )
    if bad is not None:
        raise ctx.error(f"rle[{bad}] must be an int in 0..255, got {_show(rle[bad])}")
    # The most an RLE can take: 53 header bits, then at worst 14 bits per value (a run of one).
    if len(rle) > 8 + 2 * n_values:
        raise ctx.error(f"corrupt rle: {len(rle)} bytes is more than {n_values} values can need")
    if len(rle) < 7:
        raise ctx.error(f"corrupt rle: {len(rle)} bytes is shorter than its 53-bit header")
    declared = int.from_bytes(bytes(rle[:4]), "big")  # its first 32 bits: how many values it holds
    if declared != n_values:
        raise ctx.error(f"corrupt rle: it holds {declared} values, the image needs {n_values} (height x width x 4)")
    return [int(b) for b in rle]


def _brush(ctx: _Ctx, item: dict, value: dict, height: int, width: int) -> np.ndarray:
    if value.get("format", "rle") != "rle":
        raise ctx.error(f"brush format must be 'rle', got {_show(value.get('format'))}")
    img_h = _size(ctx, item.get("original_height"), "original_height", MAX_ORIGINAL_PIXELS)
    img_w = _size(ctx, item.get("original_width"), "original_width", MAX_ORIGINAL_PIXELS)
    if img_h * img_w > MAX_ORIGINAL_PIXELS:
        raise ctx.error(f"original size {img_w} x {img_h} is over {MAX_ORIGINAL_PIXELS} pixels")
    rle = _rle_bytes(ctx, value.get("rle"), img_h * img_w * 4)
    try:
        rgba = decode_rle(rle)  # flat (img_h * img_w * 4,) uint8, RGBA per pixel
    except (ValueError, IndexError, OverflowError) as err:  # a truncated or garbled bit stream
        raise ctx.error(f"corrupt rle: {type(err).__name__}: {err}") from None
    alpha = rgba.reshape(img_h, img_w, 4)[:, :, 3] >= BRUSH_ALPHA_MIN
    return resample_nearest(alpha, height, width)


_MASKERS = {
    "rectanglelabels": _rectangle, "rectangle": _rectangle,
    "polygonlabels": _polygon, "polygon": _polygon,
    "ellipselabels": _ellipse, "ellipse": _ellipse,
    "keypointlabels": _keypoint, "keypoint": _keypoint,
    "brushlabels": _brush, "brush": _brush,
}  # fmt: skip
MASK_TYPES = tuple(_MASKERS)  # result types region_mask reads


def region_mask(result_item: dict, height: int, width: int, *, where: str = "") -> np.ndarray:
    """The model pixels one Label Studio image region covers (the pixel rule in the module docstring).

    result_item: one ``result`` entry whose ``type`` is one of ``MASK_TYPES``. Returns (H, W) bool.
    Raises RegionError (a ValueError) naming ``where``, the region's type and id and the bad value.
    """
    if not isinstance(result_item, dict):
        raise RegionError(f"{where + ', ' if where else ''}a region must be an object, got {_show(result_item)}")
    kind = result_item.get("type")
    ctx = _Ctx(kind.lower() if isinstance(kind, str) else _show(kind), result_item.get("id"), where)
    if ctx.kind not in _MASKERS:
        raise ctx.error(f"type must be one of {sorted(_MASKERS)}, got {_show(kind)}")
    for name, side in (("height", height), ("width", width)):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1:
            raise ctx.error(f"the mask's {name} must be a positive integer, got {_show(side)}")
    value = result_item.get("value") or {}
    if not isinstance(value, dict):
        raise ctx.error(f"value must be an object, got {_show(value)}")
    return _MASKERS[ctx.kind](ctx, result_item, value, int(height), int(width))


def mask_to_cells(mask: np.ndarray, grid: Grid, min_fraction: float = MIN_FRACTION) -> np.ndarray:
    """Cells at least ``min_fraction`` of whose pixels are in the mask (``grid.pool`` owns the cell edges).

    mask: (H, W) bool, H x W = the grid's. The default marks any cell a pixel of the mask is in, which gives
    a rectangle the cells ``rasterise`` gives it. Returns (G_h, G_w) bool.
    """
    if not isinstance(grid, Grid):
        raise ValueError(f"grid must be a Grid, got {_show(grid)}")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, (int, float)) or not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {_show(min_fraction)}")
    mask = np.asarray(mask)
    if mask.shape != (grid.height, grid.width):
        raise ValueError(f"mask has shape {mask.shape}, the grid covers {(grid.height, grid.width)}")
    return grid.pool(mask != 0) >= min_fraction


def region_cells(result_item: dict, grid: Grid, *, min_fraction: float = MIN_FRACTION, where: str = "") -> np.ndarray:
    """``mask_to_cells(region_mask(...))`` at the grid's resolution. Returns (G_h, G_w) bool."""
    return mask_to_cells(region_mask(result_item, grid.height, grid.width, where=where), grid, min_fraction)


def _as_mask(mask) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape or mask.dtype.kind not in "biu":
        raise ValueError(f"mask must be a non-empty (H, W) bool or integer array, got {mask.dtype} {mask.shape}")
    return mask != 0


def mask_to_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outlines of a mask as Label Studio polygon points ``[[x %, y %], ...]``, one per 8-connected piece.

    mask: (H, W) bool. Holes are filled (a Label Studio polygon has none). ``region_mask`` of the polygons
    gives the mask back (holes filled) while a piece's outline has at most MAX_POLYGON_POINTS vertices:
    cv2.findContours traces the mask upsampled 3x, whose boundary runs through sub-pixel centres a third of
    a pixel inside each edge, so no pixel centre lies on an outline. Longer outlines are simplified
    (cv2.approxPolyDP) to fit, and then round-trip only approximately.
    """
    mask = _as_mask(mask)
    height, width = mask.shape
    up = np.repeat(np.repeat(mask, 3, axis=0), 3, axis=1).astype(np.uint8)  # (3H, 3W)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        epsilon = 0.5
        while len(contour) > MAX_POLYGON_POINTS:
            contour, epsilon = cv2.approxPolyDP(contour, epsilon, True), 2 * epsilon
        xy = (contour[:, 0, :].astype(np.float64) + 0.5) / 3.0  # model pixels
        if len(xy) >= 3:  # a simplified outline may collapse to a line
            polygons.append((xy * [100.0 / width, 100.0 / height]).tolist())
    return polygons


def mask_to_rle(mask: np.ndarray, height: int, width: int) -> list[int]:
    """A brush stroke's ``rle`` for a mask, at the labelled image's size ``height x width`` (the
    ``original_height x original_width`` a brush result carries), by the SDK's mask2rle.

    mask: (H, W) bool, resampled to ``height x width`` by ``resample_nearest``. ``region_mask`` of the
    stroke gives the mask back exactly when the labelled image is at least the mask's size.
    """
    mask = _as_mask(mask)
    for name, side in (("height", height), ("width", width)):
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1:
            raise ValueError(f"{name} must be a positive integer, got {_show(side)}")
    if height * width > MAX_ORIGINAL_PIXELS:
        raise ValueError(f"{width} x {height} is over {MAX_ORIGINAL_PIXELS} pixels")
    full = resample_nearest(mask, int(height), int(width))
    return mask2rle(full.astype(np.uint8) * 255)  # mask2rle repeats each value into R, G, B and alpha
