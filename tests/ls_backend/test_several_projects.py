"""Several projects on one backend (MODEL_DIR a folder of runs), in the real Label Studio.

Two teams' projects made from Label Studio's stock image-classification template, each over its own two classes
(A/B and Cat/Dog; the same pictures, the second team naming them the other way round): 65 tasks each, uploads and
Local Files, exactly 60 of them labelled through the API. One backend over a folder of runs (MAX_MODELS=1, a new
run's settings in run-defaults.json) is connected to both through Label Studio's API, and "Start Training" is pressed
through Label Studio's API in each. The tests share that set-up (Label Studio's time) and run in file order:

1. each project's run is made from exactly its own 60 labels, and the backend serves its new model_version;
2. the two runs' model_versions and weights differ, and Label Studio stores, for each project, predictions of that
   project's model only (its version, its classes, its team's naming), one model unloaded and loaded again;
3. a label changed in Label Studio is what the project's next round trains on, and /predict answers with the new
   model_version;
4. a restarted backend trains the rounds a previous one left queued or cut off.
"""

from __future__ import annotations

import contextlib
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from werkzeug.serving import make_server

from ls_backend.app import JOB_STATE_FILE, create_app
from ls_backend.config import BackendConfig
from ls_backend.model import RUN_DEFAULTS_FILE
from tests.labelstudio.test_snapshot import LABELLED, UNLABELLED, choice, dataset_labels, make_team_project
from tests.ls_backend.stock import stock_template
from tests.ls_backend.test_with_label_studio import _poll
from trainer.data.snapshot import read_manifest
from trainer.runs.checkpoint import load_checkpoint
from trainer.runs.run import Run

pytestmark = pytest.mark.labelstudio

CLASSES_A, CLASSES_B = ["A", "B"], ["Cat", "Dog"]
# TINY_RUN-like: 28 px grey, a small CNN; 3 epochs of 48 images are 3 steps, enough to learn left from right
DEFAULTS = {"seed": 3, "image_size": 28, "channels": 1, "model": "small-cnn", "train.epochs": 3}


@contextmanager
def backend(home, label_studio, **settings):
    """(URL, app) of a backend over a folder of runs, over real HTTP on a free port (loopback, no credentials)."""
    config = BackendConfig(model_dir=home, label_studio_url=label_studio.url, api_key=label_studio.token, **settings)
    app = create_app(config, preload=True)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        server.server_close()


def trained(url: str, rounds: int) -> dict:
    health = _poll(url, lambda h: h["training"]["state"] == "idle" and h["training"]["rounds"] >= rounds, timeout=300)
    assert health["training"]["last_error"] is None, health["training"]
    return health


@dataclass
class Team:
    """A team's project: its classes, config, the labels given (task id -> class index) and its unlabelled tasks."""

    project: int
    classes: list[str]
    config: str
    given: dict[int, int]
    unlabelled: list[int]
    ml: int = 0  # the backend's id in Label Studio's project settings


@dataclass
class Served:
    home: Path
    url: str
    app: object
    a: Team
    b: Team
    runs_before_training: list[bool]
    health: dict
    stop: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def run(self, team: Team) -> Run:
        return Run.open(self.home / f"project-{team.project}")


def team(label_studio, ls_client, classes: list[str], *, flip: bool = False) -> Team:
    config = stock_template(classes)
    project, given, unlabelled = make_team_project(label_studio, ls_client, config=config, classes=classes, flip=flip)
    return Team(project, classes, config, given, unlabelled)


@pytest.fixture(scope="module")
def served(label_studio, ls_client, tmp_path_factory):
    """Two stock-template projects on one backend over a folder of runs, "Start Training" pressed once in each."""
    home = tmp_path_factory.mktemp("models")
    (home / RUN_DEFAULTS_FILE).write_text(json.dumps(DEFAULTS))
    a = team(label_studio, ls_client, CLASSES_A)
    b = team(label_studio, ls_client, CLASSES_B, flip=True)
    stop = contextlib.ExitStack()
    with stop:
        url, app = stop.enter_context(backend(home, label_studio, max_models=1))
        for t in (a, b):
            t.ml = ls_client.ml.create(project=t.project, url=url, title="hitl").id
        before = [(home / f"project-{t.project}").exists() for t in (a, b)]
        ls_client.ml.train(id=a.ml)  # "Start Training", through Label Studio's API
        trained(url, 1)
        ls_client.ml.train(id=b.ml)
        yield Served(home, url, app, a, b, before, trained(url, 2), stop)


def retrieve_predictions(ls_client, project: int) -> dict[int, object]:
    """Label Studio's own "Retrieve Predictions" for every task; task id -> its newest stored prediction."""
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project,
                             selected_items={"all": True, "excluded": []})  # fmt: skip
    newest: dict[int, object] = {}
    for p in sorted(ls_client.predictions.list(project=project), key=lambda p: p.id):
        newest[p.task] = p
    return newest


