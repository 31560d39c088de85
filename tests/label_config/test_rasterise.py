"""Label Studio regions -> grid cells, annotations -> feedback (pure; property tests with hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from label_config.config import suggestion_result
from label_config.controls import check_config
from label_config.grid import Grid
from label_config.interface import REGION_TAGS
from label_config.names import (
    CELL_POINT,
    CELL_RECT,
    CORRECT_LABEL,
    LABEL_CHECK,
    LABEL_OK,
    LABEL_WRONG,
    SKIP,
    SKIP_CHOICE,
)
from label_config.rasterise import (
    CELL_TAGS,
    MAX_REGIONS,
    AnnotationFeedback,
    combine_cells,
    parse_annotation,
    regions_to_cells,
    regions_without_cells,
)
from label_config.regions import MASK_TYPES, RegionError, mask_to_rle, region_cells
from label_config.snippet import FEEDBACK_CONTROL, MUST_NOT_USE, SHOULD_USE

# Square cells in pixels (as LS's grid needs), including a non-square image and a grid that does
# not divide its image.
GRIDS = [Grid(28, 28, 7, 7), Grid(224, 224, 4, 4), Grid(30, 50, 3, 5), Grid(28, 28, 9, 9)]
CLASSES = ["zero", "one", "two"]


def rect(x, y, w, h, rotation=0.0, *, rid="r1", grid=None, **extra):
    item = {
        "id": rid,
        "from_name": CELL_RECT,
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "rotation": rotation,
            "rectanglelabels": ["Irrelevant area"],
        },
    }
    if grid is not None:
        item.update(original_width=grid.width, original_height=grid.height)
    item.update(extra)
    return item


def point(x, y, *, rid="p1"):
    return {
        "id": rid,
        "from_name": CELL_POINT,
        "to_name": "image",
        "type": "keypointlabels",
        "value": {"x": x, "y": y, "width": 1.0, "keypointlabels": ["Irrelevant cell"]},
    }


def only(grid, *cells):
    out = np.zeros(grid.shape, dtype=bool)
    for rc in cells:
        out[rc] = True
    return out


def grid_and_cell():
    return st.sampled_from(GRIDS).flatmap(
        lambda g: st.tuples(st.just(g), st.integers(0, g.rows - 1), st.integers(0, g.cols - 1))
    )


# --- rectangles -------------------------------------------------------------------------------


@given(grid_and_cell(), st.sampled_from([0.0, 1e-6, -1e-6, 1e-9]))
def test_rectangle_covering_a_cell_marks_only_that_cell_despite_rounding(gc, noise):
    grid, r, c = gc
    x, y, w, h = grid.cell_box_percent(r, c)
    item = rect(max(x + noise, 0.0), max(y + noise, 0.0), w - noise, h - noise, grid=grid)
    assert np.array_equal(regions_to_cells([item], grid), only(grid, (r, c)))


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_edge_and_corner_cells(grid):
    last_r, last_c = grid.rows - 1, grid.cols - 1
    for r, c in [(0, 0), (0, last_c), (last_r, 0), (last_r, last_c)]:
        x, y, w, h = grid.cell_box_percent(r, c)
        assert np.array_equal(regions_to_cells([rect(x, y, w, h)], grid), only(grid, (r, c)))
    assert regions_to_cells([rect(0, 0, 100, 100)], grid).all()
    # LS float slop just past the border is clipped, not an error.
    assert regions_to_cells([rect(-0.01, -0.01, 100.02, 100.02)], grid).all()


@given(
    st.sampled_from(GRIDS).flatmap(
        lambda g: st.tuples(
            st.just(g), st.lists(st.tuples(st.integers(0, g.rows - 1), st.integers(0, g.cols - 1)), max_size=20)
        )
    )
)
def test_suggestion_result_round_trips_through_regions_to_cells(grid_cells):
    grid, cells = grid_cells
    items = suggestion_result(cells, grid, display_px=10 * grid.cols)
    assert np.array_equal(regions_to_cells(items, grid), only(grid, *cells))


@pytest.mark.parametrize("grid", [Grid(28, 28, 7, 7), Grid(30, 50, 3, 5)], ids=str)
@pytest.mark.parametrize(
    "rotation, dr, dc", [(0, 0, 0), (90, 0, -1), (180, -1, -1), (270, -1, 0), (360, 0, 0), (-90, -1, 0), (450, 0, -1)]
)
def test_right_angle_rotation_about_top_left_corner(grid, rotation, dr, dc):
    # A cell-sized square turned about its top-left corner (clockwise, y down) lands on a neighbour.
    r, c = 1, 2
    x, y, w, h = grid.cell_box_percent(r, c)
    item = rect(x, y, w, h, rotation, grid=grid)
    assert np.array_equal(regions_to_cells([item], grid), only(grid, (r + dr, c + dc)))


def _penetration(rect_pts, r, c):
    """Separating-axis test: min overlap of projections of a convex quad and cell (r, c) (cell units)."""
    cell = np.array([[c, r], [c + 1, r], [c + 1, r + 1], [c, r + 1]], dtype=float)
    edges = [rect_pts[1] - rect_pts[0], rect_pts[3] - rect_pts[0], np.array([1.0, 0]), np.array([0, 1.0])]
    depth = math.inf
    for e in edges:
        axis = e / np.linalg.norm(e)
        a, b = rect_pts @ axis, cell @ axis
        depth = min(depth, min(a.max(), b.max()) - max(a.min(), b.min()))
    return depth


@settings(max_examples=150, deadline=None)
@given(st.floats(5, 60), st.floats(5, 60), st.floats(3, 30), st.floats(3, 30), st.floats(-720, 720))
def test_arbitrary_rotation_matches_separating_axis_reference(x, y, w, h, rotation):
    grid = Grid(28, 28, 7, 7)  # square image: percent and pixels share one scale
    rad = math.radians(rotation)
    cos, sin = math.cos(rad), math.sin(rad)
    d = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=float)
    pts = np.array([x, y]) + d @ np.array([[cos, sin], [-sin, cos]])
    if pts.min() < 0 or pts.max() > 100:
        return  # out of the image: covered by the validation tests
    got = regions_to_cells([rect(x, y, w, h, rotation, grid=grid)], grid)
    cell_pts = pts * grid.cols / 100.0
    for r in range(grid.rows):
        for c in range(grid.cols):
            depth = _penetration(cell_pts, r, c)
            if depth > 0.01:
                assert got[r, c], (r, c, depth)
            elif depth < 0:
                assert not got[r, c], (r, c, depth)


def test_rotation_uses_pixel_aspect_ratio():
    grid = Grid(30, 60, 3, 6)  # 10 px cells, image twice as wide as high
    # A rectangle 1 cell wide (~16.67 % of width) turned 90 deg spans 1 cell down, i.e. 33.3 % of height.
    x, y, w, h = grid.cell_box_percent(0, 3)
    item = rect(x, y, w, h * 0.5, 90, grid=grid)
    assert np.array_equal(regions_to_cells([item], grid), only(grid, (0, 2)))


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_zero_size_rectangle_marks_the_cell_holding_it(grid):
    x, y, w, h = grid.cell_box_percent(grid.rows - 1, 0)
    item = rect(x + w / 2, y + h / 2, 0, 0)
    assert np.array_equal(regions_to_cells([item], grid), only(grid, (grid.rows - 1, 0)))
    # On a border it belongs to the next cell, like a click there.
    assert np.array_equal(regions_to_cells([rect(x + w, y, 0, 0)], grid), only(grid, (grid.rows - 1, 1)))
    # A zero-width line is point-like too: its centre cell.
    assert regions_to_cells([rect(x + w / 2, 0, 0, 100)], grid).sum() == 1


@pytest.mark.parametrize(
    "value, problem",
    [
        (dict(x=float("nan")), "finite"),
        (dict(y=float("inf")), "finite"),
        (dict(rotation=float("nan")), "finite"),
        (dict(width=-1.0), ">= 0"),
        (dict(height=-0.5), ">= 0"),
        (dict(x=150.0), "outside"),
        (dict(y=-3.0), "outside"),
        (dict(x=90.0, width=20.0), "outside"),
        (dict(rotation=45.0, x=95.0, y=0.0), "outside"),
        (dict(x="10"), "number"),
        (dict(x=None), "number"),
    ],
)
def test_malformed_rectangle_raises_naming_task_annotation_and_region(value, problem):
    grid = Grid(28, 28, 7, 7)
    item = rect(10.0, 10.0, 10.0, 10.0, rid="reg-7")
    item["value"].update(value)
    with pytest.raises(ValueError, match=problem) as err:
        regions_to_cells([item], grid, task_id=12, annotation_id=34)
    assert all(s in str(err.value) for s in ("task 12", "annotation 34", "'reg-7'"))


# --- keypoints --------------------------------------------------------------------------------


@given(grid_and_cell(), st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_keypoint_marks_the_cell_under_it(gc, fx, fy):
    grid, r, c = gc
    x, y, w, h = grid.cell_box_percent(r, c)
    assert np.array_equal(regions_to_cells([point(x + fx * w, y + fy * h)], grid), only(grid, (r, c)))


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_keypoint_on_borders_and_image_edges(grid):
    x, y, w, h = grid.cell_box_percent(1, 1)
    assert np.array_equal(regions_to_cells([point(x, y)], grid), only(grid, (1, 1)))  # half-open cells
    assert np.array_equal(regions_to_cells([point(x - 1e-10, y - 1e-10)], grid), only(grid, (1, 1)))  # rounding
    assert np.array_equal(regions_to_cells([point(0, 0)], grid), only(grid, (0, 0)))
    assert np.array_equal(regions_to_cells([point(100, 100)], grid), only(grid, (grid.rows - 1, grid.cols - 1)))
    assert np.array_equal(regions_to_cells([point(100.01, -0.01)], grid), only(grid, (0, grid.cols - 1)))


@pytest.mark.parametrize("x, y", [(101.0, 5.0), (5.0, -1.0), (float("nan"), 5.0)])
def test_malformed_keypoint_raises(x, y):
    with pytest.raises(ValueError, match="task 1, annotation 2, region 'p1'"):
        regions_to_cells([point(x, y)], Grid(28, 28, 7, 7), task_id=1, annotation_id=2)


def test_other_region_types_and_other_objects_are_ignored():
    grid = Grid(28, 28, 7, 7)
    result = [
        {"id": "c", "from_name": LABEL_CHECK, "to_name": "image", "type": "choices", "value": {"choices": [LABEL_OK]}},
        {"id": "t", "from_name": "notes", "to_name": "image", "type": "textarea", "value": {"text": ["hi"]}},
        {"id": "v", "from_name": "box", "to_name": "video", "type": "videorectangle", "value": {"sequence": []}},
    ]
    assert not regions_to_cells(result, grid).any()
    on_overlay = dict(point(50, 50), to_name="saliency")
    assert regions_to_cells([on_overlay], grid).sum() == 1
    assert not regions_to_cells([on_overlay], grid, to_names=["image"]).any()


def test_rectangle_and_keypoint_combine():
    grid = Grid(28, 28, 7, 7)
    x, y, w, h = grid.cell_box_percent(2, 3)
    result = [rect(x, y, 2 * w, h), point(1, 99)]
    assert np.array_equal(regions_to_cells(result, grid), only(grid, (2, 3), (2, 4), (6, 0)))


# --- polygons, ellipses, brush strokes -----------------------------------------------------------


def shape(kind, value, *, rid="s1", from_name=FEEDBACK_CONTROL, label=MUST_NOT_USE, grid=None):
    """A ``<kind>labels`` region of the snippet's tool (``label`` None: the plain tool, no labels)."""
    item = {"id": rid, "from_name": from_name, "to_name": "image", "type": f"{kind}labels" if label else kind,
            "value": {**value, **({f"{kind}labels": [label]} if label else {})}}  # fmt: skip
    if grid is not None:
        item.update(original_width=grid.width, original_height=grid.height)
    return item


