"""A team's own project in the real Label Studio: the stock image-classification template, three images uploaded
as files and three as Local Files, the backend connected through Label Studio's API, and Label Studio's own
"Retrieve Predictions" storing a class prediction (a ``choices`` result and a score) for every task; tasks the
backend cannot read in the same request get none, and the rest still do."""

from __future__ import annotations

import io
import logging
import threading

import pytest
import requests
from label_studio_sdk.core.api_error import ApiError
from werkzeug.serving import make_server

from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from tests.ls_backend.stock import STOCK, STOCK_CLASSES, picture, stock_run
from trainer.labelstudio.client import ensure_local_storage, local_file_url

pytestmark = pytest.mark.labelstudio


def upload(label_studio, project_id: int, names: list[str]) -> None:
    """Upload a generated picture under each of ``names``."""
    pictures = {}
    for n, name in enumerate(names):
        data = io.BytesIO()
        picture(500 + n, size=40).save(data, "PNG")
        pictures[name] = data.getvalue()
    upload_files(label_studio, project_id, pictures)


def upload_files(label_studio, project_id: int, pictures: dict[str, bytes]) -> None:
    """Import PNGs (name -> bytes) as a browser's upload does: one multipart request, one field name per file."""
    files = {f"file{n}": (name, data, "image/png") for n, (name, data) in enumerate(pictures.items())}
    resp = requests.post(f"{label_studio.url}/api/projects/{project_id}/import", files=files,
                         headers={"Authorization": f"Token {label_studio.token}"}, timeout=60)  # fmt: skip
    assert resp.status_code == 201, resp.text


def local_files(label_studio, ls_client, project_id: int, names: list[str]) -> list[dict]:
    folder = label_studio.document_root / f"stock-{project_id}"
    folder.mkdir(parents=True, exist_ok=True)
    for n, name in enumerate(names):
        picture(600 + n, size=32).save(folder / name)
    ensure_local_storage(ls_client, project_id, folder, label_studio.document_root)
    return [{"data": {"image": local_file_url(folder / name, label_studio.document_root)}} for name in names]


@pytest.fixture
def backend_url(label_studio, tmp_path):
    """A backend over real HTTP on a free port (loopback, no credentials), serving a run on the template's classes."""
    run = stock_run(tmp_path / "run")
    app = create_app(BackendConfig(model_dir=run.directory, label_studio_url=label_studio.url,
                                   api_key=label_studio.token), preload=True)  # fmt: skip
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", run
    server.shutdown()
    server.server_close()


def test_label_studio_stores_a_class_prediction_for_every_task(label_studio, ls_client, backend_url):
    url, run = backend_url
    project = ls_client.projects.create(title="stock image classification", label_config=STOCK)
    upload(label_studio, project.id, ["u0.png", "u1.png", "u2.png"])
    ls_client.projects.import_tasks(id=project.id, request=local_files(label_studio, ls_client, project.id,
                                                                        ["l0.png", "l1.png", "l2.png"]))  # fmt: skip
    tasks = list(ls_client.tasks.list(project=project.id))
    assert len(tasks) == 6
    assert sum("/data/upload/" in t.data["image"] for t in tasks) == 3  # both kinds of image, three each
    ml = ls_client.ml.create(project=project.id, url=url, title="hitl")
    assert ls_client.ml.get(id=ml.id).model_version == run.model_version(0)  # /setup accepted the template
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                             selected_items={"all": True, "excluded": []})  # fmt: skip
    predictions = ls_client.predictions.list(project=project.id)
    assert sorted(p.task for p in predictions) == sorted(t.id for t in tasks)  # one for every task
    for pred in predictions:
        assert pred.model_version == run.model_version(0) and 0 <= pred.score <= 1
        (choice,) = pred.result  # the template has no region tool: the class is the prediction
        assert (choice["from_name"], choice["to_name"], choice["type"]) == ("choice", "image", "choices")
        assert choice["value"]["choices"][0] in STOCK_CLASSES and 0 <= choice["score"] <= 1


def test_tasks_the_backend_cannot_read_get_no_prediction_and_the_others_do(label_studio, ls_client, backend_url,
                                                                           caplog):  # fmt: skip
    """One "Retrieve Predictions" over readable tasks, a Local Files image that is not on disk and an unsupported
    URL: Label Studio stores a prediction for every readable task, none for the other two, and the backend's log
    names each skipped task and why."""
    url, _ = backend_url
    project = ls_client.projects.create(title="stock image classification, unreadable tasks", label_config=STOCK)
    upload(label_studio, project.id, ["r0.png"])
    readable = local_files(label_studio, ls_client, project.id, ["r1.png"])
    gone = local_file_url(label_studio.document_root / f"stock-{project.id}" / "gone.png", label_studio.document_root)
    ftp = "ftp://example.invalid/cat.png"
    ls_client.projects.import_tasks(id=project.id, request=[*readable, {"data": {"image": gone}},
                                                            {"data": {"image": ftp}}])  # fmt: skip
    tasks = {t.data["image"]: t.id for t in ls_client.tasks.list(project=project.id)}
    assert len(tasks) == 4
    ls_client.ml.create(project=project.id, url=url, title="hitl")
    with caplog.at_level(logging.WARNING, logger="ls_backend"):
        ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                                 selected_items={"all": True, "excluded": []})  # fmt: skip
    predicted = sorted(p.task for p in ls_client.predictions.list(project=project.id))
    unreadable = {tasks.pop(gone), tasks.pop(ftp)}
    assert predicted == sorted(tasks.values())  # every readable task, in the same request as the unreadable ones
    skipped = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()}
    for task_id in unreadable:
        assert any(f"task {task_id} skipped" in line for line in skipped), skipped
    assert any("unsupported scheme 'ftp'" in line for line in skipped), skipped


def test_a_config_without_choices_is_refused_where_label_studio_and_the_log_say_why(label_studio, ls_client,
                                                                                    backend_url, caplog):  # fmt: skip
    """Connecting a project whose config has no Choices fails in Label Studio (which shows only the 422), the
    backend's log names the project and what is missing, and nothing of the project changes."""
    url, _ = backend_url
    config = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
              '<Label value="Cat"/></RectangleLabels></View>')  # fmt: skip
    project = ls_client.projects.create(title="boxes only", label_config=config)
    ls_client.projects.import_tasks(id=project.id, request=local_files(label_studio, ls_client, project.id, ["c.png"]))
    with caplog.at_level(logging.WARNING, logger="ls_backend"), pytest.raises(ApiError) as refused:
        ls_client.ml.create(project=project.id, url=url, title="hitl")
    assert refused.value.status_code == 400 and "422" in str(refused.value.body)  # all Label Studio tells the user
    logged = [r.getMessage() for r in caplog.records if f"/setup for project {project.id} refused" in r.getMessage()]
    assert logged and "no Choices control" in logged[0], logged
    assert ls_client.projects.get(id=project.id).label_config == config  # the team's config is untouched
    assert not list(ls_client.ml.list(project=project.id))  # no backend left half-connected
    assert len(list(ls_client.tasks.list(project=project.id))) == 1
