"""The Label Studio loop against the real server: push -> annotate through the REST API -> pull -> train."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

import trainer.labelstudio.push
from label_config.names import (
    ANNOTATED,
    CELL_POINT,
    CELL_POINT_LABEL,
    CELL_RECT,
    CELL_RECT_LABEL,
    CORRECT_LABEL,
    LABEL_CHECK,
    LABEL_WRONG,
)
from label_config.regions import region_cells
from trainer.labelstudio.annotator import simulate_annotator
from trainer.labelstudio.client import annotate_as_browser, list_task_data
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.loop import wait_for_annotations
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push

pytestmark = pytest.mark.labelstudio
DISPLAY = 224  # display_px of the 7 x 7 grid: the PNGs' size, so the browser posts it as original_width


def rect(grid, cells, *, inset=0.1):
    """A hand-drawn rectangle over the block of ``cells`` (a little inside its outer borders)."""
    boxes = [grid.cell_box_percent(r, c) for r, c in cells]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    dx, dy = inset * boxes[0][2], inset * boxes[0][3]
    return {
        "id": f"r{len(cells)}{x0:.0f}",
        "from_name": CELL_RECT,
        "to_name": ANNOTATED,
        "type": "rectanglelabels",
        "original_width": DISPLAY,
        "original_height": DISPLAY,
        "image_rotation": 0,
        "value": {
            "x": x0 + dx,
            "y": y0 + dy,
            "width": x1 - x0 - 2 * dx,
            "height": y1 - y0 - 2 * dy,
            "rotation": 0,
            "rectanglelabels": [CELL_RECT_LABEL],
        },
    }


def point(grid, r, c):
    x, y, w, h = grid.cell_box_percent(r, c)
    return {
        "id": f"p{r}{c}",
        "from_name": CELL_POINT,
        "to_name": ANNOTATED,
        "type": "keypointlabels",
        "original_width": DISPLAY,
        "original_height": DISPLAY,
        "image_rotation": 0,
        "value": {"x": x + 0.3 * w, "y": y + 0.6 * h, "width": 0.5, "keypointlabels": [CELL_POINT_LABEL]},
    }


def label_fix(name):
    return [
        {
            "id": "chk",
            "from_name": LABEL_CHECK,
            "to_name": ANNOTATED,
            "type": "choices",
            "value": {"choices": [LABEL_WRONG]},
        },
        {
            "id": "fix",
            "from_name": CORRECT_LABEL,
            "to_name": ANNOTATED,
            "type": "choices",
            "value": {"choices": [name]},
        },
    ]


def cells(grid, *marked):
    out = np.zeros(grid.shape, dtype=bool)
    for rc in marked:
        out[rc] = True
    return out


@pytest.fixture
def linked(fresh_run, ls_client, label_studio):
    """(run, client, link) with the run linked to a new project on the session's server."""
    return (
        fresh_run,
        ls_client,
        connect_project(fresh_run, ls_client, label_studio.url, document_root=label_studio.document_root),
    )


