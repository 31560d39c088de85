"""/predict's bounds: tasks are explained in chunks (memory flat in the number of tasks), and a request over the cap
is refused with 413 naming it. Memory is measured as the peak RSS of a fresh process (torch's allocations are not
seen by tracemalloc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ls_backend.config import BackendConfig
from trainer.core.loop import TrainConfig
from trainer.runs.run import Run, RunConfig

from .test_app import TOP_K, digit_uri, make_client, predict_body, save_round

ROOT = Path(__file__).resolve().parents[2]
# One /predict of N tasks after a warm-up one; prints the peak RSS it added (MiB) and the number of results.
MEASURE = """
import json, resource, sys, tempfile
from pathlib import Path
from tests.ls_backend.test_app import digit_uri, make_client, predict_body, save_round, TOP_K
from trainer.core.loop import TrainConfig
from trainer.runs.run import Run, RunConfig
run = Run.create(Path(tempfile.mkdtemp()) / "run", RunConfig(top_k=TOP_K, train=TrainConfig(epochs=1)))
save_round(run, 0)
client = make_client(run)[1]
uri = digit_uri(0)
assert client.post("/predict", json=predict_body(uri)).status_code == 200
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
resp = client.post("/predict", json=predict_body(*[uri] * int(sys.argv[1])))
added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"status": resp.status_code, "results": len(resp.json["results"]), "added_mib": added}))
"""


@pytest.fixture
def run(tmp_path) -> Run:
    """A run with round 0 saved, as in test_app."""
    made = Run.create(tmp_path / "run", RunConfig(top_k=TOP_K, train=TrainConfig(epochs=1, batch_size=128)))
    save_round(made, 0)
    return made


def added_mib(n: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", MEASURE, str(n)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["status"], out["results"]) == (200, n)
    return out["added_mib"]


@pytest.mark.slow
def test_predict_memory_is_flat_in_the_number_of_tasks():
    """8 times the tasks, (nearly) the same memory: main stacked every task at once (64 tasks: +102 MiB, 512:
    +536 MiB measured); in chunks of 16 both stay near 50 MiB."""
    small, large = added_mib(64), added_mib(512)
    assert large < small + 64, f"64 tasks added {small:.0f} MiB, 512 added {large:.0f} MiB"


def test_predict_over_the_cap_is_413_naming_it(run):
    client = make_client(run, max_predict_tasks=3)[1]
    resp = client.post("/predict", json=predict_body(*[digit_uri(k) for k in range(4)]))
    assert resp.status_code == 413
    assert "4 tasks" in resp.json["error"] and "cap of 3" in resp.json["error"]
    assert "MAX_PREDICT_TASKS" in resp.json["error"]
    assert client.post("/predict", json=predict_body(*[digit_uri(k) for k in range(3)])).status_code == 200


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_chunks_answer_what_one_batch_answers(run, batch):
    body = predict_body(*[digit_uri(k) for k in range(5)])
    whole = make_client(run)[1].post("/predict", json=body).json["results"]
    chunked = make_client(run, predict_batch=batch)[1].post("/predict", json=body).json["results"]
    assert len(chunked) == 5
    for a, b in zip(whole, chunked):
        assert [r["value"] for r in a["result"]] == [r["value"] for r in b["result"]]
        assert a["prediction"] == b["prediction"] and a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_a_bad_task_in_a_later_chunk_is_skipped_and_the_others_predicted(run, caplog):
    """A task without the image's data key in the last chunk: the chunks before it are predicted, it gets no
    prediction (``[]``) and a warning that names it."""
    client = make_client(run, predict_batch=1)[1]
    body = predict_body(*[digit_uri(k) for k in range(3)])
    body["tasks"][2]["data"] = {"other": "x"}
    with caplog.at_level("WARNING"):
        resp = client.post("/predict", json=body)
    assert resp.status_code == 200 and [bool(r) for r in resp.json["results"]] == [True, True, False]
    assert "task 3 has no data key 'image'" in resp.json["skipped"][0]["error"]
    assert any("task 3 skipped" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert client.application.extensions["hitl"]["model"].predicted_tasks == 2


def test_limits_from_env(tmp_path):
    env = {"MODEL_DIR": str(tmp_path), "PREDICT_BATCH": "4", "MAX_PREDICT_TASKS": "200", "OVERLAY_QUEUE": "50",
           "OVERLAY_QUEUE_BYTES": "1000000"}  # fmt: skip
    config = BackendConfig.from_env(env)
    assert (config.predict_batch, config.max_predict_tasks, config.overlay_queue, config.overlay_queue_bytes) == (
        4,
        200,
        50,
        1_000_000,
    )
    defaults = BackendConfig.from_env({"MODEL_DIR": str(tmp_path)})
    assert (defaults.predict_batch, defaults.max_predict_tasks) == (16, 1000)


@pytest.mark.parametrize("name, value, message", [
    ("PREDICT_BATCH", "many", "PREDICT_BATCH must be an integer, got 'many'"),
    ("MAX_PREDICT_TASKS", "0", "max_predict_tasks must be >= 1, got 0"),
    ("OVERLAY_QUEUE_BYTES", "-1", "overlay_queue_bytes must be >= 1, got -1"),
])  # fmt: skip
def test_bad_limits_are_named(tmp_path, name, value, message):
    with pytest.raises(ValueError, match=message):
        BackendConfig.from_env({"MODEL_DIR": str(tmp_path), name: value})
