"""Fuzzing every backend route and the rasteriser with hypothesis: bad input is a 4xx JSON answer or a
ValueError naming it, never a 500, a crash or invalid JSON. 300 bodies per route, 500 annotation results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from label_config.grid import Grid
from label_config.rasterise import parse_annotation
from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from trainer.core.loop import TrainConfig
from trainer.runs.run import Run, RunConfig

from .test_app import CONFIG, digit_uri, save_round

SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
URLS = st.sampled_from(["/data/upload/1/a.png", "http://2130706433/", "data:image/png;base64,AAAA", "data:,x",
                        "//evil/x", "ftp://x/y", "/ http://e/", digit_uri(0), "", "javascript:alert(1)"])  # fmt: skip
TASKS = st.lists(st.fixed_dictionaries({"id": SCALARS, "data": st.dictionaries(st.sampled_from(["image", "x"]),
                                                                              URLS | SCALARS, max_size=2)}),
                 max_size=3)  # fmt: skip
BODIES = {
    "/setup": st.fixed_dictionaries(
        {"project": SCALARS | JSONISH, "schema": st.sampled_from([CONFIG, "<View/>", ""]) | SCALARS}
    ),  # fmt: skip
    "/predict": st.fixed_dictionaries(
        {
            "tasks": TASKS | JSONISH,
            "project": SCALARS,
            "label_config": st.sampled_from([CONFIG, "<View>", None]) | SCALARS,
        }
    ),
    "/webhook": st.fixed_dictionaries(
        {"action": st.sampled_from(["ANNOTATION_CREATED", "PROJECT_UPDATED"]) | SCALARS, "project": JSONISH}
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    run = Run.create(tmp_path_factory.mktemp("fuzz") / "run",
                     RunConfig(dataset="decoy-mnist", train=TrainConfig(epochs=1)))  # fmt: skip
    save_round(run, 0)
    return create_app(BackendConfig(model_dir=run.directory)).test_client()


@pytest.mark.parametrize("route", list(BODIES))
def test_routes_answer_bad_bodies_with_4xx_json(client, route):
    tried = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(body=BODIES[route] | JSONISH)
    def check(body):
        tried.append(body)
        resp = client.post(route, data=json.dumps(body), content_type="application/json")
        answer = json.loads(resp.get_data(as_text=True))  # strict JSON, always
        assert resp.status_code < 500, (resp.status_code, answer, body)

    check()
    assert len(tried) >= 300
    assert client.get("/health").json["status"] == "UP"  # the server is still up


@settings(max_examples=500, deadline=None, derandomize=True)
@given(result=st.lists(st.fixed_dictionaries({
    "type": st.sampled_from(["rectanglelabels", "keypointlabels", "choices", "polygonlabels", "x"]) | SCALARS,
    "from_name": st.sampled_from(["irrelevant_area", "label_check", "correct_label", "skip"]) | SCALARS,
    "to_name": st.just("image"),
    "value": JSONISH | st.fixed_dictionaries({k: SCALARS for k in ("x", "y", "width", "height", "rotation")}),
}), max_size=4) | JSONISH)  # fmt: skip
def test_the_rasteriser_names_bad_annotations_or_reads_them(result):
    grid = Grid(28, 28, 7, 7)
    try:
        parsed = parse_annotation(result, grid, ["0", "1"], task_id=1, annotation_id=2)
    except ValueError as exc:
        assert "task 1, annotation 2" in str(exc) or "result" in str(exc)
    else:
        assert parsed.cells.shape == (7, 7) and parsed.cells.dtype == np.bool_
