"""What a person draws for a mask in a team's own tools (polygons, a brush stroke) comes back through the
rasteriser as exactly the cells it covers; the snippet with several tools; a prediction that pre-fills the
task's own label."""

from __future__ import annotations

import numpy as np
import pytest

from label_config.drawn import drawn_regions
from label_config.grid import Grid
from label_config.interface import parse_project_config
from label_config.rasterise import parse_annotation
from label_config.regions import region_cells
from label_config.snippet import MUST_NOT_USE, feedback_snippet, starter_config
from label_config.suggest import prediction_result
from trainer.labelstudio.annotator import simulated_pieces

GRID = Grid.from_cell_px(28, 28, 4)  # 7 x 7
CONFIG = parse_project_config(starter_config(["A", "B", "C"], tool=("polygon", "brush")))
TOOLS = {r.tag: r for r in CONFIG.regions}


def _truth(seed: int) -> np.ndarray:
    """(28, 28) bool: a random blob, a stripe and a lone pixel, spread over several cells."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((28, 28), dtype=bool)
    r, c = rng.integers(0, 20, size=2)
    mask[r : r + 8, c : c + 8] = rng.random((8, 8)) < 0.6
    mask[rng.integers(0, 28), :] = True
    mask[rng.integers(0, 28), rng.integers(0, 28)] = True
    return mask


def _ids(n: int) -> list[str]:
    return [f"r{i}" for i in range(n)]


@pytest.mark.parametrize("tag", ["polygonlabels", "brushlabels"])
@pytest.mark.parametrize("size", [(28, 28), (224, 224), (60, 45)])
@pytest.mark.parametrize("seed", range(4))
def test_drawn_marks_rasterise_to_exactly_the_marked_cells(tag, size, seed):
    truth = _truth(seed)
    cells = GRID.mask_to_cells(truth)
    cells[6, 6] = True  # a wrong cell: it holds none of the truth, so the whole cell is drawn
    pieces = simulated_pieces(truth, cells, GRID)
    width, height = size
    regions = drawn_regions(TOOLS[tag], pieces, label=MUST_NOT_USE, width=width, height=height, ids=_ids(400))
    assert regions and all(r["value"][tag] == [MUST_NOT_USE] and r["original_width"] == width for r in regions)
    got = np.logical_or.reduce([region_cells(r, GRID) for r in regions])
    if (width, height) == (60, 45) and tag == "brushlabels":  # a smaller picture than the grid loses pixels
        assert got[cells].mean() > 0.5
        return
    assert np.array_equal(got, cells)
    # and through the pull's own reading of an annotation: every drawn region is feedback
    assert np.array_equal(parse_annotation(regions, GRID, ["A", "B", "C"]).cells, cells)


def test_brush_is_one_stroke_and_polygons_one_per_outline():
    truth = _truth(0)
    pieces = simulated_pieces(truth, GRID.mask_to_cells(truth), GRID)
    brush = drawn_regions(TOOLS["brushlabels"], pieces, label=MUST_NOT_USE, width=28, height=28, ids=_ids(99))
    polygons = drawn_regions(TOOLS["polygonlabels"], pieces, label=MUST_NOT_USE, width=28, height=28, ids=_ids(99))
    assert len(brush) == 1 and brush[0]["value"]["format"] == "rle"
    assert len(polygons) >= len(pieces)
    assert drawn_regions(TOOLS["brushlabels"], [], label=MUST_NOT_USE, width=28, height=28, ids=[]) == []


@pytest.mark.parametrize(
    "change, match",
    [({"label": "Irrelevant"}, "is not a label of"), ({"ids": []}, "ids given")],
)
def test_drawn_regions_refuse_with_a_reason(change, match):
    args = {"label": MUST_NOT_USE, "width": 28, "height": 28, "ids": _ids(9), **change}
    with pytest.raises(ValueError, match=match):
        drawn_regions(TOOLS["polygonlabels"], [_truth(1)], **args)


def test_a_rectangle_tool_cannot_draw_a_mask():
    config = parse_project_config(starter_config(["A", "B"]))
    with pytest.raises(ValueError, match="masks are drawn with"):
        drawn_regions(config.feedback, [_truth(0)], label=MUST_NOT_USE, width=28, height=28, ids=_ids(9))


def test_a_snippet_with_several_tools_names_each_apart():
    xml = feedback_snippet("image", tool=("polygon", "brush"))
    assert 'name="feedback_regions"' in xml and 'name="feedback_regions_brush"' in xml
    assert [r.tag for r in CONFIG.regions] == ["polygonlabels", "brushlabels"]
    assert CONFIG.feedback.tag == "polygonlabels"  # predictions pre-fill the preferred one
    with pytest.raises(ValueError, match="different tools"):
        feedback_snippet("image", tool=("brush", "brush"))


def test_a_prediction_for_a_labelled_task_prefills_its_label_and_names_the_models_class():
    cells = [(0, 0), (3, 4)]
    result = prediction_result(CONFIG, 2, 0.9, cells, GRID, scores=[1.0, 0.5], label=(0, 0.05))
    choice, *regions = result
    assert choice["value"]["choices"] == ["A"] and choice["score"] == 0.05  # the label, with the model's p of it
    assert len(regions) == 2 and all(r["value"]["polygonlabels"] == ["Model looks here"] for r in regions)
    assert "for C, p = 0.90; the label A has p = 0.05" in regions[0]["meta"]["text"][0]
    agreeing = prediction_result(CONFIG, 0, 0.9, cells, GRID, scores=[1.0, 0.5], label=(0, 0.9))
    assert agreeing == prediction_result(CONFIG, 0, 0.9, cells, GRID, scores=[1.0, 0.5])  # as /predict's
    # accepted unread, such a prediction marks nothing and fixes no label
    accepted = parse_annotation(result, GRID, ["A", "B", "C"])
    assert not accepted.cells.any() and accepted.label_fix is None
