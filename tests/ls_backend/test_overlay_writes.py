"""Where /predict's overlays are written, against a small fake Label Studio on 127.0.0.1 that records every
request: only into tasks that Label Studio says are in a project this backend serves, under the overlay key of
that project's stored config; the writer's queue is bounded and its thread outlives any error."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from PIL import Image

from label_config.names import SALIENCY_KEY
from ls_backend.overlays import OverlayWriter, PendingOverlay, overlay_png
from ls_backend.projects import PROJECTS_FILE
from trainer.core.loop import TrainConfig
from trainer.labelstudio.client import connect
from trainer.labelstudio.link import LINK_FILE
from trainer.runs.atomic import write_json
from trainer.runs.run import Run, RunConfig

from .test_app import CONFIG, TOP_K, digit_uri, make_client, save_round

TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a legacy token: no exchange with the server
TASK = re.compile(r"^/api/tasks/(\d+)/?$")
PROJECT = re.compile(r"^/api/projects/(\d+)/?$")


@pytest.fixture
def run(tmp_path) -> Run:
    """A run with round 0 saved, as in test_app."""
    made = Run.create(tmp_path / "run", RunConfig(top_k=TOP_K, train=TrainConfig(epochs=1, batch_size=128)))
    save_round(made, 0)
    return made


class FakeLabelStudio(BaseHTTPRequestHandler):
    """Tasks and projects by id; ``seen`` holds (method, path) of every request; ``gate`` (when set) holds every
    answer until it is opened."""

    tasks: ClassVar[dict[int, dict]] = {}
    projects: ClassVar[dict[int, str]] = {}
    seen: ClassVar[list[tuple[str, str]]] = []
    gate: ClassVar[threading.Event | None] = None

    def _answer(self, status: int, body) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _route(self):
        self.seen.append((self.command, self.path))
        if self.gate is not None:
            self.gate.wait(30)
        task, project = TASK.match(self.path), PROJECT.match(self.path)
        if task and int(task[1]) in self.tasks:
            return self.tasks[int(task[1])]
        if project and int(project[1]) in self.projects:
            return {"id": int(project[1]), "label_config": self.projects[int(project[1])]}
        return None

    def do_GET(self):
        found = self._route()
        self._answer(200, found) if found is not None else self._answer(404, {"detail": "Not found."})

    def do_PATCH(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        found = self._route()
        if found is None:
            return self._answer(404, {"detail": "Not found."})
        found["data"] = body["data"]
        return self._answer(200, found)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_ls():
    handler = type("LS", (FakeLabelStudio,), {"tasks": {}, "projects": {}, "seen": [], "gate": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    if handler.gate is not None:
        handler.gate.set()
    server.shutdown()
    server.server_close()


def backend(run, url: str, key: str = TOKEN):
    app, client = make_client(run, label_studio_url=url, api_key=key)
    return client, app.extensions["hitl"]["model"]


def add_task(ls, task_id: int, project: int, **data) -> None:
    ls.tasks[task_id] = {"id": task_id, "project": project, "data": {"image": "/data/upload/x.png", **data}}


def predict(client, project: str, ids, label_config=CONFIG):
    tasks = [{"id": i, "data": {"image": digit_uri(k)}} for k, i in enumerate(ids)]
    return client.post("/predict", json={"tasks": tasks, "project": project, "label_config": label_config})


def patched(ls) -> list[str]:
    return [path for method, path in ls.seen if method == "PATCH"]


def test_overlays_go_only_into_tasks_of_the_served_project(run, fake_ls):
    """Task 901 is in project 2: a /predict naming project 1 gets its prediction but leaves its data alone; ids
    that are no Label Studio id never reach Label Studio."""
    url, ls = fake_ls
    add_task(ls, 5, project=1)
    add_task(ls, 901, project=2, model_version="VICTIM-DATA")
    client, model = backend(run, url)
    assert client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG}).status_code == 200
    resp = predict(client, "1.1700000000", [5, 901, -5, 0, 2**63, 10**30, True])
    assert resp.status_code == 200 and len(resp.json["results"]) == 7  # predictions answer every task
    assert model.overlays.wait(30)
    assert patched(ls) == ["/api/tasks/5/"]
    assert ls.tasks[901]["data"] == {"image": "/data/upload/x.png", "model_version": "VICTIM-DATA"}
    assert sorted(path for _, path in ls.seen) == ["/api/tasks/5/", "/api/tasks/5/", "/api/tasks/901/"]
    assert (model.overlays.attached, model.overlays.failed) == (1, 1)
    assert ls.tasks[5]["data"][SALIENCY_KEY][0].startswith("data:image/png;base64,")


def test_a_project_the_backend_does_not_serve_gets_predictions_and_no_writes(run, fake_ls):
    url, ls = fake_ls
    add_task(ls, 5, project=3)
    client, model = backend(run, url)
    client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG})
    resp = predict(client, "3.1700000000", [5])
    assert resp.status_code == 200 and len(resp.json["results"]) == 1
    assert model.overlays.wait(30) and ls.seen == []


def test_the_overlay_key_is_the_stored_configs_not_the_requests(run, fake_ls):
    """A /predict whose config names another overlay key writes under the key /setup stored for the project."""
    url, ls = fake_ls
    add_task(ls, 5, project=1, victim="keep me")
    client, model = backend(run, url)
    client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG})
    asked = CONFIG.replace(f'valueList="${SALIENCY_KEY}"', 'valueList="$victim"')
    assert asked != CONFIG
    assert predict(client, "1.1700000000", [5], label_config=asked).status_code == 200
    assert model.overlays.wait(30)
    assert ls.tasks[5]["data"]["victim"] == "keep me" and ls.tasks[5]["data"][SALIENCY_KEY]


def test_the_linked_project_is_served_with_label_studios_stored_config(run, fake_ls):
    """The run's own project (``hitl push`` linked it) is served without /setup; the overlay key is read from the
    config Label Studio stores for it."""
    url, ls = fake_ls
    write_json(run.directory / LINK_FILE, {"url": url, "project_id": 4, "title": "t", "data_uri": True})
    ls.projects[4] = CONFIG
    add_task(ls, 8, project=4)
    client, model = backend(run, url)
    assert predict(client, "4.1700000000", [8]).status_code == 200
    assert model.overlays.wait(30)
    assert ("GET", "/api/projects/4/") in ls.seen and patched(ls) == ["/api/tasks/8/"]


def test_served_projects_survive_a_restart(run, fake_ls):
    url, _ = fake_ls
    client, _ = backend(run, url)
    assert client.post("/setup", json={"project": "6.1700000000", "schema": CONFIG}).status_code == 200
    assert (run.directory / PROJECTS_FILE).is_file()
    _, restarted = backend(run, url)
    assert restarted.serves(6)
    for other in (7, 0, -6, True, 2**31, "6", None):
        assert not restarted.serves(other), other


def test_the_writer_lives_on_after_any_error(run, fake_ls):
    """A task whose stored data is a number made the old writer's thread die on a TypeError it did not catch:
    every later overlay was lost and ``failed`` still read 0."""
    url, ls = fake_ls
    ls.tasks[5] = {"id": 5, "project": 1, "data": 5}
    add_task(ls, 6, project=1)
    client, model = backend(run, url)
    client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG})
    assert predict(client, "1.1700000000", [5, 6]).status_code == 200
    assert model.overlays.wait(30), "the writer stopped handling overlays"
    assert (model.overlays.attached, model.overlays.failed) == (1, 1) and patched(ls) == ["/api/tasks/6/"]


def test_the_queue_is_bounded_in_count_and_bytes_and_counts_drops(fake_ls):
    """Label Studio not answering: overlays beyond the bounds are dropped and counted, and the queue's bytes stay
    under its limit; once Label Studio answers, the queued ones are written."""
    url, ls = fake_ls
    ls.gate = threading.Event()
    for task_id in range(1, 11):
        add_task(ls, task_id, project=1)
    png = overlay_png(Image.new("RGB", (64, 64), (200, 10, 10)))
    for max_items, max_bytes in ((3, 100 * len(png)), (100, 3 * len(png))):
        writer = OverlayWriter(lambda: connect(url, TOKEN), max_items=max_items, max_bytes=max_bytes)
        accepted = [writer.submit(PendingOverlay(t, 1, SALIENCY_KEY, png, "m-1", "a", 0.9)) for t in range(1, 11)]
        assert accepted == [True] * 3 + [False] * 7
        assert (writer.dropped, writer.queued, writer.queued_bytes) == (7, 3, 3 * len(png))
        ls.gate.set()
        assert writer.wait(30) and (writer.attached, writer.failed, writer.queued_bytes) == (3, 0, 0)
        ls.gate.clear()
        for t in range(1, 4):
            ls.tasks[t]["data"].pop(SALIENCY_KEY)


def test_predict_while_label_studio_hangs_keeps_the_queue_bounded(run, fake_ls):
    """The issue's case: /predict after /predict while Label Studio does not answer. The queue stops at
    OVERLAY_QUEUE overlays; the rest are dropped and counted, and the predictions are answered all the same."""
    url, ls = fake_ls
    ls.gate = threading.Event()
    for task_id in range(1, 41):
        add_task(ls, task_id, project=1)
    app, client = make_client(run, label_studio_url=url, api_key=TOKEN, overlay_queue=5)
    writer = app.extensions["hitl"]["model"].overlays
    client.post("/setup", json={"project": "1.1700000000", "schema": CONFIG})
    for first in range(1, 41, 10):
        assert len(predict(client, "1.1700000000", range(first, first + 10)).json["results"]) == 10
    assert (writer.queued, writer.dropped) == (5, 35)
    ls.gate.set()
    assert writer.wait(30) and (writer.attached, writer.failed, writer.queued_bytes) == (5, 0, 0)


@pytest.mark.labelstudio
def test_a_task_of_another_project_is_left_alone_by_the_real_label_studio(run, ls_client, label_studio):
    """The issue's case on the real server: /predict names project A and the id of a task in project B."""
    a, b = (ls_client.projects.create(title=f"overlay {name} {run.directory.parent.name}"[:50], label_config=CONFIG)
            for name in ("A", "B"))  # fmt: skip
    ids = {}
    for project in (a, b):
        imported = ls_client.projects.import_tasks(id=project.id, request=[{"data": {"image": digit_uri(1)}}],
                                                   return_task_ids=True)  # fmt: skip
        ids[project.id] = imported.task_ids[0]
    before = ls_client.tasks.get(id=ids[b.id]).data
    client, model = backend(run, label_studio.url, label_studio.token)
    assert client.post("/setup", json={"project": f"{a.id}.1700000000", "schema": CONFIG}).status_code == 200
    assert predict(client, f"{a.id}.1700000000", [ids[b.id], ids[a.id]]).status_code == 200
    assert model.overlays.wait(60)
    assert ls_client.tasks.get(id=ids[b.id]).data == before
    assert ls_client.tasks.get(id=ids[a.id]).data[SALIENCY_KEY]
    assert (model.overlays.attached, model.overlays.failed) == (1, 1)
