"""Label Studio regions -> grid cells, and an annotation -> the feedback it carries. Pure: no I/O.

Shape legend: G_h x G_w grid cells.

Every image region type marks cells. Rectangles and keypoints take the exact path here: a rectangle's
``x, y, width, height`` are percent of the original image size, ``(x, y)`` is the top-left corner before
rotation and ``rotation`` turns it clockwise (y points down) about that corner, in pixel space (so the
image's aspect ratio matters); a keypoint's ``x, y`` is a percent position. Cells are uniform in percent
(``Grid.cell_box_percent``), so this works in cell units, where cell ``(r, c)`` is ``[c, c + 1) x [r, r + 1)``,
and is exact on any grid. Polygons, ellipses and brush strokes (RLE) go through ``regions.region_cells``
(pixel masks at the grid's resolution; on whole pixels it agrees with the rectangles here).

Which regions are feedback: a region says "the model must not use this" when it comes from one of our cell
tools or carries an irrelevant-like label (``interface.label_kind``: the snippet's "Model must not use this",
our "Irrelevant ..."); one labelled otherwise ("Model should use this", a neutral "model looks here") marks
no cells and ``regions_without_cells`` reports it. A region without labels (a plain ``rectangle``) counts.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from label_config.controls import POINT_TAGS, RECT_TAGS, ConfigControls
from label_config.grid import Grid
from label_config.interface import OUR_FEEDBACK_CONTROLS, Option, is_neutral, label_kind
from label_config.names import CORRECT_LABEL, LABEL_CHECK, LABEL_OK, SKIP
from label_config.regions import region_cells

MASK_ONLY_TAGS = ("polygonlabels", "polygon", "ellipselabels", "ellipse", "brushlabels", "brush")
CELL_TAGS = RECT_TAGS + POINT_TAGS + MASK_ONLY_TAGS  # every region type that marks cells

COORD_SLOP = 0.05  # percent: LS float noise (or a rotated corner) may poke out this far; clipped
MIN_OVERLAP = 1e-6  # fraction of a cell: less overlap is rounding noise at a cell border, not a mark
_SNAP = 1e-7  # cell units: a point this close to a cell border is on it (then it belongs to the next cell)
# Items (regions and choices) in one result. The finest grid people label (28 x 28 cells on a 224 px image) has
# 784 cells, so 1,000 leaves room for one region per cell and the choices; rasterising 1,000 rotated rectangles
# on that grid takes about 3 s, where the 28,000 a real annotation held took minutes.
MAX_REGIONS = 1000
_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxlevel = 40, 40, 4, 4, 2


def _show(raw) -> str:
    """A short repr of a bad value for an error message: whatever was sent, it stays a line."""
    if isinstance(raw, int) and not isinstance(raw, bool) and raw.bit_length() > 64:
        return f"an integer of about {int(raw.bit_length() * math.log10(2)) + 1} digits"
    try:
        return _SHOW.repr(raw)[:80]
    except (ValueError, RecursionError):  # an int too long to print, nested in a list
        return f"a {type(raw).__name__}"


def _where(task_id, annotation_id, item: dict) -> str:
    return _region_where(f"task {task_id}, annotation {annotation_id}", item)


def _region_where(head: str, item: dict) -> str:
    return f"{head}, region {_show(item.get('id'))}"


def _number(value: dict, key: str, where: str, default: float | None = None) -> float:
    raw = value.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: {key} must be a number, got {_show(raw)}")
    try:
        number = float(raw)
    except OverflowError:  # JSON and Label Studio take 10**400; a float cannot hold it
        raise ValueError(f"{where}: {key} is too large, got {_show(raw)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {key} must be finite, got {_show(raw)}")
    return number


def _value(item: dict, where: str) -> dict:
    """A region's ``value``: a dict (missing counts as empty); anything else is a ValueError naming it."""
    value = item.get("value")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: value must be an object, got {type(value).__name__} {_show(value)}")
    return value


