"""Hypothesis against the backend with a recording Label Studio: task lists and webhook bodies of every shape
never make the backend touch a task outside the project it serves, never answer 5xx, and never grow without
bound (resident memory sampled every 100 of 1,000 requests: the peak is printed, the growth bounded).

The Label Studio here is a small HTTP server on 127.0.0.1 that answers the few routes the backend calls (a task,
a project) and records every request: what is under test is what the backend sends, which a real server would
not let us observe. The real server's side is in test_with_label_studio.py.
"""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ls_backend.app import create_app
from ls_backend.config import BackendConfig

from .test_app import CONFIG, digit_uri, save_round
from .test_fuzz import JSONISH, SCALARS

SERVED, OTHER = 1, 2
TASKS = {**{i: SERVED for i in range(1, 41)}, **{i: OTHER for i in range(900, 941)}}  # task id -> project
TOKEN = "f" * 40  # a legacy token: no refresh round trips
_TASK_PATH = re.compile(r"/api/tasks/([^/?]+)/?")


class _RecordingLabelStudio(BaseHTTPRequestHandler):
    requests: list[tuple[str, str]] = []

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> None:
        self.requests.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if m := _TASK_PATH.fullmatch(self.path):
            tid = int(m.group(1)) if m.group(1).isdigit() else None
            if tid not in TASKS:
                return self._answer(404, {"detail": "Not found."})
            return self._answer(200, {"id": tid, "project": TASKS[tid], "data": {"image": digit_uri(tid)}})
        if re.fullmatch(r"/api/projects/(\d+)/?", self.path):
            pid = int(self.path.strip("/").split("/")[-1])
            return self._answer(200, {"id": pid, "label_config": CONFIG})
        return self._answer(404, {"detail": "Not found."})

    do_GET = do_PATCH = do_POST = do_PUT = _route  # noqa: N815 (http.server's names)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def recorder():
    handler = type("LS", (_RecordingLabelStudio,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", handler.requests
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def backend(tmp_path_factory, recorder):
    from trainer.core.loop import TrainConfig
    from trainer.runs.run import Run, RunConfig

    run = Run.create(tmp_path_factory.mktemp("fuzzw") / "run", RunConfig(train=TrainConfig(epochs=1)))
    save_round(run, 0)
    app = create_app(BackendConfig(model_dir=run.directory, label_studio_url=recorder[0], api_key=TOKEN))
    client = app.test_client()
    assert client.post("/setup", json={"project": f"{SERVED}.1700000000", "schema": CONFIG}).status_code == 200
    return app, client


IDS = (st.sampled_from(sorted(TASKS)) | st.integers() | st.sampled_from([-5, 0, 2**31, 2**63, 10**30, True, 1.0])
       | st.text(max_size=6) | st.none())  # fmt: skip
IMAGE = st.sampled_from([digit_uri(0), digit_uri(1)])
# Mostly well-formed tasks (so overlays are queued and written) with ids of every kind, and some garbage.
GOOD_TASK = st.fixed_dictionaries({"id": IDS, "data": st.fixed_dictionaries(
    {"image": IMAGE}, optional={"saliency": st.sampled_from(["", None, [], [""], "data:,x"])})})  # fmt: skip
FUZZ_TASK = st.fixed_dictionaries({"id": IDS}, optional={"data": st.dictionaries(
    st.sampled_from(["image", "saliency", "x", "../image"]), IMAGE | SCALARS, max_size=3)})  # fmt: skip
PROJECTS = st.sampled_from([f"{SERVED}.1700000000", f"{OTHER}.1700000000", SERVED, OTHER, None])
PREDICT = st.fixed_dictionaries({
    "tasks": st.lists(GOOD_TASK, min_size=1, max_size=6), "project": PROJECTS, "label_config": st.just(CONFIG),
}) | st.fixed_dictionaries({
    "tasks": st.lists(GOOD_TASK | FUZZ_TASK, max_size=6) | JSONISH, "project": PROJECTS | SCALARS,
    "label_config": st.sampled_from([CONFIG, "<View/>"]) | SCALARS,
})  # fmt: skip
WEBHOOK = st.fixed_dictionaries({
    "action": st.sampled_from(["START_TRAINING", "ANNOTATION_CREATED", "PROJECT_UPDATED", "x" * 1000]) | SCALARS,
    "project": st.fixed_dictionaries({"id": st.sampled_from([SERVED, OTHER, -7, 10**23, 1.9]) | SCALARS}) | JSONISH,
})  # fmt: skip


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _task_ids_touched(requests) -> set:
    return {m.group(1) for _, path in requests if (m := _TASK_PATH.fullmatch(path))}


@pytest.mark.slow
def test_fuzzed_requests_touch_only_the_served_projects_tasks(backend, recorder):
    app, client = backend
    _, seen = recorder
    model, job = app.extensions["hitl"]["model"], app.extensions["hitl"]["job"]
    trained: list = []
    job._train = lambda project: trained.append(project) or "fuzz-round"  # here: who may start a round
    statuses: list[int] = []
    rss: list[int] = []

    @settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(route_body=st.tuples(st.just("/predict"), PREDICT) | st.tuples(st.just("/webhook"), WEBHOOK))
    def check(route_body):
        route, body = route_body
        resp = client.post(route, data=json.dumps(body), content_type="application/json")
        json.loads(resp.get_data(as_text=True))  # always strict JSON
        statuses.append(resp.status_code)
        if len(statuses) % 100 == 0:
            rss.append(_rss_bytes())
        assert resp.status_code < 500, (resp.status_code, resp.json, body)
        if route == "/webhook" and resp.status_code in (200, 201):
            assert len(resp.get_data()) < 2000  # an unknown action is never echoed back

    check()
    assert model.overlays.wait(60)
    growth = max(rss) - rss[1]  # after the first 200 requests: models, caches and hypothesis warmed up
    print(f"{len(statuses)} requests, resident memory {rss[0] / 2**20:.0f} -> peak {max(rss) / 2**20:.0f} MiB "
          f"(growth after request 200: {growth / 2**20:.1f} MiB), statuses "
          f"{ {s: statuses.count(s) for s in sorted(set(statuses))} }")  # fmt: skip
    assert len(statuses) >= 1000
    touched = _task_ids_touched(seen)
    written = {m.group(1) for method, path in seen if method == "PATCH" and (m := _TASK_PATH.fullmatch(path))}
    assert written, "the fuzz never wrote an overlay: it tested nothing"
    assert written <= {str(t) for t, p in TASKS.items() if p == SERVED}, written
    assert all(t.isdigit() and 1 <= int(t) < 2**31 for t in touched), touched  # no -5, 0, True, 10**30 sent on
    assert job.wait(30) and SERVED in trained and set(trained) <= {SERVED, None}  # never another project's round
    assert growth < 64 * 2**20, [r // 2**20 for r in rss]
    assert client.get("/health").json["status"] == "UP"
