"""Label Studio image regions <-> pixel masks <-> cells (pure; property tests with hypothesis).

matplotlib's Path.contains_points (pixel centres, even-odd) is the oracle for filled shapes, and rasterise's
regions_to_cells the oracle for rectangles and keypoints as cells.
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle
from matplotlib.path import Path

from label_config import regions
from label_config.grid import Grid
from label_config.rasterise import regions_to_cells
from label_config.regions import (
    MASK_TYPES,
    MAX_POLYGON_POINTS,
    RegionError,
    fill_polygon,
    mask_to_cells,
    mask_to_polygons,
    mask_to_rle,
    region_cells,
    region_mask,
    resample_nearest,
)

# Grids that divide their image (percent cells = pixel cells), a non-square image among them.
GRIDS = [Grid(28, 28, 7, 7), Grid(224, 224, 4, 4), Grid(30, 50, 3, 5), Grid(32, 16, 4, 2)]


def rect(x, y, w, h, rotation=0.0, *, size=None, rid="r1", kind="rectanglelabels"):
    item = {"id": rid, "type": kind, "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation}}
    if size is not None:
        item.update(original_height=size[0], original_width=size[1])
    return item


def polygon(points, *, rid="p1", kind="polygonlabels"):
    return {"id": rid, "type": kind, "value": {"points": points, "closed": True}}


def ellipse(x, y, rx, ry, rotation=0.0, *, rid="e1", kind="ellipselabels"):
    return {"id": rid, "type": kind, "value": {"x": x, "y": y, "radiusX": rx, "radiusY": ry, "rotation": rotation}}


def keypoint(x, y, *, rid="k1", kind="keypointlabels"):
    return {"id": rid, "type": kind, "value": {"x": x, "y": y, "width": 1.0}}


def brush(rle, height, width, *, rid="b1", kind="brushlabels"):
    return {
        "id": rid,
        "type": kind,
        "original_height": height,
        "original_width": width,
        "value": {"format": "rle", "rle": rle, "brushlabels": ["Irrelevant area"]},
    }


def centres_in(xs, ys, height, width):
    """Oracle: (H, W) bool, pixel centres inside the polygon (matplotlib, even-odd)."""
    r, c = np.mgrid[0:height, 0:width]
    pts = np.stack([c.ravel() + 0.5, r.ravel() + 0.5], axis=1)
    return Path(np.stack([xs, ys], axis=1)).contains_points(pts).reshape(height, width)


def near_an_edge(xs, ys, height, width, eps=1e-6):
    """Whether a pixel centre lies within eps of the polygon's outline (where the oracle is undefined)."""
    r, c = np.mgrid[0:height, 0:width]
    p = np.stack([c.ravel() + 0.5, r.ravel() + 0.5], axis=1)[:, None, :]  # (P, 1, 2)
    a = np.stack([xs, ys], axis=1)[None]  # (1, N, 2)
    d = np.roll(a, -1, axis=1) - a
    t = np.clip(((p - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-300), 0, 1)
    return bool((np.linalg.norm(p - a - t[..., None] * d, axis=-1) < eps).any())


def box(height, width, r0, r1, c0, c1):
    out = np.zeros((height, width), dtype=bool)
    out[r0:r1, c0:c1] = True
    return out


# --- rectangles -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rectanglelabels", "rectangle"])
@pytest.mark.parametrize(
    "rotation, rows, cols",
    [
        (0, (4, 8), (8, 12)),  # 4 x 4 pixels from (x, y) = (8, 4)
        (90, (4, 8), (4, 8)),  # turned clockwise about its top-left corner: to the left of it
        (180, (0, 4), (4, 8)),
        (-90, (0, 4), (8, 12)),
        (450, (4, 8), (4, 8)),
    ],
)
def test_right_angle_rectangle_covers_whole_pixels(kind, rotation, rows, cols):
    h, w = 16, 20
    item = rect(8 * 100 / w, 4 * 100 / h, 4 * 100 / w, 4 * 100 / h, rotation, kind=kind)
    assert np.array_equal(region_mask(item, h, w), box(h, w, *rows, *cols))


def test_rectangle_at_45_degrees_matches_the_pixel_centre_oracle():
    h = w = 40
    # A 12-pixel square turned about (16.3, 8.2) pixels (off the diagonals through pixel centres).
    got = region_mask(rect(16.3 * 100 / w, 8.2 * 100 / h, 30.0, 30.0, 45), h, w)
    d = 12 / math.sqrt(2)
    xs, ys = 16.3 + np.array([0, d, 0, -d]), 8.2 + np.array([0, d, 2 * d, d])
    assert np.array_equal(got, centres_in(xs, ys, h, w))
    assert got[10:20, 14:18].all() and abs(got.sum() - 144) <= 12  # area kept to a pixel per side


def test_rotation_uses_the_original_aspect_ratio():
    # 60 x 30 (w x h) image; a 10 x 5 px rectangle (16.7 % x 16.7 %) turned 90 deg spans 10 px down.
    item = rect(50.0, 0.0, 100 / 6, 100 / 6, 90, size=(30, 60))
    assert np.array_equal(region_mask(item, 30, 60), box(30, 60, 0, 10, 25, 30))


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_a_cell_sized_rectangle_covers_exactly_its_cell_despite_float_noise(grid):
    for r, c in [(0, 0), (grid.rows - 1, grid.cols - 1), (grid.rows // 2, grid.cols // 2)]:
        x, y, w, h = grid.cell_box_percent(r, c)
        for noise in (0.0, 1e-9, -1e-9):
            item = rect(max(x + noise, 0.0), max(y + noise, 0.0), w - noise, h - noise)
            cells = region_cells(item, grid)
            assert cells.sum() == 1 and cells[r, c]


@pytest.mark.parametrize(
    "item",
    [
        rect(30.0, 30.0, 0.0, 0.0),
        rect(30.0, 30.0, 0.5, 0.5),
        ellipse(30.0, 30.0, 0.01, 0.01),
        polygon([[30, 30], [30.2, 30], [30, 30.2]]),
    ],
    ids=["zero-size", "between-centres", "tiny-ellipse", "tiny-polygon"],
)
def test_a_shape_smaller_than_a_pixel_is_the_pixel_under_it(item):
    mask = region_mask(item, 20, 20)  # 30 % of 20 px = pixel 6
    assert mask.sum() == 1 and mask[6, 6]


# --- polygons, ellipses, keypoints -------------------------------------------------------------


def test_triangle_polygon():
    mask = region_mask(polygon([[10, 10], [90, 10], [10, 90]]), 10, 10)
    expected = np.array([[1 <= r <= 7 and 1 <= c <= 8 - r for c in range(10)] for r in range(10)])
    assert np.array_equal(mask, expected)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-0.05, 100.05), st.floats(-0.05, 100.05)), min_size=3, max_size=25),
    st.sampled_from([(13, 17), (28, 28), (40, 24)]),
)
def test_polygon_matches_the_oracle_even_self_intersecting(points, size):
    h, w = size
    xy = np.array(points) * [w / 100.0, h / 100.0]
    assume(not near_an_edge(xy[:, 0], xy[:, 1], h, w))
    got = region_mask(polygon([list(p) for p in points]), h, w)
    want = centres_in(xy[:, 0], xy[:, 1], h, w)
    if want.any():
        assert np.array_equal(got, want)
    else:
        assert got.sum() == 1  # the pixel under it


