"""A team's project whose images live in an S3 bucket: a real Label Studio S3 import storage over moto's standalone
server (``tests.s3``), tasks holding ``s3://`` URIs, and the backend reading them through Label Studio's presign.

The storage and Label Studio are both on 127.0.0.1, so the backend is given ``IMAGE_NETWORKS=127.0.0.0/8`` as an
operator with a storage on a private network would be (the last test shows what happens without it).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager

import pytest
import requests
from werkzeug.serving import make_server

from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from tests.ls_backend.stock import STOCK, STOCK_CLASSES, stock_run
from tests.s3 import BUCKET, s3_project

pytestmark = pytest.mark.labelstudio

LOOPBACK = ("127.0.0.0/8",)


@contextmanager
def serve(app):
    """``app`` over real HTTP on a free loopback port; its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def backend(label_studio, tmp_path):
    """(URL, run) of a backend on the stock template's classes that may fetch from loopback storage."""
    run = stock_run(tmp_path / "run")
    config = BackendConfig(model_dir=run.directory, label_studio_url=label_studio.url, api_key=label_studio.token,
                           image_networks=LOOPBACK)  # fmt: skip
    with serve(create_app(config, preload=True)) as url:
        yield url, run


def predict(url: str, project_id: int, tasks: list[dict]) -> requests.Response:
    body = {"tasks": tasks, "project": f"{project_id}.1", "label_config": STOCK, "params": {"context": None}}
    return requests.post(f"{url}/predict", json=body, timeout=120)


def storage_gets(s3, prefix: str) -> list[str]:
    """The object GETs that reached the storage's host for keys under ``prefix`` (the presigned URLs fetched)."""
    return [r.path for r in s3.seen if r.method == "GET" and r.path.startswith(f"/{BUCKET}/{prefix}/")]


def test_label_studio_stores_a_class_prediction_for_every_s3_task(label_studio, ls_client, s3_server, backend):
    url, run = backend
    project = s3_project(label_studio, ls_client, s3_server, "predict", ["a.png", "b.png", "c.png", "d.png"])
    assert all(u.startswith(f"s3://{BUCKET}/predict/") for u in project.uris.values())
    ml = ls_client.ml.create(project=project.project_id, url=url, title="hitl")
    assert ls_client.ml.get(id=ml.id).model_version == run.model_version(0)
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.project_id,
                             selected_items={"all": True, "excluded": []})  # fmt: skip
    predictions = ls_client.predictions.list(project=project.project_id)
    assert sorted(p.task for p in predictions) == sorted(project.tasks)  # one for every S3 task
    for pred in predictions:
        assert pred.model_version == run.model_version(0) and 0 <= pred.score <= 1
        (choice,) = pred.result
        assert (choice["from_name"], choice["to_name"], choice["type"]) == ("choice", "image", "choices")
        assert choice["value"]["choices"][0] in STOCK_CLASSES and 0 <= choice["score"] <= 1
    # each image came from the storage's host through a presigned URL (signed in the query, no Authorization)
    gets = storage_gets(s3_server, "predict")
    assert sorted(p.split("?")[0].rsplit("/", 1)[1] for p in gets) == ["a.png", "b.png", "c.png", "d.png"]
    assert all("X-Amz-Signature=" in p for p in gets)
    # a /predict sent straight to the backend, as Label Studio sends it, and with the link Label Studio's tasks API
    # gives in place of the s3:// URI (/tasks/<id>/resolve/?fileuri=...): the same presign, the same storage hop
    task_id = min(project.tasks)
    (listed,) = [t for t in ls_client.tasks.list(project=project.project_id) if t.id == task_id]
    assert listed.data["image"].startswith(f"/tasks/{task_id}/resolve/?fileuri=")
    tasks = [{"id": task_id, "data": {"image": project.uris[task_id]}}, {"id": task_id, "data": listed.data}]
    answer = predict(url, project.project_id, tasks)
    assert answer.status_code == 200 and "skipped" not in answer.json(), answer.text
    first, second = answer.json()["results"]
    assert first["result"][0]["type"] == "choices" and first["prediction"] in STOCK_CLASSES
    assert (second["prediction"], second["score"]) == (first["prediction"], first["score"])  # the same image
    assert len(storage_gets(s3_server, "predict")) == len(gets) + 2


