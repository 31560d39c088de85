"""The Label Studio client against the real server: projects, local files, import, pull, ledger."""

from __future__ import annotations

import itertools
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from label_studio_sdk.core.api_error import ApiError
from PIL import Image

from label_config.grid import Grid
from trainer.labelstudio.client import (
    annotate_as_browser,
    connect,
    ensure_local_storage,
    ensure_project,
    fetch_annotations,
    import_tasks,
    list_task_data,
    local_file_url,
)
from trainer.runs.ledger import Ledger, utc_timestamp

GRID = Grid(28, 28, 4, 4)
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="irrelevant" toName="image"><Label value="Irrelevant"/></RectangleLabels>
</View>"""
_titles = itertools.count()


def rect(row, col):
    """A result region covering exactly grid cell (row, col)."""
    x, y, w, h = GRID.cell_box_percent(row, col)
    return {
        "from_name": "irrelevant",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": GRID.width,
        "original_height": GRID.height,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Irrelevant"]},
    }


def cells_of(result):
    """Test-only inverse of ``rect`` (the real rasteriser lives in trainer/rasterise.py)."""
    boxes = {GRID.cell_box_percent(r, c): (r, c) for r in range(GRID.rows) for c in range(GRID.cols)}
    cells = np.zeros(GRID.shape, dtype=bool)
    for region in result:
        v = region["value"]
        cells[boxes[(v["x"], v["y"], v["width"], v["height"])]] = True
    return cells


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path) as led:
        yield led


@pytest.fixture
def project(ls_client):
    return ensure_project(ls_client, f"client-test-{next(_titles)}", CONFIG)


def task(sample_id, **data):
    return {"data": {"image": f"/data/local-files/?d=s{sample_id}.png", "sample_id": sample_id, **data}}


pytestmark = pytest.mark.labelstudio


def test_connect_reads_the_ecosystem_variables(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    assert connect().users.whoami().email == label_studio.username


def test_connect_without_configuration_names_what_is_missing(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ValueError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        connect()
    with pytest.raises(ValueError, match="set LABEL_STUDIO_API_KEY"):
        connect(url="http://localhost:8080")


def test_ensure_project_reuses_its_own_project_by_title_and_follows_the_config(ls_client):
    """The run's own project (its owner note); another's is refused: tests/labelstudio/test_foreign_project.py."""
    first = ensure_project(ls_client, "reuse-me", CONFIG, owner="run A")
    assert ensure_project(ls_client, "reuse-me", CONFIG, owner="run A") == first
    changed = CONFIG.replace('value="Irrelevant"', 'value="Irrelevant" background="red"')
    assert ensure_project(ls_client, "reuse-me", changed, owner="run A") == first
    assert ls_client.projects.get(id=first).label_config == changed
    assert ensure_project(ls_client, "reuse-me-not", CONFIG, owner="run A") != first


@pytest.mark.parametrize(
    "relative, url",
    [
        ("a.png", "/data/local-files/?d=a.png"),
        ("round 0/sample 7.png", "/data/local-files/?d=round%200/sample%207.png"),
        ("x/y/z.png", "/data/local-files/?d=x/y/z.png"),
    ],
)
def test_local_file_url(tmp_path, relative, url):
    assert local_file_url(tmp_path / relative, tmp_path) == url


def test_local_file_url_outside_the_root_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not under the Label Studio document root"):
        local_file_url(tmp_path.parent / "elsewhere.png", tmp_path)


def test_local_storage_serves_images_to_the_token(label_studio, ls_client, project):
    folder = label_studio.document_root / f"project-{project}" / "images"
    folder.mkdir(parents=True)
    Image.new("RGB", (28, 28), (255, 0, 0)).save(folder / "s0.png")
    Image.new("RGB", (28, 28)).save(label_studio.document_root / f"project-{project}" / "outside.png")
    storage = ensure_local_storage(ls_client, project, folder, label_studio.document_root)
    assert ensure_local_storage(ls_client, project, folder, label_studio.document_root) == storage
    assert ls_client.tasks.list(project=project).items == []  # never synced: no task per file

    def get(path):
        req = urllib.request.Request(
            label_studio.url + local_file_url(path, label_studio.document_root),
            headers={"Authorization": f"Token {label_studio.token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.headers["Content-Type"], resp.read()

    content_type, body = get(folder / "s0.png")
    assert content_type == "image/png" and body[:4] == b"\x89PNG"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(label_studio.document_root / f"project-{project}" / "outside.png")


def test_local_storage_folder_is_checked(label_studio, ls_client, project, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ensure_local_storage(ls_client, project, label_studio.document_root / "nope", label_studio.document_root)
    with pytest.raises(ValueError, match="not under the document root"):
        ensure_local_storage(ls_client, project, tmp_path, label_studio.document_root)


def test_import_tasks_in_batches_keeps_order(ls_client, project):
    ids = import_tasks(ls_client, project, [task(s) for s in range(7)], batch_size=3)
    assert len(ids) == len(set(ids)) == 7
    data = list_task_data(ls_client, project, page_size=4)
    assert [data[t]["sample_id"] for t in ids] == list(range(7))


def push(client, ledger, project, round, sample_ids):
    """The idempotent push: import what the ledger has not seen for this round, record it."""
    todo = [s for s in sample_ids if s not in ledger.pushed_sample_ids(project, round)]
    task_ids = import_tasks(client, project, [task(s, round=round) for s in todo])
    return ledger.record_pushed(project, round, zip(task_ids, todo))


def test_pushing_twice_imports_once(ls_client, project, ledger):
    assert push(ls_client, ledger, project, 0, [3, 5, 8]) == 3
    assert push(ls_client, ledger, project, 0, [3, 5, 8, 9]) == 1
    assert push(ls_client, ledger, project, 0, [3, 5, 8, 9]) == 0
    data = list_task_data(ls_client, project)
    assert sorted(d["sample_id"] for d in data.values()) == [3, 5, 8, 9]
    assert {t.task_id: t.sample_id for t in ledger.pushed_tasks(project)} == {
        t: d["sample_id"] for t, d in data.items()
    }


@pytest.fixture
def annotated(ls_client, project):
    """8 tasks with a prediction each: 3 annotated (one twice), 1 skipped, 4 untouched."""
    tasks = [
        dict(task(s), predictions=[{"result": [rect(0, 0)], "score": 0.5, "model_version": "v0"}])
        for s in range(10, 18)
    ]
    ids = import_tasks(ls_client, project, tasks)
    given = {
        annotate_as_browser(ls_client, ids[0], [rect(1, 1)]): (ids[0], 10, [rect(1, 1)]),
        annotate_as_browser(ls_client, ids[2], [rect(2, 3), rect(3, 3)]): (ids[2], 12, [rect(2, 3), rect(3, 3)]),
        annotate_as_browser(ls_client, ids[2], [rect(0, 1)]): (ids[2], 12, [rect(0, 1)]),
        annotate_as_browser(ls_client, ids[5], []): (ids[5], 15, []),
    }
    skipped = annotate_as_browser(ls_client, ids[6], [], was_cancelled=True)
    return ids, given, skipped


def test_fetch_returns_exactly_the_submitted_annotations(ls_client, project, annotated):
    ids, given, skipped = annotated
    records = fetch_annotations(ls_client, project)  # one export of every task
    assert {r.annotation_id for r in records} == set(given) | {skipped}
    for r in records:
        if r.annotation_id == skipped:
            assert r.was_cancelled and r.result == [] and (r.task_id, r.sample_id) == (ids[6], 16)
        else:
            assert not r.was_cancelled
            assert (r.task_id, r.sample_id, r.result) == given[r.annotation_id]
            assert r.updated_at.tzinfo is not None and r.completed_by is not None
    # predictions never come back as annotations: 4 tasks hold only a prediction
    assert {r.task_id for r in records}.isdisjoint({ids[1], ids[3], ids[4], ids[7]})


def consume(ledger, records):
    with ledger.transaction():
        return sum(
            ledger.upsert_annotation(
                r.annotation_id,
                task_id=r.task_id,
                sample_id=r.sample_id,
                updated_at=r.updated_at,
                cells=None if r.was_cancelled else cells_of(r.result),
                was_cancelled=r.was_cancelled,
                annotator=r.completed_by,
                project_id=r.project_id,
            )
            for r in records
        )


def test_pull_into_the_ledger_twice_gives_the_same_mask(ls_client, project, annotated, ledger):
    assert consume(ledger, fetch_annotations(ls_client, project)) == 5
    first = ledger.feedback(GRID, project_id=project)
    assert consume(ledger, fetch_annotations(ls_client, project)) == 0
    second = ledger.feedback(GRID, project_id=project)
    assert first.skipped == second.skipped == {16}
    assert set(first.cells) == set(second.cells) == {10, 12, 15}
    for k in first.cells:
        np.testing.assert_array_equal(first.cells[k], second.cells[k])
    assert sorted(zip(*np.nonzero(first.cells[12]))) == [(0, 1), (2, 3), (3, 3)]  # union of two annotators
    assert not first.cells[15].any()


def test_an_updated_annotation_replaces_the_old_one(ls_client, project, annotated, ledger):
    ids, given, _ = annotated
    consume(ledger, fetch_annotations(ls_client, project))
    annotation_id = next(a for a, (t, _, _) in given.items() if t == ids[0])
    before = ls_client.annotations.get(id=annotation_id).updated_at
    time.sleep(0.01)
    after = ls_client.annotations.update(id=annotation_id, result=[rect(3, 0)]).updated_at
    assert after > before
    assert consume(ledger, fetch_annotations(ls_client, project)) == 1
    assert ledger.annotation_versions()[annotation_id] == utc_timestamp(after)
    np.testing.assert_array_equal(ledger.feedback(GRID).cells[10], cells_of([rect(3, 0)]))


def test_a_deleted_annotation_disappears_and_can_be_marked(ls_client, project, annotated, ledger):
    ids, given, _ = annotated
    consume(ledger, fetch_annotations(ls_client, project))
    gone = next(a for a, (t, _, _) in given.items() if t == ids[5])
    ls_client.annotations.delete(id=gone)
    present = {r.annotation_id for r in fetch_annotations(ls_client, project)}
    assert gone not in present
    assert ledger.mark_deleted(ledger.consumed_annotation_ids() - present) == 1
    assert 15 not in ledger.feedback(GRID).cells


def test_tasks_without_a_sample_id_are_reported_as_none(ls_client, project):
    [task_id] = import_tasks(ls_client, project, [{"data": {"image": "/data/local-files/?d=hand.png"}}])
    annotate_as_browser(ls_client, task_id, [rect(0, 0)])
    [record] = fetch_annotations(ls_client, project)
    assert record.sample_id is None


def test_a_non_integer_sample_id_does_not_block_the_others(ls_client, project):
    ids = import_tasks(ls_client, project, [task("seven"), task(7)])
    for task_id in ids:
        annotate_as_browser(ls_client, task_id, [rect(0, 0)])
    records = {r.task_id: r.sample_id for r in fetch_annotations(ls_client, project)}
    assert records == {ids[0]: None, ids[1]: 7}  # the foreign task is reported as one without a sample id


def test_import_tasks_rejects_a_bad_batch_size(ls_client, project):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        import_tasks(ls_client, project, [task(0)], batch_size=0)


@pytest.mark.parametrize("title", ["ab", "x" * 51])
def test_project_titles_outside_label_studio_limits_are_refused(ls_client, title):
    with pytest.raises(ValueError, match="3 to 50 characters"):
        ensure_project(ls_client, title, CONFIG)


def test_a_missing_project_is_an_error_not_an_empty_pull(ls_client):
    with pytest.raises(ApiError) as err:
        fetch_annotations(ls_client, 987654)
    assert err.value.status_code == 404