@pytest.mark.parametrize("kind", ["ellipselabels", "ellipse"])
@pytest.mark.parametrize("rotation", [0.0, 30.0, 90.0, 200.0])
def test_ellipse_matches_its_equation_at_pixel_centres(kind, rotation):
    h, w = 40, 60
    cx, cy, rx, ry = 30.5, 18.25, 21.0, 8.0  # pixels (original size = model size)
    got = region_mask(ellipse(cx * 100 / w, cy * 100 / h, rx * 100 / w, ry * 100 / h, rotation, kind=kind), h, w)
    r, c = np.mgrid[0:h, 0:w]
    t = math.radians(rotation)
    u, v = c + 0.5 - cx, r + 0.5 - cy
    a, b = u * math.cos(t) + v * math.sin(t), -u * math.sin(t) + v * math.cos(t)  # into the ellipse's frame
    level = np.sqrt((a / rx) ** 2 + (b / ry) ** 2)
    assert got[level < 1 - 1e-3].all() and not got[level > 1].any()


def test_ellipse_turned_90_degrees_swaps_its_axes():
    a = region_mask(ellipse(50, 50, 30, 10, 0), 41, 41)  # centred on pixel (20, 20)'s centre
    assert np.array_equal(a, region_mask(ellipse(50, 50, 10, 30, 90), 41, 41))
    assert np.array_equal(a.T, region_mask(ellipse(50, 50, 10, 30, 0), 41, 41))


