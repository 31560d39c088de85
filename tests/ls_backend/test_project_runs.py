"""A backend over a folder of runs (one per project), without Label Studio: which run answers which project, the
models kept loaded, the training queue across a restart, and the settings of a new project's run."""

from __future__ import annotations

import json
import threading

import pytest

from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from ls_backend.images import to_data_uri
from ls_backend.jobs import TrainingJob
from tests.ls_backend.stock import STOCK, picture, stock_run
from trainer.labelstudio.project_run import check_defaults


def setup(client, project: int):
    return client.post("/setup", json={"project": f"{project}.1700000000", "schema": STOCK})


def predict(client, project: int):
    tasks = [{"id": 1, "data": {"image": to_data_uri(picture(1))}}]
    return client.post("/predict", json={"tasks": tasks, "project": f"{project}.1", "label_config": STOCK})


@pytest.fixture
def home(tmp_path):
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


def test_each_project_is_answered_by_its_own_run(home):
    run5, run6 = stock_run(home / "project-5"), stock_run(home / "project-6", top_k=1)
    app = create_app(BackendConfig(model_dir=home, max_models=1))
    client, model = app.test_client(), app.extensions["hitl"]["model"]
    for project in (5, 6):
        assert setup(client, project).json == {"model_version": f"project-{project}-r000"}
    assert predict(client, 5).json["results"][0]["model_version"] == run5.model_version(0)
    assert predict(client, 6).json["results"][0]["model_version"] == run6.model_version(0)
    assert model.model_for_status(6).loaded and not model.model_for_status(5).loaded  # MAX_MODELS=1
    health = client.get("/health").json
    assert health["model_version"] is None
    assert {p: v["model_version"] for p, v in health["projects"].items()} == {"5": "project-5-r000",
                                                                             "6": "project-6-r000"}  # fmt: skip
    assert client.get("/versions?project=6").json == {"versions": [run6.model_version(0)]}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'hitl_rounds_trained{project="5"} 1.0' in metrics and "hitl_models_loaded 1.0" in metrics


def test_a_project_without_a_run_yet_or_not_served_is_told_so(home):
    client = create_app(BackendConfig(model_dir=home)).test_client()
    assert client.post("/setup", json={"schema": STOCK}).status_code == 400  # which project's run?
    assert setup(client, 7).json == {"model_version": None}  # connected; its run comes with Start Training
    assert json.loads((home / "backend-projects.json").read_text()) == {"7": STOCK}
    answer = predict(client, 7)
    assert answer.status_code == 503 and "no trained model yet for project 7" in answer.json["error"]
    answer = predict(client, 8)
    assert answer.status_code == 403 and "project 8 is not served" in answer.json["error"]
    stock_run(home / "project-8")  # a run directory alone does not make a project served
    assert predict(client, 8).status_code == 403
    webhook = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 8}})
    assert webhook.status_code == 403 and not (home / "project-9").exists()


def test_a_run_per_project_needs_label_studio_to_train(home):
    app = create_app(BackendConfig(model_dir=home))
    client, job = app.test_client(), app.extensions["hitl"]["job"]
    setup(client, 7)
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}}).status_code == 201
    assert job.wait(60)
    assert "needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in job.status()["last_error"]


def test_the_queue_and_a_cut_off_round_survive_a_restart(tmp_path):
    state = tmp_path / "job.json"
    state.write_text(json.dumps({"state": "running", "project": 3, "started_at": 0, "pending": [5, 7], "pid": 1}))
    trained = []
    job = TrainingJob(lambda project: trained.append(project) or f"v{project}", state_path=state)
    assert job.status()["queued_rounds"] == 3 and job.status()["last_error"].startswith("Interrupted")
    assert job.resume() and job.wait(10)
    assert trained == [3, 5, 7] and job.status()["last_error"] is None
    assert json.loads(state.read_text())["pending"] == [] and not job.resume()


def test_the_queue_is_written_as_it_grows(tmp_path):
    state, gate = tmp_path / "job.json", threading.Event()
    job = TrainingJob(lambda project: gate.wait(10) and "v", state_path=state)
    job.trigger(1)
    job.trigger(2)
    job.trigger(3)
    assert json.loads(state.read_text())["pending"] == [2, 3]  # a restart now would train 2 and 3
    gate.set()
    assert job.wait(10)


def test_new_project_run_settings_are_checked():
    assert check_defaults({"image_size": 64, "train.epochs": 2}) == {"image_size": 64, "train.epochs": 2}
    with pytest.raises(ValueError, match=r"unknown run defaults \['epochs'\]"):
        check_defaults({"epochs": 2})
    with pytest.raises(ValueError, match="must be a JSON object"):
        check_defaults([1])
