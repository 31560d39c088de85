"""The labelling config: XML that Label Studio's own parser accepts, names, grid size, predictions."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from label_config.config import (
    VIEW_CONTROLS,
    build_config,
    display_px_for,
    overlay_value,
    suggestion_result,
)
from label_config.controls import check_config
from label_config.grid import Grid
from label_config.names import (
    ANNOTATED,
    CELL_POINT,
    CELL_POINT_LABEL,
    CELL_RECT,
    CELL_RECT_LABEL,
    CORRECT_LABEL,
    IMAGE,
    IMAGE_KEY,
    LABEL_CHECK,
    MODEL_LOOKS_HERE,
    SALIENCY,
    SALIENCY_KEY,
    SKIP,
)

ODD_NAMES = ["a & b", "<tag>", 'say "hi"', "it's", "T-shirt/top", "5 > 3", "ünïcode", "tab\u00a0nbsp", "x,y", "9"]


def _images(xml):
    return {el.get("name"): el.attrib for el in ET.fromstring(xml).iter("Image")}


@pytest.mark.parametrize("k", range(2, 11))
def test_config_builds_and_label_studio_sdk_accepts_it(k):
    classes = ODD_NAMES[:k]
    xml = build_config(classes, Grid(28, 28, 7, 7))
    LabelInterface(xml).validate()  # raises on schema, unique-name or toName errors
    controls = check_config(xml)
    assert controls.correct_label.values == tuple(classes)  # escaped and read back exactly


def test_sdk_sees_our_controls_on_the_annotated_image():
    li = LabelInterface(build_config(["cat", "dog"], Grid(28, 28, 7, 7)))
    for name in (CELL_POINT, CELL_RECT, LABEL_CHECK, CORRECT_LABEL, SKIP):
        assert li.get_control(name).to_name == [ANNOTATED]
    assert set(li.get_all_object_tag_names()) == {IMAGE, SALIENCY}


def test_point_and_area_tools_are_visibly_different():
    controls = check_config(build_config(["a", "b"], Grid(28, 28, 7, 7)))
    assert controls.point.values == (CELL_POINT_LABEL,)
    # the area tool also carries the neutral label that /predict pre-fills the salient cells with
    assert controls.rect.values == (CELL_RECT_LABEL, MODEL_LOOKS_HERE)
    assert CELL_POINT_LABEL != CELL_RECT_LABEL


@pytest.mark.parametrize(
    "grid, display_px, size, grid_px",
    [
        (Grid(28, 28, 7, 7), 224, ("224px", "224px"), "32"),
        (Grid(224, 224, 14, 14), 224, ("224px", "224px"), "16"),
        (Grid(32, 32, 8, 8), 256, ("256px", "256px"), "32"),
        (Grid(30, 60, 3, 6), 240, ("240px", "120px"), "40"),
    ],
)
def test_grid_size_traces_the_grid_cells_at_display_size(grid, display_px, size, grid_px):
    # LS's gridSize is in stage (displayed) pixels; the container is pinned to the display size.
    images = _images(build_config(["a", "b"], grid, display_px=display_px))
    for name in (IMAGE, SALIENCY):
        attrs = images[name]
        assert (attrs["width"], attrs["height"]) == size and attrs["maxWidth"] == size[0]
        assert attrs["grid"] == "true" and attrs["gridSize"] == grid_px and attrs["defaultZoom"] == "fit"
        assert int(grid_px) * grid.cols == display_px


def test_both_images_offer_zoom_brightness_and_contrast():
    images = _images(build_config(["a", "b"], Grid(28, 28, 7, 7)))
    want = {"zoom": "true", "zoomControl": "true", "brightnessControl": "true", "contrastControl": "true"}
    assert VIEW_CONTROLS == want
    for name in (IMAGE, SALIENCY):
        assert {k: images[name].get(k) for k in want} == want, name


def test_the_image_is_required_and_the_overlay_is_an_optional_list():
    # Label Studio requires every key read by ``value`` in a task's data; ``valueList`` keys it does not check.
    xml = build_config(["a", "b"], Grid(28, 28, 7, 7))
    images = _images(xml)
    assert images[IMAGE]["value"] == f"${IMAGE_KEY}" and "valueList" not in images[IMAGE]
    assert images[SALIENCY]["valueList"] == f"${SALIENCY_KEY}" and "value" not in images[SALIENCY]
    controls = check_config(xml)
    assert controls.list_objects == (SALIENCY,)
    assert controls.data_key(SALIENCY) == SALIENCY_KEY and controls.data_key(IMAGE) == IMAGE_KEY
    assert overlay_value("/data/local-files/?d=a.png") == ["/data/local-files/?d=a.png"]
    with pytest.raises(ValueError, match="non-empty string"):
        overlay_value("")


@pytest.mark.parametrize(
    "classes, match",
    [
        ([], "empty"),
        (["a", "b", "a"], "duplicate class names: \\['a'\\]"),
        (["a", ""], "non-empty"),
        (["a", " b"], "whitespace"),
        (["a", "line\nbreak"], "control characters"),
        (["a", "$price"], "data key"),
        (["a", 3], "non-empty string"),
    ],
)
def test_bad_classes_raise(classes, match):
    with pytest.raises(ValueError, match=match):
        build_config(classes, Grid(28, 28, 7, 7))


def test_display_size_that_cannot_trace_the_grid_raises_with_a_hint():
    grid = Grid(28, 28, 9, 9)
    with pytest.raises(ValueError, match="try 225"):
        build_config(["a", "b"], grid, display_px=224)
    assert display_px_for(grid, 224) == 225
    assert build_config(["a", "b"], grid, display_px=225)
    with pytest.raises(ValueError, match="not square"):
        build_config(["a", "b"], Grid(28, 56, 7, 7), display_px=224)


def test_check_config_on_a_user_edited_config():
    xml = """<View>
      <Image name="photo" value="$image"/>
      <Image name="heat" value="$saliency"/>
      <RectangleLabels name="mine" toName="photo"><Label value="Ignore" alias="ign"/></RectangleLabels>
      <choices name="label_check" toname="photo"><choice value="label is correct"/></choices>
    </View>"""
    controls = check_config(xml)
    assert controls.rect.name == "mine" and controls.rect.to_name == "photo" and controls.rect.values == ("ign",)
    assert controls.point is None and controls.region is controls.rect
    assert controls.label_check.values == ("label is correct",) and controls.correct_label is None
    assert dict(controls.objects) == {"photo": "image", "heat": "image"}


@pytest.mark.parametrize(
    "xml, match",
    [
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="x"/></Choices></View>',
            "no RectangleLabels or KeyPointLabels control",
        ),
        (
            '<View><Text name="t" value="$text"/><KeyPointLabels name="k" toName="t"><Label value="x"/>'
            "</KeyPointLabels></View>",
            "not an Image",
        ),
        ("<View><Image name='i'", "not valid XML"),
    ],
)
def test_check_config_rejects_configs_that_cannot_mark_cells(xml, match):
    with pytest.raises(ValueError, match=match):
        check_config(xml)


def test_suggestion_result_is_a_valid_prediction_for_the_config():
    grid = Grid(28, 28, 7, 7)
    li = LabelInterface(build_config(["a", "b"], grid))
    items = suggestion_result([(0, 0), (6, 6), (3, 2), (0, 0)], grid, score=0.75)
    assert li.validate_prediction({"result": items}, return_errors=True) == []
    assert len({it["id"] for it in items}) == len(items) == 3  # duplicates dropped, ids unique
    first = items[0]
    assert (first["from_name"], first["to_name"], first["type"]) == (CELL_RECT, ANNOTATED, "rectanglelabels")
    assert (first["original_width"], first["original_height"]) == (224, 224)
    assert first["value"] == {
        "x": 0.0,
        "y": 0.0,
        "width": 100 / 7,
        "height": 100 / 7,
        "rotation": 0,
        "rectanglelabels": [MODEL_LOOKS_HERE],  # a suggestion accepted unread marks nothing (rasterise)
    }
    assert first["score"] == 0.75


def test_suggestion_result_takes_a_cell_array_per_cell_scores_and_a_project_control():
    grid = Grid(28, 28, 7, 7)
    cells = np.zeros(grid.shape, bool)
    cells[1, 2] = cells[4, 4] = True
    items = suggestion_result(cells, grid, score=[0.1, 0.2])
    assert [it["id"] for it in items] == ["cell_1_2", "cell_4_4"] and [it["score"] for it in items] == [0.1, 0.2]
    xml = """<View><Image name="img" value="$image"/>
      <KeyPointLabels name="clicks" toName="img"><Label value="Here"/></KeyPointLabels></View>"""
    control = check_config(xml).region
    points = suggestion_result([(1, 2)], grid, control=control)
    assert LabelInterface(xml).validate_prediction({"result": points}, return_errors=True) == []
    assert points[0]["type"] == "keypointlabels" and points[0]["value"]["keypointlabels"] == ["Here"]
    assert points[0]["id"] == "cell_1_2"


@pytest.mark.parametrize("cells, match", [([(7, 0)], "outside"), ([(0, -1)], "outside")])
def test_suggestion_result_rejects_cells_outside_the_grid(cells, match):
    with pytest.raises(ValueError, match=match):
        suggestion_result(cells, Grid(28, 28, 7, 7))