def test_push_pull_train_end_to_end(linked, label_studio):
    run, client, link = linked
    g, project = run.grid, link.project_id
    task_ids = push(run, client, project, n=5, document_root=link.document_root)
    assert len(task_ids) == 5
    tasks = {t: client.tasks.get(id=t) for t in task_ids}
    first = tasks[task_ids[0]]
    assert set(first.data) == {
        "image",
        "saliency",
        "sample_id",
        "round",
        "label",
        "prediction",
        "probability",
        "model_version",
    }
    assert first.data["model_version"] == run.model_version(0) and first.data["round"] == 0
    prediction = first.predictions[0]
    assert prediction.model_version == run.model_version(0) and len(prediction.result) == run.config.top_k
    png = label_studio.document_root / run.name / "round-000" / f"sample-{first.data['sample_id']}-saliency.png"
    with Image.open(png) as picture:
        assert picture.mode == "RGB" and picture.size == (DISPLAY, DISPLAY)

    sample = [tasks[t].data["sample_id"] for t in task_ids]
    fix_class = run.classes[(int(run.datasets[0].labels[sample[2]]) + 1) % len(run.classes)]
    ann = {
        0: annotate_as_browser(client, task_ids[0], [rect(g, [(0, 0), (0, 1)]), point(g, 6, 6)]),
        1: annotate_as_browser(client, task_ids[1], [], was_cancelled=True),
        2: annotate_as_browser(client, task_ids[2], [point(g, 3, 3), *label_fix(fix_class)]),
        3: annotate_as_browser(client, task_ids[3], [rect(g, [(2, 2)])]),
    }
    bad = rect(g, [(1, 1)])
    bad["value"]["x"] = 150.0
    bad_id = annotate_as_browser(client, task_ids[4], [bad])

    report = pull(run, client, project)
    assert (report.new, report.updated, report.unchanged, report.skipped) == (4, 0, 0, 1)
    assert len(report.errors) == 1
    assert f"task {task_ids[4]}" in report.errors[0] and repr(bad["id"]) in report.errors[0]
    assert f"annotation {bad_id}" in report.errors[0]
    expected = {sample[0]: cells(g, (0, 0), (0, 1), (6, 6)), sample[2]: cells(g, (3, 3)), sample[3]: cells(g, (2, 2))}
    w = run.feedback()
    assert w.cells.keys() == expected.keys()
    for sid, want in expected.items():
        np.testing.assert_array_equal(w.cells[sid], want)
    assert w.skipped == {sample[1]}
    assert w.labels == {sample[2]: run.classes.index(fix_class)}

    again = pull(run, client, project)  # idempotent: same W, nothing rewritten
    assert (again.new, again.updated, again.unchanged) == (0, 0, 4)
    assert {k: v.tolist() for k, v in run.feedback().cells.items()} == {k: v.tolist() for k, v in w.cells.items()}

    client.annotations.update(id=ann[3], result=[point(g, 4, 5)])  # an edit replaces the old mask
    report = pull(run, client, project)
    assert (report.new, report.updated, report.unchanged) == (0, 1, 3)
    np.testing.assert_array_equal(run.feedback().cells[sample[3]], cells(g, (4, 5)))

    broken = point(g, 4, 5)
    broken["value"]["x"] = 150.0  # edited into something the rasteriser cannot read (off the image)
    client.annotations.update(id=ann[3], result=[broken])
    report = pull(run, client, project)
    assert report.invalidated == 1 and any(f"annotation {ann[3]}" in e for e in report.errors)
    assert sample[3] not in run.feedback().cells  # its old cells stop counting
    polygon = {
        "id": "poly1",
        "from_name": "irrelevant_area",
        "to_name": "image",
        "type": "polygonlabels",
        "value": {"points": [[10, 10], [20, 10], [20, 20]], "polygonlabels": ["Irrelevant area"]},
    }
    client.annotations.update(id=ann[3], result=[point(g, 4, 5), polygon])  # fixed again, plus a polygon
    report = pull(run, client, project)
    assert report.new + report.updated == 1 and not any(f"annotation {ann[3]}" in e for e in report.errors)
    assert not any(f"annotation {ann[3]}" in w for w in report.warnings)  # a polygon marks cells too
    want = cells(g, (4, 5)) | region_cells(polygon, g)
    assert region_cells(polygon, g).any() and not region_cells(polygon, g)[4, 5]
    np.testing.assert_array_equal(run.feedback().cells[sample[3]], want)

    client.annotations.delete(id=ann[0])  # a deletion stops counting
    assert pull(run, client, project).deleted == 1
    assert sample[0] not in run.feedback().cells

    record = run.train_next_round()
    assert record["round"] == 1 and record["annotated"] == 2 and record["label_fixes"] == 1
    epoch = record["epochs"][-1]
    assert epoch["penalised_rows"] > 0 and epoch["penalty"] > 0


def test_push_twice_imports_no_duplicates(linked):
    run, client, link = linked
    first = push(run, client, link.project_id, document_root=link.document_root)
    assert push(run, client, link.project_id, document_root=link.document_root) == first
    data = list_task_data(client, link.project_id)
    assert sorted(data) == sorted(first) and len(first) == run.config.sampling.per_round
    assert len({d["sample_id"] for d in data.values()}) == len(first)