@pytest.mark.parametrize("kind", ["keypointlabels", "keypoint"])
@pytest.mark.parametrize(
    "x, y, pixel",
    [
        (12.5, 12.5, (2, 2)),
        (10.0, 10.0, (2, 2)),
        (10.0 - 1e-9, 10.0, (2, 2)),
        (0.0, 0.0, (0, 0)),
        (100.0, 100.0, (19, 19)),
        (100.01, -0.01, (0, 19)),
    ],
)
def test_keypoint_is_the_pixel_under_it(kind, x, y, pixel):
    mask = region_mask(keypoint(x, y, kind=kind), 20, 20)
    assert mask.sum() == 1 and mask[pixel]


# --- parity with rasterise --------------------------------------------------------------------


@st.composite
def pixel_rectangles(draw):
    """A grid, and a rectangle with whole-pixel corners turned by a right angle, inside the image."""
    grid = draw(st.sampled_from(GRIDS))
    rotation = draw(st.sampled_from([0, 90, 180, 270, -90]))
    turned = rotation % 180 == 90  # its width then runs down the image
    w = draw(st.integers(0, grid.height if turned else grid.width))
    h = draw(st.integers(0, grid.width if turned else grid.height))
    (dx, dy) = {0: (w, h), 90: (-h, w), 180: (-w, -h), 270: (h, -w), -90: (h, -w)}[rotation]
    x = draw(st.integers(max(0, -dx), min(grid.width, grid.width - dx)))
    y = draw(st.integers(max(0, -dy), min(grid.height, grid.height - dy)))
    pct = (100 * x / grid.width, 100 * y / grid.height, 100 * w / grid.width, 100 * h / grid.height)
    return grid, rect(*pct, rotation, size=(grid.height, grid.width))


@settings(max_examples=300, deadline=None)
@given(pixel_rectangles())
def test_whole_pixel_rectangles_give_rasterises_cells_exactly(case):
    grid, item = case
    assert np.array_equal(region_cells(item, grid), regions_to_cells([item], grid))


def _grown(grid, x, y, w, h, rotation, d):
    """The rectangle (pixels) grown by d pixels on every side (shrunk for d < 0), as a percent item."""
    t = math.radians(rotation)
    ox, oy = -d * math.cos(t) + d * math.sin(t), -d * math.sin(t) - d * math.cos(t)
    return rect(
        100 * (x + ox) / grid.width,
        100 * (y + oy) / grid.height,
        100 * (w + 2 * d) / grid.width,
        100 * (h + 2 * d) / grid.height,
        rotation,
        size=(grid.height, grid.width),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    st.sampled_from(GRIDS[:1] + GRIDS[2:]),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(-360, 360),
)
def test_any_rectangle_is_within_a_pixel_of_rasterises_cells(grid, fx, fy, fw, fh, rotation):
    # Pixel centres decide here, exact areas there: the cells agree up to a pixel at the rectangle's edge.
    x, y = 2 + fx * (grid.width - 4), 2 + fy * (grid.height - 4)
    w, h = fw * grid.width, fh * grid.height
    t = math.radians(rotation)
    cx = x + np.array([0, w, w, 0]) * math.cos(t) - np.array([0, 0, h, h]) * math.sin(t)
    cy = y + np.array([0, w, w, 0]) * math.sin(t) + np.array([0, 0, h, h]) * math.cos(t)
    if cx.min() < 2 or cy.min() < 2 or cx.max() > grid.width - 2 or cy.max() > grid.height - 2:
        return  # the grown rectangle must stay in the image
    mine = region_cells(_grown(grid, x, y, w, h, rotation, 0.0), grid)
    assert not (mine & ~regions_to_cells([_grown(grid, x, y, w, h, rotation, 1.0)], grid)).any()
    if w > 2 and h > 2:
        assert not (regions_to_cells([_grown(grid, x, y, w, h, rotation, -1.0)], grid) & ~mine).any()


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(GRIDS), st.floats(0, 100), st.floats(0, 100))
def test_keypoints_give_rasterises_cell(grid, x, y):
    assert np.array_equal(region_cells(keypoint(x, y), grid), regions_to_cells([keypoint(x, y)], grid))