def _items(result, where: str) -> list[dict]:
    """A result: a list of at most MAX_REGIONS objects (counted first: the cap bounds the work that follows)."""
    if not isinstance(result, list):
        raise ValueError(f"{where}: result must be a list of objects, got {_show(result)}")
    if len(result) > MAX_REGIONS:
        raise ValueError(f"{where}: result has {len(result)} regions, at most {MAX_REGIONS} are read")
    if not all(isinstance(item, dict) for item in result):
        raise ValueError(f"{where}: result must be a list of objects, got {_show(result)}")
    return result


def _kind(item: dict, where: str) -> str:
    """A region's ``type``, lower case ('' when absent)."""
    kind = item.get("type", "")
    if not isinstance(kind, str):
        raise ValueError(f"{where}, region {_show(item.get('id'))}: type must be a string, got {_show(kind)}")
    return kind.lower()


def _cos_sin(degrees: float) -> tuple[float, float]:
    """Exact for multiples of 90 degrees, so right-angle rotations stay axis-aligned; any finite angle is
    taken modulo 360 first (1e20 degrees is a real turn, not 0)."""
    degrees = math.fmod(degrees, 360.0)
    quarter = degrees / 90.0
    if quarter == round(quarter):
        return [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(round(quarter)) % 4]
    rad = math.radians(degrees)
    return math.cos(rad), math.sin(rad)


def _rect_corners(item: dict, grid: Grid, where: str) -> tuple[np.ndarray, bool]:
    """(4, 2) corners ``(x, y)`` in percent of the image, validated; and whether it is axis-aligned."""
    value = _value(item, where)
    x, y = _number(value, "x", where), _number(value, "y", where)
    w, h = _number(value, "width", where), _number(value, "height", where)
    rot = _number(value, "rotation", where, default=0.0)
    if w < 0 or h < 0:
        raise ValueError(f"{where}: width and height must be >= 0, got width={w!r}, height={h!r}")
    img_w = _number(item, "original_width", where, default=grid.width)
    img_h = _number(item, "original_height", where, default=grid.height)
    if img_w <= 0 or img_h <= 0:
        raise ValueError(f"{where}: original size must be positive, got {img_w!r} x {img_h!r}")
    cos, sin = _cos_sin(rot)
    # Rotate in pixels (aspect matters), then back to percent. Overflow (1e308 %) is caught as not finite.
    with np.errstate(over="ignore", invalid="ignore"):
        dx = np.array([0.0, w, w, 0.0]) * img_w / 100.0
        dy = np.array([0.0, 0.0, h, h]) * img_h / 100.0
        px = x + (dx * cos - dy * sin) * 100.0 / img_w
        py = y + (dx * sin + dy * cos) * 100.0 / img_h
    corners = np.stack([px, py], axis=1)
    _check_range(corners, where)
    return corners, cos * sin == 0.0


def _check_range(points: np.ndarray, where: str) -> None:
    if not np.isfinite(points).all():  # a huge width or size overflowed once turned into pixels
        raise ValueError(f"{where}: coordinates {points.tolist()} are not finite")
    bad = (points < -COORD_SLOP) | (points > 100.0 + COORD_SLOP)
    if bad.any():
        raise ValueError(f"{where}: coordinates {points[bad.any(axis=1)].round(4).tolist()} fall outside 0..100 %")


def _to_cells(points_pct: np.ndarray, grid: Grid) -> np.ndarray:
    """Percent (x, y) -> cell units (u, v)."""
    _, _, cell_w, cell_h = grid.cell_box_percent(0, 0)
    return points_pct / np.array([cell_w, cell_h])