def cell_shapes(grid, r0, c0, r1, c1):
    """A polygon, an ellipse and a brush stroke that each cover the cell block rows r0..r1, cols c0..c1."""
    x0, y0, w, h = grid.cell_box_percent(r0, c0)
    x1, y1 = x0 + (c1 - c0 + 1) * w, y0 + (r1 - r0 + 1) * h
    rows, cols = grid.row_edges(), grid.col_edges()
    mask = np.zeros((grid.height, grid.width), bool)
    mask[rows[r0] : rows[r1 + 1], cols[c0] : cols[c1 + 1]] = True
    return {
        "polygon": shape("polygon", {"points": [[x0 + 0.1, y0 + 0.1], [x1 - 0.1, y0 + 0.1], [x1 - 0.1, y1 - 0.1],
                                                [x0 + 0.1, y1 - 0.1]]}),
        # an ellipse inside the block, reaching into every one of its cells
        "ellipse": shape("ellipse", {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "radiusX": (x1 - x0) / 2 - 0.1,
                                     "radiusY": (y1 - y0) / 2 - 0.1}),
        "brush": shape("brush", {"format": "rle", "rle": mask_to_rle(mask, grid.height, grid.width)}, grid=grid),
    }  # fmt: skip


def test_every_image_region_type_marks_cells():
    assert set(REGION_TAGS) <= set(CELL_TAGS) and set(MASK_TYPES) == set(CELL_TAGS)