# --- mask -> cells ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_fraction, cells", [(1e-6, 2), (0.25, 2), (0.5, 1), (1.0, 1)])
def test_mask_to_cells_counts_a_cell_at_min_fraction(min_fraction, cells):
    grid = Grid(8, 8, 2, 2)  # 4 x 4 pixel cells
    mask = box(8, 8, 0, 4, 0, 4) | box(8, 8, 0, 2, 4, 6)  # cell (0, 0) whole, cell (0, 1) a quarter
    assert mask_to_cells(mask, grid, min_fraction).sum() == cells


@pytest.mark.parametrize(
    "args, problem",
    [
        ((np.zeros((8, 8), bool), Grid(8, 8, 2, 2), 0.0), "min_fraction"),
        ((np.zeros((8, 8), bool), Grid(8, 8, 2, 2), 1.5), "min_fraction"),
        ((np.zeros((8, 8), bool), Grid(8, 8, 2, 2), True), "min_fraction"),
        ((np.zeros((8, 9), bool), Grid(8, 8, 2, 2), 0.5), "shape"),
        ((np.zeros((8, 8), bool), (8, 8, 2, 2), 0.5), "Grid"),
    ],
)
def test_mask_to_cells_refuses_bad_arguments(args, problem):
    with pytest.raises(ValueError, match=problem):
        mask_to_cells(*args)


# --- brushes ----------------------------------------------------------------------------------

masks = st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1), st.floats(0.05, 0.95)).map(
    lambda a: np.random.default_rng(a[2]).random((a[0], a[1])) < a[3]
)


@settings(max_examples=60, deadline=None)
@given(masks, st.integers(1, 3), st.integers(1, 3))
def test_brush_round_trips_through_rle(mask, sy, sx):
    h, w = mask.shape
    rle = mask_to_rle(mask, h * sy + (sy > 1), w * sx)  # the labelled image at least the mask's size
    assert np.array_equal(region_mask(brush(rle, h * sy + (sy > 1), w * sx), h, w), mask)
    same = decode_rle(mask_to_rle(mask, h, w)).reshape(h, w, 4)[:, :, 3]
    assert np.array_equal(same != 0, mask)


def test_brush_that_paints_a_rectangle_gives_the_rectangles_mask():
    painted = np.zeros((64, 96), np.uint8)
    painted[16:40, 24:72] = 255  # on the 2x original image
    item = brush(mask2rle(painted), 64, 96, kind="brush")
    assert np.array_equal(region_mask(item, 32, 48), region_mask(rect(25.0, 25.0, 50.0, 37.5), 32, 48))


def test_brush_half_transparent_pixels_count_from_alpha_128():
    alpha = np.array([[0, 127, 128, 255]], np.uint8)
    rgba = np.repeat(alpha.ravel(), 4)
    assert region_mask(brush(encode_rle(rgba), 1, 4), 1, 4).tolist() == [[False, False, True, True]]


