"""Webhooks start rounds only for projects the backend serves, with ids Label Studio can have, and a bounded
queue: the defects of the second hardening pass (300 distinct projects queued 303 rounds, ids -7, 10**23
and 1.9 accepted, another project's annotations pulled into this run, a 100 kB action echoed back)."""

from __future__ import annotations

import json
import threading

import pytest

from ls_backend.jobs import MAX_QUEUED, TrainingJob
from trainer.core.loop import TrainConfig
from trainer.labelstudio.link import LINK_FILE
from trainer.runs.run import Run, RunConfig

from .test_app import make_client, save_round, serve_project


@pytest.fixture
def run(tmp_path) -> Run:
    run = Run.create(tmp_path / "run", RunConfig(train=TrainConfig(epochs=1, batch_size=128)))
    save_round(run, 0)
    return run


@pytest.fixture
def client(run):
    return make_client(run)[1]


def _hold_rounds(app):
    """Rounds that wait for the returned event: what is queued can be seen while one runs."""
    job, gate, trained = app.extensions["hitl"]["job"], threading.Event(), []
    job._train = lambda project: (trained.append(project), gate.wait(30)) and f"v-{project}"
    return job, gate, trained


def test_webhooks_for_projects_the_backend_does_not_serve_start_nothing(run):
    app, client = make_client(run)
    job, gate, trained = _hold_rounds(app)
    serve_project(client, 1)
    refused = [client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": p}}) for p in range(2, 302)]
    assert {r.status_code for r in refused} == {403}
    assert "project 2 is not served" in refused[0].json["error"]
    events = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 7}})
    assert events.status_code == 403 and job.status()["annotation_events"] == 0
    assert job.status()["state"] == "idle" and trained == []
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).status_code == 201
    gate.set()
    assert job.wait(30) and trained == [1]  # the served project's round, and nobody else's


def test_the_runs_linked_project_is_served_without_setup(run):
    (run.directory / LINK_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9", "project_id": 5, "title": "t"}))
    app, client = make_client(run)
    job, gate, trained = _hold_rounds(app)
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}}).status_code == 201
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 6}}).status_code == 403
    gate.set()
    assert job.wait(30) and trained == [5]


@pytest.mark.parametrize("project", [-7, 0, 10**23, 2**31, 1.9, True, "1.9.9", "٩", "１", [1], "1e3"])
def test_project_ids_must_be_ids_label_studio_can_have(client, project):
    for body in ({"action": "START_TRAINING", "project": {"id": project}}, {"action": "START_TRAINING",
                                                                             "project": project}):  # fmt: skip
        resp = client.post("/webhook", json=body)
        assert resp.status_code == 400 and "project must be" in resp.json["error"], (project, resp.json)
    setup = client.post("/setup", json={"project": project, "schema": None})
    assert setup.status_code == 400


def test_setup_reads_label_studios_id_and_timestamp_form(client):
    assert client.post("/setup", json={"project": "12.1700000000", "schema": None}).status_code == 200
    assert client.post("/setup", json={"project": 12, "schema": None}).status_code == 200


def test_the_queue_holds_one_round_per_project_and_at_most_max_queued_projects():
    gate = threading.Event()
    job = TrainingJob(lambda project: gate.wait(30) and "v", max_queued=3)
    assert job.trigger(1) == "started"
    assert [job.trigger(p) for p in (2, 3, 4)] == ["queued"] * 3
    assert job.trigger(2) == "already queued"
    assert job.trigger(5) == "queue full"
    status = job.status()
    assert (status["queued_rounds"], status["refused_triggers"], status["coalesced_triggers"]) == (3, 1, 1)
    gate.set()
    assert job.wait(30) and job.status()["rounds"] == 4


def test_a_full_queue_answers_429_and_names_the_bound(run):
    app, client = make_client(run)
    job, gate, trained = _hold_rounds(app)
    for project in range(1, MAX_QUEUED + 3):
        serve_project(client, project)
    answers = [client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": p}})
               for p in range(1, MAX_QUEUED + 3)]  # fmt: skip
    assert [a.status_code for a in answers] == [201] * (MAX_QUEUED + 1) + [429]
    assert f"{MAX_QUEUED} projects wait" in answers[-1].json["error"]
    gate.set()
    assert job.wait(60) and len(trained) == MAX_QUEUED + 1
