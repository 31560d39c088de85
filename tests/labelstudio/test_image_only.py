"""Tasks that carry only the image, in a project made by ``hitl push``, against the real server and browser.

Label Studio 1.23 requires every key an object reads with ``value`` in a task's data
(``tasks/validation.py``: '"saliency" key is expected in task data'); our config reads the overlay with
``valueList``, which it does not check, so such tasks import, and the backend's ``/predict`` attaches the overlay.
"""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.core.api_error import ApiError
from PIL import Image
from werkzeug.serving import make_server

from label_config.config import VIEW_CONTROLS, display_px
from label_config.names import IMAGE, IMAGE_KEY, SALIENCY, SALIENCY_KEY
from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from tests.browser import PICTURES, labelling_page
from trainer.explain.overlay import image_to_pil
from trainer.labelstudio.client import connect, local_file_url
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.push import label_config_for, push

pytestmark = pytest.mark.labelstudio

# docs/image-only-task.png is a copy of this, committed by hand: a test run never changes a tracked file.
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "image-only-task.png"


def mean_rgb(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def decode_data_uri(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


@contextlib.contextmanager
def serve_backend(run, label_studio_url: str, api_key: str):
    """(URL, app) of the run's backend over real HTTP on a free port (loopback only, no credentials)."""
    app = create_app(BackendConfig(model_dir=run.directory, label_studio_url=label_studio_url, api_key=api_key),
                     preload=True)  # fmt: skip
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        server.server_close()


def image_only_task(run, client, project_id: int, document_root: Path, sample_id: int) -> int:
    """Import a task as a person would, with the image only (a Local Files URL next to the pushed ones)."""
    folder = document_root / run.name / "imported"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"hand-{sample_id}.png"
    image_to_pil(run.datasets[0][sample_id][0], display_px(run.grid)).convert("RGB").save(path)
    response = client.projects.import_tasks(
        id=project_id, request=[{"data": {IMAGE_KEY: local_file_url(path, document_root)}}], return_task_ids=True
    )
    (task_id,) = response.task_ids
    return task_id


def predict_all(client, project_id: int, backend_url: str) -> None:
    """Connect the backend and make Label Studio itself ask it for every task's prediction."""
    client.ml.create(project=project_id, url=backend_url, title="hitl")
    client.actions.create(id="retrieve_tasks_predictions", project=project_id,
                          selected_items={"all": True, "excluded": []})  # fmt: skip


def test_label_studio_accepts_the_config_with_zoom_brightness_and_contrast(ls_client, fresh_run):
    project = ls_client.projects.create(
        title=f"view controls {fresh_run.name}", label_config=label_config_for(fresh_run)
    )
    stored = ls_client.projects.get(id=project.id).label_config
    images = {el.get("name"): el.attrib for el in ET.fromstring(stored).iter("Image")}
    for name in (IMAGE, SALIENCY):
        assert {k: images[name].get(k) for k in VIEW_CONTROLS} == VIEW_CONTROLS, name


def test_label_studio_requires_value_keys_but_not_value_list_keys(ls_client, fresh_run):
    """Why the overlay is a valueList: the same config with value="$saliency" refuses a task without it."""
    ours = label_config_for(fresh_run)
    required = ours.replace('valueList="$saliency"', 'value="$saliency"')
    assert required != ours
    task = {"data": {IMAGE_KEY: "/data/local-files/?d=x.png"}}
    for xml, accepted in ((ours, True), (required, False)):
        project = ls_client.projects.create(title=f"valueList {fresh_run.name} {accepted}", label_config=xml)
        if accepted:
            ls_client.projects.import_tasks(id=project.id, request=[task])
            assert len(list(ls_client.tasks.list(project=project.id))) == 1
        else:
            with pytest.raises(ApiError) as err:
                ls_client.projects.import_tasks(id=project.id, request=[task])
            assert err.value.status_code == 400 and '"saliency" key is expected in task data' in str(err.value.body)


def test_a_pushed_project_takes_image_only_tasks_and_the_backend_attaches_their_overlay(
    fresh_run, label_studio, ls_key
):  # fmt: skip
    run, client = fresh_run, connect(label_studio.url, ls_key)
    link = connect_project(run, client, label_studio.url, document_root=label_studio.document_root)
    (pushed,) = push(run, client, link.project_id, n=1, document_root=link.document_root)
    assert len(client.tasks.get(id=pushed).data[SALIENCY_KEY]) == 1
    task_id = image_only_task(run, client, link.project_id, label_studio.document_root, sample_id=7)
    assert SALIENCY_KEY not in client.tasks.get(id=task_id).data

    with serve_backend(run, label_studio.url, ls_key) as (url, app):
        predict_all(client, link.project_id, url)
        writer = app.extensions["hitl"]["model"].overlays
        assert writer.wait(60) and (writer.attached, writer.failed) == (1, 0)  # the pushed task kept its own
    task = client.tasks.get(id=task_id)
    (overlay,) = task.data[SALIENCY_KEY]
    with decode_data_uri(overlay) as picture:
        assert picture.mode == "RGB" and picture.size == (display_px(run.grid),) * 2
    assert task.data[IMAGE_KEY].startswith("/data/local-files/")  # the rest of the data written back as it was
    (prediction,) = client.predictions.list(task=task_id)
    assert task.data["model_version"] == prediction.model_version  # the model that made the overlay
    # The page's headers read "Sample - | round -", "Label: - | model: ...", never "undefined".
    assert {k: task.data[k] for k in ("sample_id", "round", "label")} == {"sample_id": "-", "round": "-", "label": "-"}
    assert task.data["prediction"] in run.classes


@pytest.mark.browser
def test_an_image_only_task_shows_its_overlay_in_the_browser(fresh_run, ls_client, label_studio, tmp_path):
    run = fresh_run
    link = connect_project(run, ls_client, label_studio.url, document_root=label_studio.document_root)
    push(run, ls_client, link.project_id, n=1, document_root=link.document_root)
    task_id = image_only_task(run, ls_client, link.project_id, label_studio.document_root, sample_id=11)
    with serve_backend(run, label_studio.url, label_studio.token) as (url, app):
        predict_all(ls_client, link.project_id, url)
        assert app.extensions["hitl"]["model"].overlays.wait(60)

    shot = tmp_path / "image-only-task.png"
    with labelling_page(label_studio, link.project_id, task_id, height=900) as page:
        pictures = page.evaluate(PICTURES)
        page.screenshot(path=str(shot))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT)

    # Both pictures decoded at display size, and the second is the overlay the backend attached, not the image.
    px = display_px(run.grid)
    assert [(p["width"], p["height"]) for p in pictures] == [(px, px), (px, px)]
    data = ls_client.tasks.get(id=task_id).data
    with decode_data_uri(data[SALIENCY_KEY][0]) as overlay:
        np.testing.assert_allclose(pictures[1]["mean"], mean_rgb(overlay), atol=1.0)
        assert np.abs(np.asarray(pictures[0]["mean"]) - mean_rgb(overlay)).max() > 5