def test_resample_nearest_samples_at_pixel_centres():
    src = np.arange(6)[None, :].repeat(2, 0)
    assert resample_nearest(src, 1, 3).tolist() == [[1, 3, 5]]
    assert resample_nearest(src, 2, 12)[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


GOOD_RLE = mask2rle(np.full((3, 4), 255, np.uint8))  # a 3 x 4 image


@pytest.mark.parametrize(
    "change, problem",
    [
        (dict(rle=GOOD_RLE[:-2]), "corrupt rle: ValueError"),  # truncated
        (dict(rle=GOOD_RLE[:5]), "shorter than its 53-bit header"),
        (dict(rle=[0, 0, 0, 47] + GOOD_RLE[4:]), "holds 47 values, the image needs 48"),
        (dict(rle=[255] * 10), "holds 4294967295 values"),
        (dict(rle=GOOD_RLE + [0] * 200), "more than 48 values can need"),
        (dict(rle=[1, 2, 300]), r"rle\[2\] must be an int in 0..255, got 300"),
        (dict(rle=[1, True, 3]), r"rle\[1\] must be an int"),
        (dict(rle=[1, 2.0, 3]), r"rle\[1\] must be an int"),
        (dict(rle="AAAB"), "rle must be a non-empty list"),
        (dict(rle=[]), "rle must be a non-empty list"),
        (dict(format="png"), "format must be 'rle', got 'png'"),
        (dict(original_width=None), "original_width must be an integer"),
        (dict(original_height=3.0), "original_height must be an integer"),
        (dict(original_height=0), "original_height must be an integer"),
        (dict(original_height=10**12), "original_height must be an integer"),
        (dict(original_height=20_000, original_width=20_000), "over 100000000 pixels"),
    ],
)
def test_corrupt_brush_raises_naming_the_region(change, problem):
    item = brush(GOOD_RLE, 3, 4, rid="stroke-9")
    for key, value in change.items():
        (item if key.startswith("original") else item["value"])[key] = value
    if "original_width" in change and change["original_width"] is None:
        del item["original_width"]
    with pytest.raises(RegionError, match=problem) as err:
        region_mask(item, 3, 4, where="task 5, annotation 6")
    assert str(err.value).startswith("task 5, annotation 6, brushlabels region 'stroke-9': ")
    assert (err.value.region_type, err.value.region_id) == ("brushlabels", "stroke-9")


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, problem",
    [
        (rect(float("nan"), 1, 1, 1), "x must be finite, got nan"),
        (rect(1, float("inf"), 1, 1), "y must be finite"),
        (rect(1, 1, 1, 1, float("nan")), "rotation must be finite"),
        (rect(10**400, 1, 1, 1), "x must be finite"),
        (rect(True, 1, 1, 1), "x must be a number, got True"),
        (rect("10", 1, 1, 1), "x must be a number, got '10'"),
        (rect(1, 1, -1.0, 1), "width and height must be >= 0"),
        (rect(95.0, 1, 10, 1), "outside 0..100 %"),
        (rect(-0.06, 1, 1, 1), "outside 0..100 %"),
        (rect(95.0, 0.0, 10, 10, 45), "outside 0..100 %"),
        ({"id": "r1", "type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 1}}, "height is missing"),
        ({**rect(1, 1, 1, 1), "original_width": -5}, "original size must be positive"),
        (polygon([[1, 2], [3, 4]]), "a polygon needs 3..10000 points, got 2"),
        (polygon([[1, 2]] * (MAX_POLYGON_POINTS + 1)), "got 10001"),
        (polygon("1,2 3,4 5,6"), "points must be a list"),
        (polygon([[1, 2], [3, 4], [5]]), r"points\[2\] must be an \[x, y\] pair"),
        (polygon([[1, 2], [3, 4], [5, 101]]), r"points\[2\]\[1\]=101.0 falls outside"),
        (polygon([[1, 2], [3, 4], [5, None]]), r"points\[2\]\[1\] must be a number, got None"),
        (ellipse(50, 50, 0, 10), "radiusX and radiusY must be in"),
        (ellipse(50, 50, 10, -1), "radiusX and radiusY must be in"),
        (ellipse(50, 50, 10, 150), "radiusX and radiusY must be in"),
        (ellipse(50, 120, 10, 10), "y=120.0 falls outside"),
        (keypoint(101, 5), "x=101.0 falls outside"),
        (keypoint(float("nan"), 5), "x must be finite"),
        ({**keypoint(1, 1), "value": {"x": 1, "y": 1, "width": -2}}, "width must be >= 0"),
        ({**keypoint(1, 1), "value": [1, 2]}, "value must be an object"),
        ({**keypoint(1, 1), "type": "choices"}, "type must be one of"),
        ({**keypoint(1, 1), "type": None}, "type must be one of"),
    ],
)
def test_bad_region_raises_naming_type_id_and_value(item, problem):
    with pytest.raises(RegionError, match=problem) as err:
        region_mask(item, 20, 20)
    kind = item["type"].lower() if isinstance(item["type"], str) else "None"
    assert f"{kind} region {item['id']!r}: " in str(err.value)


@pytest.mark.parametrize(
    "args", [("not a dict", 4, 4), (keypoint(1, 1), 0, 4), (keypoint(1, 1), 4, True), (keypoint(1, 1), 4.0, 4)]
)
def test_bad_call_raises_value_error(args):
    with pytest.raises(ValueError):
        region_mask(*args)


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(["x", "y", "width", "height", "rotation", "radiusX", "radiusY", "points", "rle", "format"])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(MASK_TYPES + ("Polygon", "choices", 3)),
    st.dictionaries(keys, junk, max_size=6),
    st.dictionaries(st.sampled_from(["original_width", "original_height", "id"]), junk, max_size=3),
    st.integers(1, 12),
    st.integers(1, 12),
)
def test_garbage_raises_only_value_error(kind, value, extra, h, w):
    try:
        mask = region_mask({"type": kind, "value": value, **extra}, h, w)
    except ValueError:
        return
    assert mask.shape == (h, w) and mask.dtype == bool


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=80))
def test_garbage_rle_with_a_right_header_raises_only_value_error(body):
    rle = list((3 * 4 * 4).to_bytes(4, "big")) + body
    try:
        mask = region_mask(brush(rle, 3, 4), 3, 4)
    except ValueError as err:
        assert "brushlabels region 'b1'" in str(err)
        return
    assert mask.shape == (3, 4)


