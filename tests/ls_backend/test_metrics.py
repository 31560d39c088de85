"""``/metrics``: Prometheus text from each app's own registry, scraped through Flask's test client."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.ls_backend.test_app import digit_uri, make_client, predict_body, save_round, serve_project
from trainer.core.loop import TrainConfig
from trainer.runs.run import Run, RunConfig


@pytest.fixture
def run(tmp_path) -> Run:
    run = Run.create(tmp_path / "run", RunConfig(train=TrainConfig(epochs=1, batch_size=128)))
    save_round(run, 0)
    return run


def scrape(client) -> dict[str, float]:
    """Sample name (with labels, Prometheus style) -> value, from one GET /metrics."""
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=")
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def test_metrics_count_a_predict_and_read_the_run(run):
    _, client = make_client(run)
    before = scrape(client)
    assert before["hitl_predict_latency_seconds_count"] == 0
    assert before["hitl_rounds_trained"] == 1 and before["hitl_training_queue_depth"] == 0
    assert before["hitl_training_running"] == 0
    assert "hitl_last_accuracy" not in before  # no round evaluated yet: no sample rather than a false 0
    assert before[f'hitl_model_info{{model_version="{run.model_version(0)}"}}'] == 1

    assert client.post("/predict", json=predict_body(digit_uri(0), digit_uri(1))).status_code == 200
    assert client.post("/predict", json={"tasks": []}).status_code == 400  # errors are timed too
    run._append_history({"round": 0, "acc": 0.75})
    save_round(run, 1)
    after = scrape(client)
    assert after["hitl_predict_latency_seconds_count"] == 2
    assert after["hitl_predict_latency_seconds_sum"] > 0
    assert after['hitl_predict_latency_seconds_bucket{le="+Inf"}'] == 2
    assert after["hitl_predicted_tasks_total"] == 2
    assert after["hitl_last_accuracy"] == 0.75 and after["hitl_rounds_trained"] == 2


def test_each_app_has_its_own_registry(run):
    _, first = make_client(run)
    _, second = make_client(run)
    first.post("/predict", json=predict_body(digit_uri(0)))
    assert scrape(first)["hitl_predict_latency_seconds_count"] == 1
    assert scrape(second)["hitl_predict_latency_seconds_count"] == 0


def test_metrics_show_a_running_round_and_the_queue(run, monkeypatch):
    app, client = make_client(run)
    job, gate = app.extensions["hitl"]["job"], threading.Event()
    monkeypatch.setattr(job, "_train", lambda project: gate.wait(10) and "v")  # a round that waits for the test
    for project in (1, 2):
        serve_project(client, project)
        assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project}}).status_code == 201
    busy = scrape(client)
    assert (busy["hitl_training_running"], busy["hitl_training_queue_depth"]) == (1, 1)
    gate.set()
    assert job.wait(10)
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.content_type.startswith("application/openmetrics-text") and om.get_data().endswith(b"# EOF\n")
    idle = scrape(client)
    assert (idle["hitl_training_running"], idle["hitl_training_queue_depth"]) == (0, 0)
    assert idle["hitl_backend_training_rounds_total"] == 2


@pytest.mark.parametrize("accept, openmetrics", [
    ("application/openmetrics-text; version=x", False), ("application/openmetrics-text; version=1.x", False),
    ("application/openmetrics-text; version=9.9.9", False), ("text/plain; version=x", False), (";;;,", False),
    ("application/openmetrics-text", True), ("application/openmetrics-text; version=1.0.0", True),
    ("text/plain, application/openmetrics-text; version=\"1.0.0\"; q=0.5", True),
])  # fmt: skip
def test_an_unknown_openmetrics_version_gets_plain_text_not_a_500(run, accept, openmetrics):
    _, client = make_client(run)
    resp = client.get("/metrics", headers={"Accept": accept})
    assert resp.status_code == 200
    assert resp.content_type.startswith("application/openmetrics-text" if openmetrics else "text/plain; version=0.0.4")
    assert resp.get_data().endswith(b"# EOF\n") is openmetrics


def test_metrics_show_dropped_overlays_and_the_queue(run):
    app, client = make_client(run)
    writer = app.extensions["hitl"]["model"].overlays
    before = scrape(client)
    assert (before["hitl_overlays_dropped_total"], before["hitl_overlay_queue"], before["hitl_overlay_queue_bytes"]) \
        == (0, 0, 0)  # fmt: skip
    writer.dropped += 3  # as a full queue counts them (tests/ls_backend/test_overlay_writes.py)
    assert scrape(client)["hitl_overlays_dropped_total"] == 3