def test_crash_between_import_and_ledger_does_not_duplicate(linked, monkeypatch):
    run, client, link = linked
    real_import = trainer.labelstudio.push.import_tasks

    def import_then_crash(*args, on_batch, **kwargs):
        real_import(*args, **kwargs)  # lands in Label Studio; the crash comes before its batch is recorded
        raise SystemExit("crashed before the ledger heard of the import")

    monkeypatch.setattr(trainer.labelstudio.push, "import_tasks", import_then_crash)
    with pytest.raises(SystemExit):
        push(run, client, link.project_id, document_root=link.document_root)
    assert run.ledger.pushed_tasks(link.project_id) == []
    monkeypatch.undo()

    task_ids = push(run, client, link.project_id, document_root=link.document_root)
    assert sorted(task_ids) == sorted(list_task_data(client, link.project_id))
    assert len(task_ids) == run.config.sampling.per_round


@pytest.mark.parametrize("mode, want", [("union", [(0, 0), (0, 1), (5, 5)]), ("majority", [(0, 0)])])
def test_several_annotators_combine_by_mode(linked, mode, want):
    run, client, link = linked
    task_id = push(run, client, link.project_id, n=1, document_root=link.document_root)[0]
    g = run.grid
    annotate_as_browser(client, task_id, [rect(g, [(0, 0), (0, 1)])])
    annotate_as_browser(client, task_id, [point(g, 0, 0), point(g, 5, 5)])
    report = pull(run, client, link.project_id, mode=mode)
    (sample_id,) = report.feedback.cells
    np.testing.assert_array_equal(report.feedback.cells[sample_id], cells(g, *want))


@pytest.mark.parametrize("kind", ["rect", "point"])
def test_simulated_annotator_marks_the_decoy_through_the_api(linked, kind):
    run, client, link = linked
    task_ids = push(run, client, link.project_id, document_root=link.document_root)
    assert len(simulate_annotator(run, client, link.project_id, kind=kind)) == len(task_ids)
    assert simulate_annotator(run, client, link.project_id, kind=kind) == []  # answered tasks are left alone
    w = pull(run, client, link.project_id).feedback
    masks = run.datasets[0].decoy_masks
    assert len(w.cells) == len(task_ids)
    for sample_id, marked in w.cells.items():
        np.testing.assert_array_equal(marked, run.grid.mask_to_cells(masks[sample_id].numpy()))


def test_data_uri_push_inlines_rgb_pngs(linked):
    run, client, link = linked
    task_id = push(run, client, link.project_id, n=1, data_uri=True)[0]
    data = client.tasks.get(id=task_id).data
    for uri in (data["image"], *data["saliency"]):  # the overlay is a one-item list (the config's valueList)
        assert uri.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as picture:
            assert picture.mode == "RGB" and picture.size == (DISPLAY, DISPLAY)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be an integer >= 1"),
        ({"round": 3}, "round 3 has no checkpoint"),
        ({"document_root": None}, "document_root is needed"),
    ],
)
def test_push_refuses_bad_arguments(linked, kwargs, match):
    run, client, link = linked
    with pytest.raises(ValueError, match=match):
        push(run, client, link.project_id, **{"document_root": link.document_root, **kwargs})


def test_pull_refuses_an_unknown_mode(linked):
    run, client, link = linked
    with pytest.raises(ValueError, match="mode must be one of"):
        pull(run, client, link.project_id, mode="vote")


def test_wait_for_annotations_stops_at_the_minimum_or_the_deadline(linked):
    run, client, link = linked
    task_ids = push(run, client, link.project_id, document_root=link.document_root)
    annotate_as_browser(client, task_ids[0], [], was_cancelled=True)  # a skip is an answer
    wait = dict(poll_s=0.2, progress=False)
    assert wait_for_annotations(client, link.project_id, task_ids, min_annotations=1, **wait) == 1
    began = time.monotonic()
    assert wait_for_annotations(client, link.project_id, task_ids, deadline_s=1.0, **wait) == 1
    assert 1.0 <= time.monotonic() - began < 10.0