def test_a_storage_that_does_not_presign_streams_through_label_studio(label_studio, ls_client, s3_server, backend):
    """``presign: false``: Label Studio answers the presign with the object itself (200), reading it with the
    storage's own credentials; the backend never reaches the storage's host."""
    url, _ = backend
    project = s3_project(label_studio, ls_client, s3_server, "proxied", ["a.png", "b.png"], presign=False)
    answer = predict(url, project.project_id, [{"id": i, "data": {"image": u}} for i, u in project.uris.items()])
    assert answer.status_code == 200, answer.text
    assert all(r["result"][0]["type"] == "choices" for r in answer.json()["results"])
    gets = storage_gets(s3_server, "proxied")
    assert len(gets) == 2 and all("X-Amz-Signature" not in p for p in gets)  # Label Studio's signed GetObject


def test_a_missing_object_is_skipped_and_the_others_predicted(label_studio, ls_client, s3_server, backend, caplog):
    url, _ = backend
    project = s3_project(label_studio, ls_client, s3_server, "missing", ["a.png", "b.png", "gone.png"])
    s3_server.delete(BUCKET, "missing/gone.png")  # a team deleted the object after the sync
    gone = next(i for i, key in project.tasks.items() if key == "gone.png")
    tasks = [{"id": i, "data": {"image": u}} for i, u in sorted(project.uris.items())]
    tasks.append({"data": {"image": project.uris[gone].replace("gone", "a")}})  # no task id: nothing to presign for
    tasks.append({"id": min(project.tasks), "data": {"image": "s3://another-bucket/a.png"}})  # no storage covers it
    with caplog.at_level(logging.WARNING):
        answer = predict(url, project.project_id, tasks)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == 5 and [bool(r) for r in results] == [i != gone for i in sorted(project.tasks)] + [0, 0]
    skipped = answer.json()["skipped"]
    assert [s["task"] for s in skipped] == [gone, None, min(project.tasks)]
    # moto, as S3 for a signer without s3:ListBucket, answers a presigned GET of a missing key with 403
    assert f"s3://{BUCKET}/missing/gone.png" in skipped[0]["error"] and "HTTP 403" in skipped[0]["error"]
    assert "the object is missing" in skipped[0]["error"] and "X-Amz" not in skipped[0]["error"]
    assert "task has no id" in skipped[1]["error"]
    assert "Label Studio did not resolve 's3://another-bucket/a.png': HTTP 404" in skipped[2]["error"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"task {gone} skipped" in m and "missing/gone.png" in m for m in warned)


def test_a_storage_on_a_private_address_needs_image_networks(label_studio, ls_client, s3_server, tmp_path):
    """The storage's host is allowed because Label Studio named it, but its address is still checked."""
    project = s3_project(label_studio, ls_client, s3_server, "private", ["a.png"])
    run = stock_run(tmp_path / "run")
    config = BackendConfig(model_dir=run.directory, label_studio_url=label_studio.url, api_key=label_studio.token)
    before = len(s3_server.seen)
    with serve(create_app(config)) as url:
        ((task_id, uri),) = project.uris.items()
        answer = predict(url, project.project_id, [{"id": task_id, "data": {"image": uri}}])
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert f"task {task_id}: image {uri!r}, resolved by Label Studio," in error
    assert "named by Label Studio's storage" in error and "allow its network in IMAGE_NETWORKS" in error
    assert "X-Amz" not in error  # the presigned URL is never quoted: its signature is a credential
    assert not storage_gets(s3_server, "private") and len(s3_server.seen) == before  # refused before connecting
