"""Secrets audit: the Label Studio token goes to Label Studio's origin and nowhere else.

A push, a pull, the backend's /predict (which fetches images from Label Studio with the token), failing fetches,
a failing training round and an unreachable server, all with one known token; then the token is looked for in
everything they leave behind: DEBUG logs, error texts, the tasks in Label Studio, checkpoints, the ledger, every
file of the run directory, /health and /metrics.
"""

from __future__ import annotations

import json
import logging
import sqlite3

import pytest
import torch

from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from trainer.app.lsserver import free_port
from trainer.labelstudio.annotator import simulate_annotator
from trainer.labelstudio.client import connect
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import label_config_for, push
from trainer.labelstudio.retry import LabelStudioUnavailable, RetryPolicy

pytestmark = pytest.mark.labelstudio


def strings_in(obj) -> list[str]:
    """Every string (and key) inside a loaded checkpoint, as text."""
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in strings_in(v)]
    if isinstance(obj, torch.Tensor):
        return []
    return [str(obj)]


def test_the_token_appears_nowhere(fresh_run, label_studio, caplog):
    caplog.set_level(logging.DEBUG)
    run, token = fresh_run, label_studio.token
    errors: list[str] = []

    client = connect(label_studio.url, token)
    project = connect_project(run, client, label_studio.url, document_root=label_studio.document_root).project_id
    task_ids = push(run, client, project, document_root=label_studio.document_root)
    simulate_annotator(run, client, project, kind="rect")
    assert pull(run, client, project).new == len(task_ids)

    app = create_app(BackendConfig(model_dir=run.directory, label_studio_url=label_studio.url, api_key=token))
    web = app.test_client()
    task = client.tasks.get(id=task_ids[0])
    body = {
        "tasks": [{"id": task.id, "data": task.data}],
        "label_config": label_config_for(run),
        "project": f"{project}.1",
    }
    answer = web.post("/predict", json=body)
    assert answer.status_code == 200, answer.json  # the image came from Label Studio, with the token
    responses = [answer.get_data(as_text=True)]
    image_key = next(k for k, v in task.data.items() if str(v).startswith("/data/local-files/"))
    for url, status in (("/data/local-files/?d=nowhere/missing.png", 502), ("http://example.invalid/a.png", 422)):
        failed = web.post("/predict", json={**body, "tasks": [{"id": 1, "data": {**task.data, image_key: url}}]})
        assert failed.status_code == status, failed.json
        errors.append(failed.json["error"])
    # a project Label Studio no longer has, connected as Label Studio connects one: the round's pull fails
    assert web.post("/setup", json={"project": "987654.1", "schema": label_config_for(run)}).status_code == 200
    started = web.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 987654}})
    assert started.status_code == 201
    assert app.extensions["hitl"]["job"].wait(120)
    responses += [web.get(path).get_data(as_text=True) for path in ("/health", "/metrics")]
    assert "404" in json.loads(responses[-2])["training"]["last_error"]  # the round failed: its error is shown

    down = connect(f"http://127.0.0.1:{free_port()}", token, retry=RetryPolicy(tries=2, base_s=0.01))
    with pytest.raises(LabelStudioUnavailable) as err:
        push(run, down, project, document_root=label_studio.document_root)
    errors.append(str(err.value))
    with pytest.raises(Exception) as err:  # Label Studio's own refusal, as the SDK reports it
        client.projects.get(id=987654)
    errors.append(str(err.value))

    places = {
        "logs": caplog.text,
        "error texts": "\n".join(errors),
        "backend answers": "\n".join(responses),
        "tasks in Label Studio": json.dumps(
            [t.dict() for t in client.tasks.list(project=project, fields="all")], default=str
        ),  # fmt: skip
        "checkpoints": "\n".join(
            s for p in run.checkpoint_dir.glob("*.pt") for s in strings_in(torch.load(p, weights_only=True))
        ),  # fmt: skip
    }
    with sqlite3.connect(run.directory / "ledger.sqlite") as db:
        places["ledger"] = "\n".join(db.iterdump())
    assert caplog.records and places["ledger"] and places["checkpoints"]  # there was something to search
    for name, text in places.items():
        assert token not in text, f"the token leaked into the {name}"
        # Label Studio answers the token with a session cookie: the SDK's errors printed it (into /health)
        assert name == "logs" or "sessionid=" not in text, f"a Label Studio session cookie leaked into the {name}"
    files = [p for p in run.directory.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        assert token.encode() not in path.read_bytes(), f"the token leaked into {path}"
        assert b"sessionid=" not in path.read_bytes(), f"a session cookie leaked into {path}"
