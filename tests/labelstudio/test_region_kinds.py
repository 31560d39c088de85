"""Every image region kind through the real Label Studio: polygons, brush strokes (RLE) and ellipses drawn with
tools a team adds to our project's config become W cells; a corrupt brush stroke is reported invalid while the
rest of the pull lands; a region labelled where the model should look marks nothing and is reported."""

from __future__ import annotations

import numpy as np
import pytest

from label_config.names import ANNOTATED, CELL_POINT
from label_config.regions import mask_to_rle, region_cells
from tests.labelstudio.test_loop import DISPLAY, cells, point
from trainer.labelstudio.client import annotate_as_browser
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push

pytestmark = pytest.mark.labelstudio
# Our config has rectangle and keypoint tools; a team adds the other image tools (Label Studio takes the change:
# it only adds controls). Their labels are irrelevant-like ("Irrelevant ..."), the last tool's other label not.
TOOLS = {"polygon": "PolygonLabels", "brush": "BrushLabels", "ellipse": "EllipseLabels"}
LOOK_HERE = "Model looks here"


def with_tools(xml: str) -> str:
    tools = "".join(
        f'<{tag} name="team_{kind}" toName="{ANNOTATED}"><Label value="Irrelevant {kind}"/>'
        f'<Label value="{LOOK_HERE}"/></{tag}>'
        for kind, tag in TOOLS.items()
    )
    return xml.replace(f'<KeyPointLabels name="{CELL_POINT}"', tools + f'<KeyPointLabels name="{CELL_POINT}"', 1)


def region(kind: str, value: dict, *, label: str | None = None, rid: str | None = None) -> dict:
    """A result item as the labelling page posts it (sizes: the task PNG's, DISPLAY px)."""
    label = label or f"Irrelevant {kind}"
    return {"id": rid or f"{kind}1", "from_name": f"team_{kind}", "to_name": ANNOTATED, "type": f"{kind}labels",
            "original_width": DISPLAY, "original_height": DISPLAY, "image_rotation": 0,
            "value": {**value, f"{kind}labels": [label]}}  # fmt: skip


def drawn(grid) -> dict[str, dict]:
    """One region of each added tool, each over a different block of cells."""
    x, y, w, h = grid.cell_box_percent(0, 0)
    mask = np.zeros((DISPLAY, DISPLAY), bool)
    mask[DISPLAY // 2 :, : DISPLAY // 4] = True  # the lower left: rows 3.5.., cols ..1.75 of a 7 x 7 grid
    return {
        "polygon": region("polygon", {"points": [[x + 0.2 * w, y + 0.2 * h], [x + 1.8 * w, y + 0.2 * h],
                                                 [x + 0.2 * w, y + 1.8 * h]], "closed": True}),
        "brush": region("brush", {"format": "rle", "rle": mask_to_rle(mask, DISPLAY, DISPLAY)}),
        "ellipse": region("ellipse", {"x": 5 * w + w / 2, "y": h / 2, "radiusX": w / 3, "radiusY": h / 3,
                                      "rotation": 30}),
    }  # fmt: skip


@pytest.fixture
def linked(fresh_run, ls_client, label_studio):
    link = connect_project(fresh_run, ls_client, label_studio.url, document_root=label_studio.document_root)
    project = ls_client.projects.get(id=link.project_id)
    ls_client.projects.update(id=link.project_id, label_config=with_tools(project.label_config))
    return fresh_run, ls_client, link


def test_polygons_brush_strokes_and_ellipses_become_cells_and_a_corrupt_stroke_is_reported(linked):
    run, client, link = linked
    g = run.grid
    task_ids = push(run, client, link.project_id, n=4, document_root=link.document_root)
    shapes = drawn(g)
    corrupt = region("brush", {"format": "rle", "rle": [0, 0, 1, 2, 3, 4, 5, 6]}, rid="bad-stroke")
    look = region("polygon", shapes["polygon"]["value"], label=LOOK_HERE, rid="look")
    ann = [
        annotate_as_browser(client, task_ids[0], [shapes["polygon"], shapes["ellipse"]]),
        annotate_as_browser(client, task_ids[1], [shapes["brush"], point(g, 6, 6)]),
        annotate_as_browser(client, task_ids[2], [point(g, 2, 2), corrupt]),
        annotate_as_browser(client, task_ids[3], [point(g, 4, 4), look]),
    ]

    report = pull(run, client, link.project_id)
    assert (report.new, len(report.invalid)) == (3, 1)
    bad = report.invalid[0]
    assert (bad.task_id, bad.annotation_id) == (task_ids[2], ann[2])
    assert bad.reason.startswith(f"task {task_ids[2]}, annotation {ann[2]}, brushlabels region 'bad-stroke': ")
    assert "corrupt rle" in bad.reason
    assert report.warnings == (
        f"task {task_ids[3]}, annotation {ann[3]}: polygonlabels regions labelled [{LOOK_HERE!r}] mark no cells",
    )
    sample = [client.tasks.get(id=t).data["sample_id"] for t in task_ids]
    w = run.feedback().cells
    np.testing.assert_array_equal(w[sample[0]], cells(g, (0, 0), (0, 1), (1, 0), (0, 5)))
    np.testing.assert_array_equal(w[sample[0]], region_cells(shapes["polygon"], g) | region_cells(shapes["ellipse"], g))
    lower_left = [(r, c) for r in range(3, 7) for c in range(2)]
    np.testing.assert_array_equal(w[sample[1]], cells(g, *lower_left, (6, 6)))
    assert sample[2] not in w  # its only annotation is invalid: nothing of it counts
    np.testing.assert_array_equal(w[sample[3]], cells(g, (4, 4)))  # the "looks here" polygon marks nothing

    last = run.ledger.last_pull(link.project_id)
    assert last["counts"]["new"] == 3 and last["counts"]["invalid"] == 1 and last["counts"]["warnings"] == 1
    assert [(i["task_id"], i["annotation_id"]) for i in last["invalid"]] == [(task_ids[2], ann[2])]
    assert "corrupt rle" in last["invalid"][0]["reason"]


def test_suggestions_accepted_unread_mark_nothing(fresh_run, ls_client, label_studio):
    """The pushed predictions pre-fill the most salient cells as "Model looks here": an annotator who accepts
    every suggestion as it stands (the prediction's result submitted unchanged) tells the model nothing."""
    run, client = fresh_run, ls_client
    link = connect_project(run, client, label_studio.url, document_root=label_studio.document_root)
    task_ids = push(run, client, link.project_id, n=3, document_root=link.document_root)
    for task_id in task_ids:
        suggested = client.tasks.get(id=task_id).predictions[0]
        result = suggested["result"] if isinstance(suggested, dict) else suggested.result
        assert result and {r["value"]["rectanglelabels"][0] for r in result} == {LOOK_HERE}
        annotate_as_browser(client, task_id, result)
    report = pull(run, client, link.project_id)
    assert report.new == len(task_ids) and not report.invalid
    assert run.feedback().annotated_ids() == []  # no W: the model is not told to ignore what it looks at
    assert len(report.warnings) == len(task_ids)  # each named: regions labelled 'Model looks here' mark no cells