@pytest.mark.parametrize("kind", ["polygon", "ellipse", "brush"])
@pytest.mark.parametrize("grid", [Grid(28, 28, 7, 7), Grid(224, 224, 4, 4), Grid(30, 50, 3, 5)])
def test_polygons_ellipses_and_brush_strokes_become_cells(kind, grid):
    region = cell_shapes(grid, 1, 0, 2, 1)[kind]
    want = only(grid, (1, 0), (1, 1), (2, 0), (2, 1))
    assert np.array_equal(regions_to_cells([region], grid), want)
    assert np.array_equal(regions_to_cells([region], grid), region_cells(region, grid))
    fb = parse_annotation([region, point(99, 99)], grid, CLASSES, task_id=1, annotation_id=2)
    assert np.array_equal(fb.cells, want | only(grid, (grid.rows - 1, grid.cols - 1)))
    assert regions_without_cells([region]) == []


def test_a_rectangle_and_the_same_polygon_mark_the_same_cells():
    """On whole pixels (regions agrees with the exact path there): 5..17 x 9..21 of 28 px."""
    grid = Grid(28, 28, 7, 7)
    x, y, w, h = (px * 100 / 28 for px in (5, 9, 12, 12))
    square = shape("polygon", {"points": [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]})
    assert np.array_equal(regions_to_cells([square], grid), regions_to_cells([rect(x, y, w, h)], grid))


