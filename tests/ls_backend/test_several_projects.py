"""Several projects on one backend (MODEL_DIR a folder of runs), in the real Label Studio.

Two teams' projects on the same images with opposite labels, one backend connected to both through Label Studio's
API, "Start Training" pressed through Label Studio's API in each: each project gets its own run, made from its own
60 labels by a worker process, with its own model_version and weights; Label Studio's "Retrieve Predictions" stores,
for each project, predictions of that project's model only. A restarted backend trains the rounds a previous one
left queued or cut off.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from werkzeug.serving import make_server

from ls_backend.app import JOB_STATE_FILE, create_app
from ls_backend.config import BackendConfig
from ls_backend.model import RUN_DEFAULTS_FILE
from tests.labelstudio.test_snapshot import CLASSES, LABELLED, dataset_labels, make_team_project
from tests.ls_backend.test_with_label_studio import _poll
from trainer.runs.checkpoint import load_checkpoint
from trainer.runs.run import Run

pytestmark = pytest.mark.labelstudio


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


def test_two_projects_train_and_predict_with_their_own_models(label_studio, ls_client, tmp_path, one_torch_thread):
    home = tmp_path / "models"
    home.mkdir()
    (home / RUN_DEFAULTS_FILE).write_text(json.dumps({"seed": 3, "train.epochs": 3}))
    a, given_a, _ = make_team_project(label_studio, ls_client)
    b, given_b, _ = make_team_project(label_studio, ls_client, flip=True)  # the same pictures, the other labels
    with backend(home, label_studio, max_models=1) as (url, app):
        model = app.extensions["hitl"]["model"]
        ml_a = ls_client.ml.create(project=a, url=url, title="hitl")
        ml_b = ls_client.ml.create(project=b, url=url, title="hitl")
        assert not (home / f"project-{a}").exists()  # connected, not trained: no run until Start Training
        ls_client.ml.train(id=ml_a.id)  # "Start Training", through Label Studio's API
        trained(url, 1)
        ls_client.ml.train(id=ml_b.id)
        health = trained(url, 2)
        run_a, run_b = Run.open(home / f"project-{a}"), Run.open(home / f"project-{b}")
        assert dataset_labels(run_a) == given_a and dataset_labels(run_b) == given_b  # exactly each team's 60 labels
        assert len(given_a) == LABELLED and run_a.classes == CLASSES
        versions = {p: health["projects"][str(p)]["model_version"] for p in (a, b)}
        assert versions == {a: run_a.model_version(0), b: run_b.model_version(0)} and versions[a] != versions[b]
        weights_a = load_checkpoint(run_a.checkpoints()[-1][1])[0].state_dict()
        weights_b = load_checkpoint(run_b.checkpoints()[-1][1])[0].state_dict()
        assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a)

        for project, given in ((a, given_a), (b, given_b)):
            ls_client.actions.create(id="retrieve_tasks_predictions", project=project,
                                     selected_items={"all": True, "excluded": []})  # fmt: skip
            predictions = {p.task: p for p in ls_client.predictions.list(project=project)}
            assert len(predictions) == LABELLED + 5  # every task, the unlabelled ones too
            assert {p.model_version for p in predictions.values()} == {versions[project]}
            said = {t: p.result[0]["value"]["choices"][0] for t, p in predictions.items() if t in given}
            # each project's model learnt its own team's naming of the same pictures
            agree = np.mean([said[t] == CLASSES[given[t]] for t in said])
            assert agree >= 0.8, (project, agree)
        # MAX_MODELS=1: predicting for B unloaded A's model; the next prediction for A loads it again
        assert not model.model_for_status(a).loaded and model.model_for_status(b).loaded
        assert app.test_client().get(f"/versions?project={a}").json == {"versions": [versions[a]]}

    # A backend that stopped while it trained project A, with B's round queued: the next one trains both.
    state = {"state": "running", "project": a, "started_at": 0, "pending": [b], "pid": 1}
    (home / JOB_STATE_FILE).write_text(json.dumps(state))
    with backend(home, label_studio) as (url, app):
        health = trained(url, 2)
        assert health["projects"][str(a)]["model_version"] == run_a.model_version(1)
        assert health["projects"][str(b)]["model_version"] == run_b.model_version(1)
        assert json.loads((home / JOB_STATE_FILE).read_text())["pending"] == []
