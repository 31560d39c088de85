"""Secrets audit: the Label Studio token goes to Label Studio's origin and nowhere else.

A push, a pull, the backend's /predict (which fetches images from Label Studio with the token), failing fetches,
a failing training round and an unreachable server, all with one known token; then the token is looked for in
everything they leave behind: DEBUG logs, error texts, the tasks in Label Studio, checkpoints, the ledger, every
file of the run directory, /health and /metrics.

Then a project in an S3 bucket (a real Label Studio S3 import storage over moto, ``tests.s3``): the token never
reaches the storage's host, and the storage's secret key never leaves Label Studio.
"""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import threading

import pytest
import torch
from werkzeug.serving import make_server

from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from tests.ls_backend.stock import STOCK_CLASSES, stock_run
from tests.s3 import BUCKET, SECRET_ACCESS_KEY, Seen, choice, s3_project, start_proxy
from trainer.app.cli import main
from trainer.app.lsserver import free_port
from trainer.labelstudio.annotator import simulate_annotator
from trainer.labelstudio.client import connect
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import label_config_for, push
from trainer.labelstudio.retry import LabelStudioUnavailable, RetryPolicy
from trainer.runs.run import Run

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


def recording(app, seen: list[str]):
    """``app`` (WSGI) recording every request it receives and every answer it gives, as text."""

    def wsgi(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        headers = "\n".join(f"{k}: {v}" for k, v in environ.items() if k.startswith("HTTP_"))
        answer = app(environ, start_response)
        try:
            out = b"".join(answer)
        finally:
            getattr(answer, "close", lambda: None)()
        seen.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ.get('QUERY_STRING', '')}\n"
                    f"{headers}\n{body.decode(errors='replace')}\n{out.decode(errors='replace')}")  # fmt: skip
        return [out]

    return wsgi


def test_cloud_storage_keeps_each_secret_with_its_owner(label_studio, ls_client, s3_server, tmp_path, monkeypatch,
                                                        capsys, caplog):  # fmt: skip
    """An S3 project read by the backend (Label Studio's own Retrieve Predictions) and by ``hitl init``: Label
    Studio's token goes only to Label Studio (a recording proxy in front of it sees every presign carry it), never to
    the storage's host (a recording proxy in front of moto sees every request that reaches it); the storage's secret
    key never leaves Label Studio: not in what the backend receives, answers or logs, nor in what the trainer prints
    or keeps, nor on the wire to the storage."""
    caplog.set_level(logging.DEBUG)
    token, secret = label_studio.token, SECRET_ACCESS_KEY
    project = s3_project(label_studio, ls_client, s3_server, "secrets", ["0.png", "1.png", "2.png", "3.png"])
    for n, task_id in enumerate(sorted(project.tasks)):
        ls_client.annotations.create(id=task_id, result=[choice(STOCK_CLASSES[n % 3])])
    at_storage = len(s3_server.seen)
    ls_seen: list[Seen] = []
    ls_proxy = start_proxy(label_studio.url, ls_seen)  # the Label Studio URL the backend and the trainer are given
    ls_url = f"http://127.0.0.1:{ls_proxy.server_port}"
    backend_seen: list[str] = []
    run = stock_run(tmp_path / "run")
    app = create_app(BackendConfig(model_dir=run.directory, label_studio_url=ls_url, api_key=token,
                                   image_networks=("127.0.0.0/8",)), preload=True)  # fmt: skip
    server = make_server("127.0.0.1", 0, recording(app, backend_seen), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ml = ls_client.ml.create(project=project.project_id, url=f"http://127.0.0.1:{server.server_port}", title="s")
        ls_client.actions.create(id="retrieve_tasks_predictions", project=project.project_id,
                                 selected_items={"all": True, "excluded": []})  # fmt: skip
        assert sorted(p.task for p in ls_client.predictions.list(project=project.project_id)) == sorted(project.tasks)
        ls_client.ml.delete(id=ml.id)
        monkeypatch.setenv("LABEL_STUDIO_URL", ls_url)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
        snapshot = tmp_path / "snapshot-run"
        assert main(["init", str(snapshot), "--dataset", f"labelstudio:{project.project_id}", "--epochs", "1"]) == 0
        assert len(Run.open(snapshot).datasets[0]) + len(Run.open(snapshot).datasets[1]) == 4
    finally:
        server.shutdown()
        server.server_close()
        ls_proxy.shutdown()
        ls_proxy.server_close()
    printed = capsys.readouterr()

    # At the storage's host: the presigned GETs of the backend (python-requests) and the trainer (python-httpx), each
    # signed in its query, with no Authorization header and no cookie; nothing that reached it holds the token.
    storage = s3_server.seen[at_storage:]
    gets = [r for r in storage if r.method == "GET" and r.path.startswith(f"/{BUCKET}/secrets/")]
    agents = sorted({r.headers.get("User-Agent", "").split("/")[0] for r in gets})
    assert len(gets) == 8 and agents == ["python-httpx", "python-requests"], [r.text() for r in gets]
    for request in gets:
        assert "X-Amz-Signature=" in request.path
        assert not {"authorization", "cookie"} & {k.lower() for k in request.headers}, request.text()
    for request in storage:
        assert token not in request.text() and "Token " not in request.text(), request.text()
        assert secret not in request.text()  # Label Studio's own S3 calls sign with it, never send it
    # At Label Studio: every presign carried the token (and only Label Studio's requests carry it).
    presigns = [r for r in ls_seen if r.path.startswith("/tasks/") and "/presign/?fileuri=" in r.path]
    assert len(presigns) == 8
    assert all(r.headers.get("Authorization") == f"Token {token}" for r in presigns)
    # The storage's secret key: not in anything the backend received, answered or logged, nor the trainer printed
    # or wrote.
    assert backend_seen and any("/predict" in r for r in backend_seen)
    places = {
        "requests to and answers of the backend": "\n".join(backend_seen),
        "logs": caplog.text,
        "requests to Label Studio": "\n".join(r.text() for r in ls_seen),
        "hitl init's output": printed.out + printed.err,
    }
    for name, text in places.items():
        assert secret not in text, f"the storage's secret key reached the {name}"
    for path in [p for d in (run.directory, snapshot) for p in d.rglob("*") if p.is_file()]:
        assert secret.encode() not in path.read_bytes(), f"the storage's secret key reached {path}"
        assert token.encode() not in path.read_bytes(), f"the token reached {path}"