def test_start_training_makes_each_project_a_run_from_exactly_its_labels(served):
    assert served.runs_before_training == [False, False]  # connected, not trained: no run until Start Training
    for t in (served.a, served.b):
        run = served.run(t)
        assert dataset_labels(run) == t.given and len(t.given) == LABELLED  # exactly the 60 labelled tasks
        assert run.classes == t.classes and run.config.dataset == f"labelstudio:{t.project}"
        manifest = read_manifest(run.directory)
        assert manifest["project_id"] == t.project and manifest["revision"] == 1
        assert not {task["task_id"] for task in manifest["tasks"]} & set(t.unlabelled)
        (record,) = run.history()
        assert record["data_revision"] == 1 and record["train_images"] == len(run.datasets[0])
        assert served.health["projects"][str(t.project)]["model_version"] == f"project-{t.project}-r000"


def test_two_projects_have_their_own_model_versions_weights_and_predictions(served, ls_client):
    a, b = served.a, served.b
    model = served.app.extensions["hitl"]["model"]
    run_a, run_b = served.run(a), served.run(b)
    versions = {a.project: run_a.model_version(0), b.project: run_b.model_version(0)}
    assert versions[a.project] != versions[b.project]
    weights_a = load_checkpoint(run_a.checkpoints()[-1][1])[0].state_dict()
    weights_b = load_checkpoint(run_b.checkpoints()[-1][1])[0].state_dict()
    assert weights_a.keys() == weights_b.keys()  # the same architecture and shapes: only training tells them apart
    assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a)

    for t in (a, b):
        predictions = retrieve_predictions(ls_client, t.project)
        assert len(predictions) == LABELLED + UNLABELLED  # every task, the unlabelled ones too
        assert {p.model_version for p in predictions.values()} == {versions[t.project]}
        said = {task: p.result[0]["value"]["choices"][0] for task, p in predictions.items()}
        assert set(said.values()) <= set(t.classes)  # this project's classes, never the other's
        # each project's model learnt its own team's naming of the same pictures
        agree = np.mean([said[task] == t.classes[label] for task, label in t.given.items()])
        assert agree >= 0.8, (t.project, agree)
    # MAX_MODELS=1: predicting for B unloaded A's model; a prediction for A loads it again, and unloads B's
    assert not model.model_for_status(a.project).loaded and model.model_for_status(b.project).loaded
    task = ls_client.tasks.get(id=a.unlabelled[0])
    answer = requests.post(f"{served.url}/predict", timeout=60, json={
        "tasks": [{"id": task.id, "data": task.data}], "project": a.project, "label_config": a.config,
    }).json()  # fmt: skip
    (prediction,) = answer["results"]
    assert prediction["model_version"] == versions[a.project]
    assert prediction["result"][0]["value"]["choices"][0] in a.classes
    assert model.model_for_status(a.project).loaded and not model.model_for_status(b.project).loaded


def test_a_label_changed_in_label_studio_is_what_the_next_round_trains_on(served, ls_client):
    a = served.a
    run = served.run(a)
    train = run.datasets[0]
    sample_id = 5
    task_id, old = train.task_ids[sample_id], int(train.labels[sample_id])
    (annotation,) = ls_client.annotations.list(id=task_id)
    ls_client.annotations.update(id=annotation.id, result=[choice(a.classes[1 - old])])
    ls_client.ml.train(id=a.ml)  # "Start Training" again
    health = trained(served.url, 3)

    run = served.run(a)
    assert int(run.datasets[0].labels[sample_id]) == 1 - old and run.datasets[0].task_ids[sample_id] == task_id
    (entry,) = [t for t in read_manifest(run.directory)["tasks"] if t["task_id"] == task_id]
    assert entry["label"] == 1 - old
    first, second = run.history()
    assert (first["data_revision"], second["data_revision"]) == (1, 2)  # the round trained on the changed snapshot
    assert second["train_images"] == first["train_images"]  # the same tasks; one label changed
    new_version = run.model_version(1)
    assert health["projects"][str(a.project)]["model_version"] == new_version == f"project-{a.project}-r001"
    assert len(served.run(served.b).history()) == 1  # the other project's run was not trained
    predictions = retrieve_predictions(ls_client, a.project)
    assert {p.model_version for p in predictions.values()} == {new_version}


def test_a_restarted_backend_trains_the_rounds_left_queued_or_cut_off(served, label_studio):
    served.stop.close()  # the backend stops
    a, b = served.run(served.a), served.run(served.b)
    rounds = {served.a.project: len(a.history()), served.b.project: len(b.history())}
    # As a backend leaves it when it stops while it trains project A, with B's round queued: the next one trains both.
    state = {"state": "running", "project": served.a.project, "started_at": 0, "pending": [served.b.project], "pid": 1}
    (served.home / JOB_STATE_FILE).write_text(json.dumps(state))
    with backend(served.home, label_studio) as (url, _):
        health = trained(url, 2)
    for t, run in ((served.a, a), (served.b, b)):
        assert health["projects"][str(t.project)]["model_version"] == run.model_version(rounds[t.project])
    assert json.loads((served.home / JOB_STATE_FILE).read_text())["pending"] == []
