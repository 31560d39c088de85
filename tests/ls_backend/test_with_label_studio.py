"""The real Label Studio server (started by the suite) as the backend's client.

Label Studio connects the backend (/health, /setup), requests predictions itself (/predict) for tasks
whose images are data URIs and a Local Files image it serves only with the API key, counts annotations
through the project webhook, and starts a training round (/webhook START_TRAINING) that yields a new
model_version.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from werkzeug.serving import make_server

from label_config.config import build_config
from label_config.grid import Grid
from label_config.names import ANNOTATED, CELL_RECT, CELL_RECT_LABEL, MODEL_LOOKS_HERE
from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from ls_backend.images import load_task_image, to_data_uri
from trainer.core.loop import TrainConfig
from trainer.core.models import build_model
from trainer.labelstudio.auth import LabelStudioAuth
from trainer.labelstudio.client import ensure_local_storage, local_file_url
from trainer.runs.checkpoint import checkpoint_path, save_checkpoint
from trainer.runs.run import Run, RunConfig

pytestmark = pytest.mark.labelstudio

CLASSES = [str(k) for k in range(10)]
GRID = Grid(28, 28, 7, 7)
AUTH = ("ls-user", "s3cret")


def first_round(run: Run) -> None:
    torch.manual_seed(0)
    meta = {"model": "small-cnn", "num_classes": 10, "in_channels": 1, "image_size": 28, "classes": CLASSES,
            "round": 0, "model_version": run.model_version(0), "grid": {"rows": 7, "cols": 7}}  # fmt: skip
    save_checkpoint(checkpoint_path(run.checkpoint_dir, 0), build_model("small-cnn", 10, 1, 28), meta)


def digit(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((28, 28)) * 255).astype(np.uint8), "L")


@contextlib.contextmanager
def serve_backend(directory, label_studio_url: str, api_key: str):
    """(URL, run, app) of a backend served over real HTTP on a free port, basic auth on."""
    run = Run.create(directory, RunConfig(train=TrainConfig(epochs=1, batch_size=128)))
    first_round(run)
    config = BackendConfig(model_dir=run.directory, label_studio_url=label_studio_url, api_key=api_key,
                           basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])  # fmt: skip
    app = create_app(config, preload=True)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", run, app
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    """(URL, run, app) of the backend with the legacy token, shared by the module's flow."""
    with serve_backend(tmp_path_factory.mktemp("backend") / "run", label_studio.url, label_studio.token) as served:
        yield served


def local_files_task(label_studio, ls_client, project_id: int, name: str) -> str:
    """A Local Files image URL on the project (Label Studio serves it only to a valid key)."""
    folder = label_studio.document_root / "backend-images"
    folder.mkdir(parents=True, exist_ok=True)
    digit(3).save(folder / name)
    ensure_local_storage(ls_client, project_id, folder, label_studio.document_root)
    return local_file_url(folder / name, label_studio.document_root)


@pytest.fixture(scope="module")
def project(ls_client, label_studio, backend):
    """A project with our config: three data-URI tasks and one Local Files task; the backend connected."""
    url, run, _ = backend
    project = ls_client.projects.create(title="backend test", label_config=build_config(CLASSES, GRID))
    images = [to_data_uri(digit(s)) for s in range(3)] + [
        local_files_task(label_studio, ls_client, project.id, "d3.png")
    ]
    ls_client.projects.import_tasks(id=project.id, request=[{"data": {"image": u, "saliency": [u]}} for u in images])
    ml = ls_client.ml.create(project=project.id, url=url, title="hitl", auth_method="BASIC_AUTH",
                             basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])  # fmt: skip
    return project, ml


def test_connect_calls_health_and_setup(ls_client, backend, project):
    _, run, _ = backend
    _, ml = project
    stored = ls_client.ml.get(id=ml.id)
    assert stored.state in ("CO", "CONNECTED"), stored.error_message
    assert stored.model_version == run.model_version(0)  # what /setup answered


def test_label_studio_requests_and_stores_predictions(ls_client, backend, project):
    _, run, app = backend
    proj, _ = project
    ls_client.actions.create(id="retrieve_tasks_predictions", project=proj.id,
                             selected_items={"all": True, "excluded": []})  # fmt: skip
    predictions = ls_client.predictions.list(project=proj.id)
    assert len(predictions) == 4  # the Local Files image was fetched from Label Studio with the key
    assert app.extensions["hitl"]["model"].predicted_tasks == 4
    for pred in predictions:
        assert pred.model_version == run.model_version(0)
        assert 0 < pred.score <= 1
        choice, regions = pred.result[0], pred.result[1:]
        assert choice["type"] == "choices" and choice["value"]["choices"][0] in CLASSES
        assert len(regions) == run.config.top_k
        # pre-filled with the neutral label: accepted unread, they are no "Irrelevant area" marks
        assert {(r["from_name"], r["to_name"], r["value"]["rectanglelabels"][0]) for r in regions} == {
            (CELL_RECT, ANNOTATED, MODEL_LOOKS_HERE)
        }