@pytest.mark.parametrize(
    "rle, problem",
    [([0, 0, 3, 16, 7], "shorter than its 53-bit header"), ([0, 0, 0, 9, 1, 2, 3, 4], "holds 9 values"),
     ([0, 0, 12, 64] + [255] * 9, "corrupt rle"), ([0, 300, 1], "0..255")],
)  # fmt: skip
def test_a_corrupt_brush_stroke_is_a_value_error_naming_the_task_annotation_and_region(rle, problem):
    grid = Grid(28, 28, 7, 7)
    stroke = shape("brush", {"format": "rle", "rle": rle}, rid="b7", grid=grid)
    with pytest.raises(RegionError, match=f"^task 3, annotation 9, brushlabels region 'b7': .*{problem}") as err:
        parse_annotation([point(1, 1), stroke], grid, CLASSES, task_id=3, annotation_id=9)
    assert isinstance(err.value, ValueError) and (err.value.region_type, err.value.region_id) == ("brushlabels", "b7")


@pytest.mark.parametrize(
    "from_name, label, counts",
    [
        (FEEDBACK_CONTROL, MUST_NOT_USE, True),  # the snippet's irrelevant label
        ("my_boxes", "Irrelevant", True),  # a team's own irrelevant-like label
        ("my_boxes", "Spurious watermark", True),
        (CELL_RECT, "Anything", True),  # every label of our own cell tools...
        (CELL_RECT, "Model looks here", False),  # ...but the suggestion label: accepted unread, it marks nothing
        (FEEDBACK_CONTROL, SHOULD_USE, False),  # where the model should look
        ("suggestions", "Model looks here", False),  # a neutral label: not feedback
        ("my_boxes", "Dog", False),  # a class drawn in a detection project
        (FEEDBACK_CONTROL, None, True),  # the plain tool: no labels, a mark
    ],
)
@pytest.mark.parametrize("kind", ["polygon", "ellipse", "brush", "rectangle"])
def test_only_regions_labelled_irrelevant_are_feedback(from_name, label, counts, kind):
    grid = Grid(28, 28, 7, 7)
    if kind == "rectangle":
        x, y, w, h = grid.cell_box_percent(1, 0)
        region = shape("rectangle", {"x": x, "y": y, "width": 2 * w, "height": 2 * h}, from_name=from_name, label=label)
    else:
        region = dict(cell_shapes(grid, 1, 0, 2, 1)[kind], from_name=from_name)
        region = shape(kind, {k: v for k, v in region["value"].items() if not k.endswith("labels")},
                       from_name=from_name, label=label, grid=grid if kind == "brush" else None)  # fmt: skip
    fb = parse_annotation([region], grid, CLASSES, task_id=1, annotation_id=2)
    assert fb.cells.sum() == (4 if counts else 0)
    reported = regions_without_cells([region])
    assert reported == ([] if counts else [f"{region['type']} regions labelled {[label]!r}"])