def _point_cell(u: float, v: float, grid: Grid) -> tuple[int, int]:
    """The cell containing a point in cell units; on a border it belongs to the next cell (half-open)."""
    u = round(u) if abs(u - round(u)) < _SNAP else u
    v = round(v) if abs(v - round(v)) < _SNAP else v
    return (min(max(int(math.floor(v)), 0), grid.rows - 1), min(max(int(math.floor(u)), 0), grid.cols - 1))


def _clip(poly: list[tuple[float, float]], axis: int, bound: float, keep_below: bool) -> list:
    """Sutherland-Hodgman: the part of a convex polygon on one side of an axis-aligned line."""
    out: list[tuple[float, float]] = []
    inside = (lambda p: p[axis] <= bound) if keep_below else (lambda p: p[axis] >= bound)
    for i, cur in enumerate(poly):
        prev = poly[i - 1]
        if inside(cur) != inside(prev):
            t = (bound - prev[axis]) / (cur[axis] - prev[axis])
            out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
        if inside(cur):
            out.append(cur)
    return out


def _area(poly: list[tuple[float, float]]) -> float:
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(poly, poly[1:] + poly[:1])))


def _overlaps(corners: np.ndarray, grid: Grid, axis_aligned: bool) -> np.ndarray:
    """(G_h, G_w) area (in cells) of the convex quadrilateral ``corners`` (cell units) in each cell."""
    u, v = corners[:, 0], corners[:, 1]
    if axis_aligned:
        # Rotation a multiple of 90 degrees: overlap is a product of interval overlaps (exact, fast).
        cols, rows = np.arange(grid.cols), np.arange(grid.rows)
        ow = np.clip(np.minimum(u.max(), cols + 1) - np.maximum(u.min(), cols), 0, None)
        oh = np.clip(np.minimum(v.max(), rows + 1) - np.maximum(v.min(), rows), 0, None)
        return np.outer(oh, ow)
    out = np.zeros(grid.shape)
    c0, c1 = max(int(math.floor(u.min())), 0), min(int(math.ceil(u.max())), grid.cols)
    r0, r1 = max(int(math.floor(v.min())), 0), min(int(math.ceil(v.max())), grid.rows)
    poly = [(float(a), float(b)) for a, b in corners]
    for r in range(r0, r1):
        band = _clip(_clip(poly, 1, r, False), 1, r + 1, True)
        for c in range(c0, c1):
            cell = _clip(_clip(band, 0, c, False), 0, c + 1, True)
            out[r, c] = _area(cell) if len(cell) >= 3 else 0.0
    return out


def _rect_cells(item: dict, grid: Grid, where: str, min_overlap: float) -> np.ndarray:
    corners_pct, axis_aligned = _rect_corners(item, grid, where)
    corners = _to_cells(corners_pct, grid)
    overlap = _overlaps(corners, grid, axis_aligned)
    marked = overlap > min_overlap
    if not marked.any():
        # A (near) zero-size rectangle is a point: mark the cell holding its centre.
        u, v = corners.mean(axis=0)
        marked[_point_cell(float(u), float(v), grid)] = True
    return marked