def test_predictions_for_a_local_files_image_with_either_kind_of_key(ls_client, label_studio, ls_key, tmp_path):
    """Label Studio asks the backend, which fetches the image from Label Studio with a legacy token or a personal
    access token (Bearer <access token>; before, a PAT was sent as Token <jwt> and the fetch gave 401)."""
    with serve_backend(tmp_path / "run", label_studio.url, ls_key) as (url, run, app):
        project = ls_client.projects.create(title="backend key test", label_config=build_config(CLASSES, GRID))
        image = local_files_task(label_studio, ls_client, project.id, "key.png")
        ls_client.projects.import_tasks(id=project.id, request=[{"data": {"image": image, "saliency": [image]}}])
        ls_client.ml.create(project=project.id, url=url, title="hitl", auth_method="BASIC_AUTH",
                            basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])  # fmt: skip
        ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                                 selected_items={"all": True, "excluded": []})  # fmt: skip
        (prediction,) = ls_client.predictions.list(project=project.id)
        assert prediction.model_version == run.model_version(0) and len(prediction.result) == 1 + run.config.top_k
        assert app.extensions["hitl"]["model"].predicted_tasks == 1


def test_a_rejected_access_token_is_refreshed_once(ls_client, label_studio, project):
    """Label Studio answers 401 to an access token we believed valid: the fetch refreshes and tries again."""
    proj, _ = project
    image = local_files_task(label_studio, ls_client, proj.id, "retry.png")
    auth = LabelStudioAuth(label_studio.url, label_studio.personal_access_token())
    auth._access, auth._access_exp = (
        "eyJ4IjoxfQ.eyJ4IjoxfQ.c2ln",
        time.time() + 3600,
    )  # as a restarted server would see it
    picture = load_task_image(image, label_studio_url=label_studio.url, auth=auth)
    assert picture.size == (28, 28) and auth.refreshes == 1


def test_annotations_reach_the_webhook(ls_client, backend, project):
    url, _, _ = backend
    proj, _ = project
    # The webhook Label Studio creates for a backend carries no basic auth: add it as a user must.
    hook = next(w for w in ls_client.webhooks.list(project=str(proj.id)) if w.url == f"{url}/webhook")
    token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    ls_client.webhooks.update(id=hook.id, headers={"Authorization": f"Basic {token}"})
    task = next(iter(ls_client.tasks.list(project=proj.id)))
    cell = {"x": 0, "y": 0, "width": 100 / 7, "height": 100 / 7, "rotation": 0, "rectanglelabels": [CELL_RECT_LABEL]}
    ls_client.annotations.create(id=task.id, result=[{"from_name": CELL_RECT, "to_name": ANNOTATED,
                                                      "type": "rectanglelabels", "value": cell}])  # fmt: skip
    training = _poll(url, lambda h: h["training"]["annotation_events"] >= 1, timeout=30)["training"]
    assert training["state"] == "idle" and training["rounds"] == 0  # counted; no auto-train threshold set


def test_start_training_through_label_studio(ls_client, backend, project):
    url, run, _ = backend
    _, ml = project
    began = time.monotonic()
    ls_client.ml.train(id=ml.id)
    assert time.monotonic() - began < 5  # the webhook answered at once; the round runs in the background
    health = _poll(url, lambda h: h["training"]["state"] == "idle" and h["training"]["rounds"] >= 1, timeout=300)
    assert health["training"]["last_error"] is None
    assert health["model_version"] == health["training"]["last_model_version"] == run.model_version(1)
    versions = requests.get(f"{url}/versions", auth=AUTH, timeout=5).json()["versions"]
    assert versions == [run.model_version(0), run.model_version(1)]


def test_label_studio_without_basic_auth_is_refused(backend):
    url, _, _ = backend
    assert requests.get(f"{url}/health", timeout=5).status_code == 401
    token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    assert requests.get(f"{url}/health", headers={"Authorization": f"Basic {token}"}, timeout=5).status_code == 200


def _poll(url: str, done, *, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = requests.get(f"{url}/health", auth=AUTH, timeout=5).json()
        if done(health) or time.monotonic() > deadline:
            assert done(health), health
            return health
        time.sleep(0.5)