def test_labels_that_are_not_a_list_of_strings_are_a_value_error_naming_the_region():
    grid = Grid(28, 28, 7, 7)
    region = shape("polygon", {"points": [[1, 1], [9, 1], [9, 9]]}, rid="g2", label=None)
    region.update(type="polygonlabels", value={**region["value"], "polygonlabels": "Irrelevant"})
    with pytest.raises(ValueError, match="^task 1, annotation 2, region 'g2': polygonlabels must be a list"):
        parse_annotation([region], grid, CLASSES, task_id=1, annotation_id=2)


# --- annotations ------------------------------------------------------------------------------


def choice(name, *values):
    return {
        "id": f"ch-{name}",
        "from_name": name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": list(values)},
    }


@pytest.mark.parametrize(
    "result, label_fix, skip",
    [
        ([], None, False),
        ([choice(LABEL_CHECK, LABEL_WRONG), choice(CORRECT_LABEL, "two")], 2, False),
        ([choice(CORRECT_LABEL, "one")], 1, False),
        ([choice(LABEL_CHECK, LABEL_OK), choice(CORRECT_LABEL, "two")], None, False),  # hidden choice lingering
        ([choice(LABEL_CHECK, LABEL_WRONG)], None, False),
        ([choice(SKIP, SKIP_CHOICE)], None, True),
    ],
)
def test_parse_annotation_reads_label_fix_and_skip(result, label_fix, skip):
    grid = Grid(28, 28, 7, 7)
    fb = parse_annotation(result + [point(1, 1)], grid, CLASSES, task_id=1, annotation_id=2)
    assert isinstance(fb, AnnotationFeedback)
    assert (fb.label_fix, fb.skip) == (label_fix, skip)
    assert np.array_equal(fb.cells, only(grid, (0, 0)))
    with pytest.raises(ValueError):
        fb.cells[0, 0] = False  # frozen: the cells are read-only too


def test_parse_annotation_rejects_unknown_or_several_classes():
    grid = Grid(28, 28, 7, 7)
    with pytest.raises(ValueError, match="'seven' is not one of the classes"):
        parse_annotation([choice(CORRECT_LABEL, "seven")], grid, CLASSES, task_id=3, annotation_id=4)
    with pytest.raises(ValueError, match="several correct labels"):
        parse_annotation([choice(CORRECT_LABEL, "one", "two")], grid, CLASSES)


