"""Pull hardening against the real server: malformed annotations Label Studio stores, pulls that overlap,
and what "Start Training" reports."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from label_studio_sdk.core.api_error import ApiError

import trainer.labelstudio.pull
from label_config.names import CORRECT_LABEL
from label_config.rasterise import MAX_REGIONS
from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from tests.label_config.test_rasterise import _malformed_item
from tests.labelstudio.test_loop import cells, point, rect
from trainer.labelstudio.client import annotate_as_browser
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push

pytestmark = pytest.mark.labelstudio
# A polygon of the snippet's tool that says where the model should look: feedback marks none of its cells.
POLYGON = {
    "id": "poly",
    "from_name": "feedback_regions",
    "to_name": "image",
    "type": "polygonlabels",
    "value": {"points": [[10, 10], [20, 10], [20, 20]], "polygonlabels": ["Model should use this"]},
}
POLYGON_WARNING = "polygonlabels regions labelled ['Model should use this'] mark no cells"


@pytest.fixture
def linked(fresh_run, ls_client, label_studio):
    link = connect_project(fresh_run, ls_client, label_studio.url, document_root=label_studio.document_root)
    return fresh_run, ls_client, link


def malformed(grid):
    """Results a real Label Studio 1.23 stores (201), each of which used to stop every pull."""
    huge = rect(grid, [(1, 1)])
    huge["value"]["x"] = 10**400
    return {
        "choice of a dict": [{"id": "fix", "from_name": CORRECT_LABEL, "to_name": "image", "type": "choices",
                              "value": {"choices": [{"a": 1}]}}],
        "x of 401 digits": [huge],
        "too many regions": [{**point(grid, 2, 2), "id": f"p{i}"} for i in range(MAX_REGIONS + 1)],
    }  # fmt: skip


def test_malformed_annotations_are_recorded_invalid_and_the_others_land(linked, capsys):
    run, client, link = linked
    g = run.grid
    task_ids = push(run, client, link.project_id, n=5, document_root=link.document_root)
    good = {task_ids[0]: annotate_as_browser(client, task_ids[0], [rect(g, [(0, 0)])]),
            task_ids[1]: annotate_as_browser(client, task_ids[1], [point(g, 3, 3), POLYGON])}  # fmt: skip
    bad = {
        annotate_as_browser(client, t, result): (t, why) for t, (why, result) in zip(task_ids[2:], malformed(g).items())
    }

    report = pull(run, client, link.project_id)
    assert (report.new, len(report.invalid)) == (2, 3)
    assert {(i.task_id, i.annotation_id) for i in report.invalid} == {(t, a) for a, (t, _) in bad.items()}
    for invalid in report.invalid:
        assert invalid.reason.startswith(f"task {invalid.task_id}, annotation {invalid.annotation_id}")
    assert any(f"{MAX_REGIONS + 1} regions, at most {MAX_REGIONS}" in e for e in report.errors)
    sample = {t: client.tasks.get(id=t).data["sample_id"] for t in good}
    w = run.feedback()
    np.testing.assert_array_equal(w.cells[sample[task_ids[0]]], cells(g, (0, 0)))
    np.testing.assert_array_equal(w.cells[sample[task_ids[1]]], cells(g, (3, 3)))

    last = run.ledger.last_pull(link.project_id)
    assert last["counts"]["new"] == 2 and last["counts"]["invalid"] == 3 and last["counts"]["warnings"] == 1
    assert {(i["task_id"], i["annotation_id"]) for i in last["invalid"]} == {(t, a) for a, (t, _) in bad.items()}
    assert f"annotation {good[task_ids[1]]}: {POLYGON_WARNING}" in last["warnings"][0]


def test_concurrent_pulls_apply_the_newer_export_last(linked, monkeypatch):
    """Pull A reads its export, then stalls; meanwhile an annotation is created and pull B starts. B must not
    read its export before A has applied (then A's older export would be applied last and mark it deleted)."""
    run, client, link = linked
    g = run.grid
    first, second = push(run, client, link.project_id, n=2, document_root=link.document_root)
    annotate_as_browser(client, first, [rect(g, [(0, 0)])])
    real_fetch = trainer.labelstudio.pull.export_tasks
    a_read, a_go = threading.Event(), threading.Event()

    def fetch(*args, **kwargs):
        tasks = real_fetch(*args, **kwargs)
        if threading.current_thread().name == "A":
            a_read.set()
            a_go.wait(60)
        return tasks

    monkeypatch.setattr(trainer.labelstudio.pull, "export_tasks", fetch)  # the pull reads its export here
    reports = {}
    a = threading.Thread(target=lambda: reports.setdefault("A", pull(run, client, link.project_id)), name="A")
    a.start()
    assert a_read.wait(60)
    created = annotate_as_browser(client, second, [point(g, 4, 4)])  # after A's export, before B's
    b = threading.Thread(target=lambda: reports.setdefault("B", pull(run, client, link.project_id)), name="B")
    b.start()
    b.join(5)  # before the fix B read and applied the newer export here; now it waits for A
    a_go.set()
    a.join(60)
    b.join(60)
    assert set(reports) == {"A", "B"}
    assert created in run.ledger.live_annotation_ids(link.project_id)
    assert len(run.feedback().cells) == 2
    assert run.ledger.last_pull()["counts"]["new"] == 1 and reports["B"].deleted == 0


def test_start_training_logs_and_records_the_pulls_invalid_annotations_and_warnings(linked, label_studio, caplog):
    run, client, link = linked
    g = run.grid
    task_ids = push(run, client, link.project_id, n=2, document_root=link.document_root)
    polygon_id = annotate_as_browser(client, task_ids[0], [point(g, 1, 1), POLYGON])
    bad_id = annotate_as_browser(client, task_ids[1], malformed(g)["x of 401 digits"])
    # "Start Training" as Label Studio sends it, to the backend serving the run's linked project; the round runs in
    # its own process, whose log the backend relays into its own (ls_backend.model)
    app = create_app(BackendConfig(model_dir=run.directory, label_studio_url=label_studio.url,
                                   api_key=label_studio.token))  # fmt: skip
    web = app.test_client()
    with caplog.at_level(logging.INFO, logger="ls_backend.model"):
        started = web.post("/webhook", json={"action": "START_TRAINING", "project": {"id": link.project_id}})
        assert started.status_code == 201, started.json
        assert app.extensions["hitl"]["job"].wait(300)
    health = web.get("/health").json
    assert health["model_version"] == run.model_version(1), health["training"]
    shown = health["last_pull"]
    assert (shown["project_id"], shown["counts"]["invalid"], shown["counts"]["warnings"]) == (link.project_id, 1, 1)
    assert shown["invalid"][0]["task_id"] == task_ids[1] and "too large" in shown["invalid"][0]["reason"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"project {link.project_id}: pulled 1 new" in logged and "1 invalid" in logged
    assert f"invalid annotation: task {task_ids[1]}, annotation {bad_id}, region" in logged and "too large" in logged
    assert f"warning: task {task_ids[0]}, annotation {polygon_id}: {POLYGON_WARNING}" in logged
    last = run.ledger.last_pull(link.project_id)
    assert last["counts"]["invalid"] == 1 and last["counts"]["warnings"] == 1
    assert run.ledger.rounds()[-1]["round"] == 1


FUZZED_PER_PULL = 10


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.lists(
        st.lists(_malformed_item(), min_size=1, max_size=3), min_size=FUZZED_PER_PULL, max_size=FUZZED_PER_PULL
    )
)
def test_fuzzed_annotations_never_stop_the_good_one(linked_once, garbage):
    run, client, link, good_task, bad_tasks = linked_once
    bad = {}
    for task_id, result in zip(bad_tasks, garbage):
        try:
            bad[annotate_as_browser(client, task_id, result)] = task_id
        except (ApiError, ValueError, TypeError):  # refused by Label Studio (400) or the SDK: nothing to pull
            event("refused before a pull")
    report = pull(run, client, link.project_id)
    event(f"{len(report.errors)} of {len(bad)} invalid")
    sample = client.tasks.get(id=good_task).data["sample_id"]
    np.testing.assert_array_equal(run.feedback().cells[sample], cells(run.grid, (2, 2)))
    named = {f"task {t}, annotation {a}" for a, t in bad.items()}
    assert all(e.startswith(tuple(named)) for e in report.errors)  # each names one of the fuzzed annotations
    for annotation_id in bad:
        client.annotations.delete(id=annotation_id)


@pytest.fixture
def linked_once(linked):
    """One good annotation, and tasks for the fuzzed ones (deleted after each pull)."""
    run, client, link = linked
    good_task, *bad_tasks = push(run, client, link.project_id, n=FUZZED_PER_PULL + 1, document_root=link.document_root)
    annotate_as_browser(client, good_task, [rect(run.grid, [(2, 2)])])
    return run, client, link, good_task, bad_tasks