def regions_to_cells(
    result: list[dict],
    grid: Grid,
    *,
    task_id=None,
    annotation_id=None,
    to_names: Sequence[str] | None = None,
    min_overlap: float = MIN_OVERLAP,
) -> np.ndarray:
    """Cells marked by one annotation's (or prediction's) regions.

    result: Label Studio ``result`` items; ``rectanglelabels``/``rectangle`` mark every cell they
    overlap by more than ``min_overlap`` of a cell (a zero-size one marks the cell holding it),
    ``keypointlabels``/``keypoint`` the cell holding the point, polygons, ellipses and brush strokes every
    cell one of their pixels is in (``regions.region_cells``); other types are ignored, as are regions whose
    ``to_name`` is not in ``to_names`` (when given). Labels are not read here (``parse_annotation`` picks
    the feedback regions). Returns (G_h, G_w) bool.
    Raises ValueError naming the task, annotation and region on malformed geometry (a ``RegionError`` for
    a polygon, ellipse or brush stroke, a corrupt RLE among them).
    """
    cells = np.zeros(grid.shape, dtype=bool)
    for item in _items(result, f"task {task_id}, annotation {annotation_id}"):
        kind = _kind(item, f"task {task_id}, annotation {annotation_id}")
        if kind not in CELL_TAGS:
            continue
        to_name = item.get("to_name")
        if to_names is not None and (not isinstance(to_name, str) or to_name not in to_names):
            continue
        where = _where(task_id, annotation_id, item)
        if kind in MASK_ONLY_TAGS:
            cells |= region_cells(item, grid, where=f"task {task_id}, annotation {annotation_id}")
        elif kind in RECT_TAGS:
            cells |= _rect_cells(item, grid, where, min_overlap)
        else:
            value = _value(item, where)
            point = np.array([[_number(value, "x", where), _number(value, "y", where)]])
            _check_range(point, where)
            u, v = _to_cells(point, grid)[0]
            cells[_point_cell(float(u), float(v), grid)] = True
    return cells


NON_REGION_TYPES = ("choices", "textarea", "rating", "number", "datetime", "taxonomy", "labels", "relation")


def _labels(item: dict, kind: str, where: str) -> list[str]:
    """The labels a ``<kind>labels`` region carries (``value[kind]``); [] for a plain tool's region."""
    labels = _value(item, where).get(kind, [])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError(f"{where}: {kind} must be a list of strings, got {_show(labels)}")
    return labels


def _is_feedback(item: dict, kind: str, where: str, ours: Sequence[str]) -> bool:
    """Whether a region marks what the model must not use: it comes from one of our cell tools (``ours``),
    carries no labels, or carries an irrelevant-like one (a relevant or neutral label does not count)."""
    labels = _labels(item, kind, where)
    if not labels:
        return True
    if item.get("from_name") in ours:  # every label of our tools marks, but the neutral suggestion label
        return not all(is_neutral(Option(label)) for label in labels)
    return any(label_kind(Option(label)) == "irrelevant" for label in labels)


def _cell_tools(controls: ConfigControls | None) -> tuple[str, ...]:
    """Our cell tools' names: the defaults and, for a renamed config, its rectangle and keypoint controls."""
    renamed = tuple(c.name for c in (controls.rect, controls.point) if c is not None) if controls else ()
    return OUR_FEEDBACK_CONTROLS + renamed


def regions_without_cells(result: list[dict], *, controls: ConfigControls | None = None) -> list[str]:
    """What in ``result`` is a region yet marks no cells, one phrase each: a type the rasteriser cannot read
    (``"videorectangle regions"``) or a region whose labels are not irrelevant-like (``"rectanglelabels
    regions labelled 'Model should use this'"``), to report rather than count as "nothing marked"."""
    found = []
    for item in _items(result, "result"):
        kind = _kind(item, "result")
        if kind in CELL_TAGS:
            where = _region_where("result", item)
            if not _is_feedback(item, kind, where, _cell_tools(controls)):
                found.append(f"{kind} regions labelled {_show(_labels(item, kind, where))}")
        elif kind and kind not in NON_REGION_TYPES:
            found.append(f"{kind[:40]} regions")  # a type is any string a client sent: keep the warning a line
    return found


@dataclass(frozen=True, eq=False)
class AnnotationFeedback:
    """What one annotation says about its image. cells: (G_h, G_w) bool, read-only."""

    cells: np.ndarray
    label_fix: int | None  # index into classes of the right class, when the label is wrong
    skip: bool


def _choices(result: list[dict], name: str | None, where: str) -> list[str]:
    if name is None:
        return []
    found: list[str] = []
    for item in result:
        if item.get("from_name") == name and _kind(item, where) == "choices":
            chosen = _value(item, where).get("choices", [])
            if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
                raise ValueError(f"{where}: choices of {name!r} must be a list of strings, got {_show(chosen)}")
            found.extend(chosen)
    return found