def test_parse_annotation_follows_a_renamed_config():
    xml = """<View><Image name="img" value="$image"/>
      <RectangleLabels name="bad_area" toName="img"><Label value="Bad"/></RectangleLabels>
      <Choices name="correct_label" toName="img"><Choice value="one"/></Choices></View>"""
    controls = check_config(xml)
    grid = Grid(28, 28, 7, 7)
    area = dict(rect(0, 0, 10, 10), from_name="bad_area", to_name="img")
    fb = parse_annotation([area, choice("correct_label", "one")], grid, CLASSES, controls=controls)
    assert fb.label_fix == 1 and not fb.skip
    assert np.array_equal(fb.cells, only(grid, (0, 0)))


# --- combining annotators ----------------------------------------------------------------------


@given(st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=5))
def test_combine_cells_union_and_majority(rows):
    cells_list = [np.array(r).reshape(2, 3) for r in rows]
    stack = np.stack(cells_list)
    assert np.array_equal(combine_cells(cells_list), stack.any(axis=0))
    majority = combine_cells(cells_list, mode="majority")
    assert np.array_equal(majority, stack.sum(axis=0) > len(rows) / 2)
    assert not (majority & ~combine_cells(cells_list)).any()


def test_combine_cells_tie_is_not_a_majority_and_bad_input_raises():
    a, b = only(Grid(28, 28, 7, 7), (0, 0)), only(Grid(28, 28, 7, 7), (1, 1))
    assert not combine_cells([a, b], mode="majority").any()
    with pytest.raises(ValueError, match="empty"):
        combine_cells([])
    with pytest.raises(ValueError, match="one shape"):
        combine_cells([a, np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match="mode"):
        combine_cells([a], mode="vote")


@pytest.mark.parametrize("result", [
    [{"type": "rectanglelabels", "value": "x=1"}], [{"type": "keypointlabels", "value": [1, 2]}],
    [{"type": "choices", "from_name": SKIP, "value": "yes"}], "not a list", [["a list"]],
])  # fmt: skip
def test_malformed_values_are_value_errors_naming_the_annotation(result):
    """A pull records such an annotation as bad and goes on; a TypeError would roll back the whole pull."""
    with pytest.raises(ValueError, match="task 3, annotation 9"):
        parse_annotation(result, Grid(28, 28, 7, 7), ["a", "b"], task_id=3, annotation_id=9)


def test_huge_rotation_is_taken_modulo_360():
    grid = Grid(28, 28, 7, 7)
    rect = {"x": 40.0, "y": 40.0, "width": 10.0, "height": 5.0, "rectanglelabels": [CELL_RECT]}

    def cells(rotation):
        return regions_to_cells([{"type": "rectanglelabels", "value": {**rect, "rotation": rotation}}], grid)

    turned = 1e20 % 360.0  # what a rotation of 1e20 degrees is
    assert np.array_equal(cells(1e20), cells(turned)) and not np.array_equal(cells(1e20), cells(0.0))


# --- malformed results: only ValueErrors that name the annotation (a pull records them and goes on) ---------

HUGE = 10**400  # JSON (and Label Studio 1.23) accept it; a float cannot hold it


@pytest.mark.parametrize("result, problem", [
    ([{"type": "choices", "from_name": CORRECT_LABEL, "value": {"choices": [{"a": 1}]}}], "strings"),
    ([{"type": "choices", "from_name": CORRECT_LABEL, "value": {"choices": [["one"], ["two"]]}}], "strings"),
    ([{"type": "choices", "from_name": SKIP, "value": {"choices": [None]}}], "strings"),
    ([rect(HUGE, 10.0, 10.0, 10.0)], "too large"),
    ([rect(10.0, 10.0, 10.0, HUGE)], "too large"),
    ([rect(10.0, 10.0, 10.0, 10.0, HUGE)], "too large"),
    ([rect(10.0, 10.0, 10.0, 10.0, original_width=HUGE)], "too large"),
    ([point(-HUGE, 5.0)], "too large"),
    ([rect(10.0, 10.0, 1e308, 1e308, 30.0, original_width=28, original_height=28)], "finite|outside"),
    ([{"type": ["rectanglelabels"], "value": {}}], "type"),
    ([{"id": {"nested": [HUGE]}, "type": "rectanglelabels", "value": {"x": [HUGE]}}], "number"),
])  # fmt: skip
def test_malformed_results_found_on_a_real_label_studio_are_value_errors(result, problem):
    """Label Studio 1.23 stores each of these (201); they raised TypeError or OverflowError, which stopped the pull."""
    with pytest.raises(ValueError, match=problem) as err:
        parse_annotation(result, Grid(28, 28, 7, 7), CLASSES, task_id=3, annotation_id=9)
    assert "task 3, annotation 9" in str(err.value) and len(str(err.value)) < 400


def test_an_annotation_over_the_region_cap_is_refused_before_rasterising():
    result = [rect(10.0, 10.0, 10.0, 10.0, 30.0, rid=f"r{i}") for i in range(MAX_REGIONS + 1)]
    with pytest.raises(ValueError, match=f"{MAX_REGIONS + 1} regions.*at most {MAX_REGIONS}") as err:
        parse_annotation(result, Grid(224, 224, 28, 28), CLASSES, task_id=3, annotation_id=9)
    assert "task 3, annotation 9" in str(err.value)
    assert parse_annotation(result[:MAX_REGIONS], Grid(28, 28, 7, 7), CLASSES).cells.any()


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400).map(lambda n: -n),
    st.just(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
)
_GARBAGE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
_NUMBERISH = st.one_of(st.floats(-10, 110), st.just(HUGE), _GARBAGE)  # HUGE on its own: it slipped through