# --- mask -> polygons (suggestions) -----------------------------------------------------------


def _holes_filled(mask):
    """Oracle: the mask plus every background pixel not 4-connected to the outside."""
    outside = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2, flags=4)
    return (outside != 2)[1:-1, 1:-1]


@settings(max_examples=150, deadline=None)
@given(masks)
def test_mask_to_polygons_round_trips_with_holes_filled(mask):
    h, w = mask.shape
    polygons = mask_to_polygons(mask)
    back = np.zeros_like(mask)
    for points in polygons:
        assert len(points) >= 3 and all(0 <= v <= 100 for p in points for v in p)
        back |= region_mask(polygon(points), h, w)
    assert np.array_equal(back, _holes_filled(mask))


def test_mask_to_polygons_of_a_ring_is_its_outline_and_of_nothing_is_empty():
    ring = box(10, 10, 2, 8, 2, 8) & ~box(10, 10, 4, 6, 4, 6)
    (outline,) = mask_to_polygons(ring)
    assert np.array_equal(region_mask(polygon(outline), 10, 10), box(10, 10, 2, 8, 2, 8))
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []


def test_mask_to_polygons_simplifies_an_outline_over_the_point_bound(monkeypatch):
    monkeypatch.setattr(regions, "MAX_POLYGON_POINTS", 12)
    mask = region_mask(ellipse(50, 50, 40, 30, 20), 40, 40)
    (points,) = mask_to_polygons(mask)
    assert 3 <= len(points) <= 12
    back = region_mask(polygon(points), 40, 40)
    assert (back & mask).sum() / (back | mask).sum() > 0.85  # approximately the shape still


@pytest.mark.parametrize("bad", [np.zeros((0, 4), bool), np.zeros((3,), bool), np.zeros((3, 3), float)])
def test_mask_functions_refuse_bad_masks(bad):
    with pytest.raises(ValueError, match="mask must be"):
        mask_to_polygons(bad)
    with pytest.raises(ValueError, match="mask must be"):
        mask_to_rle(bad, 4, 4)


# --- the scanline and its speed -----------------------------------------------------------------


def test_fill_polygon_is_half_open_like_the_grid():
    square = fill_polygon(np.array([2.5, 5.5, 5.5, 2.5]), np.array([1.5, 1.5, 3.5, 3.5]), 6, 8)
    assert np.array_equal(square, box(6, 8, 1, 3, 2, 5))  # centres on the left/top edge in, right/bottom out


def test_a_thousand_regions_on_a_224_image_take_about_a_second():
    rng = np.random.default_rng(0)
    stroke = mask2rle((region_mask(ellipse(40, 60, 20, 10, 30), 224, 224) * 255).astype(np.uint8))
    items = []
    for i in range(1000):
        x, y = rng.uniform(20, 50, 2)
        kind = i % 5
        if kind == 0:
            items.append(rect(x, y, rng.uniform(1, 30), rng.uniform(1, 30), rng.uniform(-30, 30)))
        elif kind == 1:
            items.append(polygon((rng.uniform(0, 100, (rng.integers(3, 30), 2))).tolist()))
        elif kind == 2:
            items.append(ellipse(x, y, rng.uniform(1, 30), rng.uniform(1, 30), rng.uniform(0, 360)))
        elif kind == 3:
            items.append(keypoint(x, y))
        else:
            items.append(brush(stroke, 224, 224))
    grid = Grid(224, 224, 8, 8)
    start = time.perf_counter()
    for item in items:
        region_cells(item, grid)
    elapsed = time.perf_counter() - start
    print(f"\n1000 regions (200 of each type) on 224 x 224 -> cells: {elapsed:.3f} s")
    assert elapsed < 20  # a sanity bound on a shared machine, not a benchmark