def parse_annotation(
    result: list[dict],
    grid: Grid,
    classes: list[str],
    *,
    task_id=None,
    annotation_id=None,
    controls: ConfigControls | None = None,
) -> AnnotationFeedback:
    """Cells, label fix and skip flag of one annotation's ``result`` (choices read by ``annotation_choices``).

    ``controls`` (from ``check_config``) supplies a project's own control names; by default ours. Cells come
    from the regions that are feedback (module docstring): every image region type, whose labels say the
    model must not use it. Raises ValueError on an unknown class name or malformed geometry.
    """
    where = f"task {task_id}, annotation {annotation_id}"
    result = _items(result, where)
    ours = _cell_tools(controls)
    feedback = [
        item
        for item in result
        if (kind := _kind(item, where)) not in CELL_TAGS
        or _is_feedback(item, kind, _where(task_id, annotation_id, item), ours)
    ]
    cells = regions_to_cells(feedback, grid, task_id=task_id, annotation_id=annotation_id)
    cells.setflags(write=False)
    choices = annotation_choices(result, controls=controls, where=where)
    label_fix = None
    if choices.correct_label is not None:
        if choices.correct_label not in classes:
            raise ValueError(
                f"{where}: correct label {choices.correct_label!r} is not one of the classes {list(classes)}"
            )
        label_fix = list(classes).index(choices.correct_label)
    return AnnotationFeedback(cells=cells, label_fix=label_fix, skip=choices.skip)


@dataclass(frozen=True)
class AnnotationChoices:
    """What an annotation's choices say: the correct label's name when the annotator gave one (and did not
    also say the label is correct), and whether they chose the skip choice."""

    correct_label: str | None
    skip: bool


def annotation_choices(
    result: list[dict], *, controls: ConfigControls | None = None, where: str = "result"
) -> AnnotationChoices:
    """The label fix and the skip choice of one ``result``, without the grid or the classes: the one rule
    that ``parse_annotation`` and ``hitl status`` share. Raises ValueError on several correct labels.

    The correct-label choice counts unless the annotator also said the label is correct (a choice hidden
    again in the UI may linger in the result).
    """
    names = {
        "check": controls.label_check.name if controls and controls.label_check else LABEL_CHECK,
        "fix": controls.correct_label.name if controls and controls.correct_label else CORRECT_LABEL,
        "skip": controls.skip.name if controls and controls.skip else SKIP,
    }
    result = _items(result, where)
    fixes = _choices(result, names["fix"], where)
    correct = None
    if fixes and LABEL_OK not in _choices(result, names["check"], where):
        if len(set(fixes)) > 1:
            raise ValueError(f"{where}: several correct labels chosen: {fixes}")
        correct = fixes[0]
    return AnnotationChoices(correct_label=correct, skip=bool(_choices(result, names["skip"], where)))


def combine_cells(cells_list: Sequence[np.ndarray], *, mode: str = "union") -> np.ndarray:
    """Merge several annotators' cells of one image.

    cells_list: A arrays of (G_h, G_w) bool. ``union``: any annotator marked the cell;
    ``majority``: more than half of them did (so a tie, e.g. 1 of 2, is not a majority).
    Returns (G_h, G_w) bool.
    """
    if mode not in ("union", "majority"):
        raise ValueError(f"mode must be 'union' or 'majority', got {mode!r}")
    if len(cells_list) == 0:
        raise ValueError("cells_list is empty: nothing to combine")
    shapes = {np.shape(c) for c in cells_list}
    if len(shapes) > 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"cells must all be (G_h, G_w) of one shape, got shapes {sorted(shapes)}")
    stack = np.stack([np.asarray(c, dtype=bool) for c in cells_list])
    if mode == "union":
        return np.asarray(stack.any(axis=0))
    return np.asarray(2 * stack.sum(axis=0) > len(cells_list))