@st.composite
def _malformed_item(draw):
    """A result item near a real one: the right keys with garbage (or missing) values, or garbage outright."""
    kind = draw(st.sampled_from(["rectanglelabels", "rectangle", "keypointlabels", "choices", "polygonlabels"]))
    keys = {
        "rectanglelabels": ["x", "y", "width", "height", "rotation"],
        "rectangle": ["x", "y", "width", "height"],
        "keypointlabels": ["x", "y", "width"],
        "polygonlabels": ["points"],
        "choices": ["choices"],
    }[kind]
    value = {k: draw(_NUMBERISH) for k in keys if draw(st.booleans()) or kind == "choices"}
    if kind == "choices":
        value["choices"] = draw(
            st.one_of(
                st.lists(st.one_of(st.sampled_from(CLASSES + [SKIP_CHOICE, LABEL_OK]), _GARBAGE), max_size=3), _GARBAGE
            )
        )
    item = {
        "id": draw(_GARBAGE),
        "type": draw(st.one_of(st.just(kind), _GARBAGE)),
        "from_name": draw(st.sampled_from([CORRECT_LABEL, LABEL_CHECK, SKIP, CELL_RECT])),
        "value": draw(st.one_of(st.just(value), _GARBAGE)),
    }
    for key in ("original_width", "original_height"):
        if draw(st.booleans()):
            item[key] = draw(st.one_of(st.integers(1, 2000), _GARBAGE))
    return draw(st.one_of(st.just(item), _GARBAGE))


@settings(max_examples=400, deadline=None)
@given(result=st.one_of(st.lists(_malformed_item(), max_size=4), _GARBAGE))
def test_fuzzed_results_parse_or_raise_a_value_error_naming_the_annotation(result):
    grid = Grid(28, 28, 7, 7)
    for read, where in ((lambda: parse_annotation(result, grid, CLASSES, task_id=3, annotation_id=9),
                         "task 3, annotation 9"), (lambda: regions_without_cells(result), "result")):  # fmt: skip
        try:
            read()
        except ValueError as exc:
            assert str(exc).startswith(where) and len(str(exc)) < 400
