"""A team's own project through Flask's test client: Label Studio's stock image-classification template (an Image
and a Choices, nothing else), aliases, a config /setup refuses (422 and the reason in the log), classes that are
not the model's, and a /predict batch with one task that cannot be read."""

from __future__ import annotations

import logging

import pytest

from label_config.names import MODEL_LOOKS_HERE
from label_config.snippet import merge_snippet
from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from tests.ls_backend.stock import STOCK, STOCK_CLASSES, stock_run
from tests.ls_backend.test_app import digit_uri

ALIASED = """<View><Image name="photo" value="$picture"/>
<Choices name="kind" toName="photo"><Choice value="Adult content" alias="adult"/><Choice value="Weapons" alias="w"/>
<Choice value="Violence" alias="v"/></Choices></View>"""
TOP_K = 3


@pytest.fixture
def client(tmp_path):
    run = stock_run(tmp_path / "run", top_k=TOP_K)
    return create_app(BackendConfig(model_dir=run.directory)).test_client()


def body(*uris, config=STOCK, key="image") -> dict:
    tasks = [{"id": 10 + i, "data": {key: uri}} for i, uri in enumerate(uris)]
    return {"tasks": tasks, "project": "4.1700000000", "label_config": config, "params": {"context": None}}


def test_stock_template_connects_and_predicts_the_class(client):
    setup = client.post("/setup", json={"project": "4.1700000000", "schema": STOCK})
    assert setup.status_code == 200 and setup.json["model_version"]
    resp = client.post("/predict", json=body(digit_uri(0), digit_uri(1, size=(64, 48), mode="RGB")))
    assert resp.status_code == 200, resp.json
    for pred in resp.json["results"]:
        assert pred["model_version"] == setup.json["model_version"] and 0 <= pred["score"] <= 1
        # no region tool in the stock template: the class is the whole prediction
        assert pred["result"] == [{"from_name": "choice", "to_name": "image", "type": "choices",
                                   "value": {"choices": [pred["prediction"]]}, "score": pred["score"]}]  # fmt: skip
        assert pred["prediction"] in STOCK_CLASSES


def test_aliases_are_what_the_prediction_stores(client):
    assert client.post("/setup", json={"project": "5.1", "schema": ALIASED}).status_code == 200
    pred = client.post("/predict", json=body(digit_uri(2), config=ALIASED, key="picture")).json["results"][0]
    choice = pred["result"][0]
    assert (choice["from_name"], choice["to_name"]) == ("kind", "photo")
    stored = {"Adult content": "adult", "Weapons": "w", "Violence": "v"}[pred["prediction"]]
    assert choice["value"]["choices"] == [stored]  # Label Studio writes the alias into results


def test_stock_template_with_the_snippet_prefills_looks_here_regions(client):
    config = merge_snippet(STOCK)
    pred = client.post("/predict", json=body(digit_uri(3), config=config)).json["results"][0]
    choice, regions = pred["result"][0], pred["result"][1:]
    assert choice["type"] == "choices" and len(regions) == TOP_K
    assert all(r["from_name"] == "feedback_regions" and r["type"] == "rectanglelabels" for r in regions)
    # accepted unread, the suggestions carry the neutral label, never "Model must not use this"
    assert all(r["value"]["rectanglelabels"] == [MODEL_LOOKS_HERE] for r in regions)


def test_a_feedback_tool_without_the_neutral_label_gets_no_regions(client):
    """Only an irrelevant label to pre-fill with: nothing is pre-filled rather than marks the annotator never made."""
    config = STOCK.replace(
        "</View>", '<RectangleLabels name="bad" toName="image"><Label value="Irrelevant"/></RectangleLabels></View>'
    )
    pred = client.post("/predict", json=body(digit_uri(3), config=config)).json["results"][0]
    assert [r["type"] for r in pred["result"]] == ["choices"]


@pytest.mark.parametrize(
    "schema, named",
    [
        ('<View><Image name="image" value="$image"/></View>', "no Choices control over an Image"),
        (
            '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>',
            "no Image object",
        ),  # fmt: skip
        ('<View><Image name="image" value="$image"/><Choices name="c" toName="image"/></View>', "has no <Choice>"),
    ],
)
def test_a_config_it_cannot_serve_is_refused_with_the_reason_in_the_log(client, caplog, schema, named):
    with caplog.at_level(logging.WARNING):
        resp = client.post("/setup", json={"project": "6.1700000000", "schema": schema})
    assert resp.status_code == 422 and named in resp.json["error"]
    logged = [
        r for r in caplog.records if r.levelno == logging.WARNING and "/setup for project 6 refused" in r.getMessage()
    ]
    assert logged and named in logged[0].getMessage()  # what Label Studio hides is in the backend's console


def test_classes_that_are_not_the_models_are_refused_naming_both(client, caplog):
    other = STOCK.replace("Weapons", "Cats")
    with caplog.at_level(logging.WARNING):
        resp = client.post("/setup", json={"project": "7.1", "schema": other})
    assert resp.status_code == 422
    error = resp.json["error"]
    assert "['Adult content', 'Cats', 'Violence']" in error and "['Adult content', 'Violence', 'Weapons']" in error
    assert "train a run on this project's classes" in error
    assert any("/setup for project 7 refused" in r.getMessage() for r in caplog.records)
    # the model's classes are the folder's sorted names; the template lists them in another order: same classes
    pred = client.post("/predict", json=body(digit_uri(0))).json["results"][0]
    assert pred["result"][0]["value"]["choices"] == [pred["prediction"]]


def test_a_batch_with_one_unreadable_task_predicts_the_others(client, caplog):
    uris = [digit_uri(0), "s3://bucket/cat.png", digit_uri(1), digit_uri(2), "ftp://files/cat.png"]
    request = body(*uris)
    del request["tasks"][3]["data"]["image"]  # a task without the image's key
    request["tasks"][3]["data"]["photo"] = "x"
    with caplog.at_level(logging.WARNING):
        resp = client.post("/predict", json=request)
    assert resp.status_code == 200, resp.json
    results = resp.json["results"]
    assert len(results) == 5 and results[1] == results[3] == results[4] == []  # one entry per task, in order
    assert all(r["result"][0]["type"] == "choices" for r in (results[0], results[2]))
    skipped = {s["task"]: s["error"] for s in resp.json["skipped"]}
    # a cloud URI needs Label Studio to resolve it (this backend has no LABEL_STUDIO_URL: tests/ls_backend/
    # test_cloud_storage.py reads them through a real one)
    assert "'s3://bucket/cat.png' is in cloud storage, which only Label Studio can resolve" in skipped[11]
    assert "no data key 'image'" in skipped[13] and "unsupported scheme 'ftp'" in skipped[14]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("task 11 skipped" in m and "s3" in m for m in warned)
    assert any("task 13 skipped" in m for m in warned) and any("task 14 skipped" in m for m in warned)


def test_a_request_level_problem_stays_a_4xx(client):
    assert client.post("/predict", json={"tasks": [], "label_config": STOCK}).status_code == 400
    assert client.post("/predict", json=body(digit_uri(0), config="<View/>")).status_code == 422
