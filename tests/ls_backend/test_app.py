"""The ML backend through Flask's test client: every route, every bad input, the training job."""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from label_config.config import build_config
from label_config.grid import Grid
from label_config.names import ANNOTATED, CELL_RECT, CORRECT_LABEL, MODEL_LOOKS_HERE, PREDICTION_KEY
from ls_backend.app import create_app
from ls_backend.config import BackendConfig
from ls_backend.images import (
    ImageError,
    _kind,
    load_task_image,
    resolve_url,
    to_data_uri,
)
from ls_backend.jobs import TrainingJob
from trainer.core.loop import TrainConfig
from trainer.core.models import build_model
from trainer.runs.checkpoint import checkpoint_path, save_checkpoint
from trainer.runs.run import Run, RunConfig

CLASSES = [str(k) for k in range(10)]
GRID = Grid(28, 28, 7, 7)  # decoy-mnist at cell_px=4
CONFIG = build_config(CLASSES, GRID)
TOP_K = 3


def save_round(run: Run, round_: int, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = build_model("small-cnn", len(CLASSES), 1, 28)
    meta = {"model": "small-cnn", "num_classes": len(CLASSES), "in_channels": 1, "image_size": 28,
            "classes": CLASSES, "round": round_, "model_version": run.model_version(round_),
            "grid": {"rows": GRID.rows, "cols": GRID.cols}}  # fmt: skip
    save_checkpoint(checkpoint_path(run.checkpoint_dir, round_), model, meta)


@pytest.fixture
def run(tmp_path) -> Run:
    run = Run.create(tmp_path / "run", RunConfig(top_k=TOP_K, train=TrainConfig(epochs=1, batch_size=128)))
    save_round(run, 0)
    return run


def make_client(run: Run, **overrides):
    app = create_app(BackendConfig(model_dir=run.directory, **overrides))
    return app, app.test_client()


@pytest.fixture
def client(run):
    return make_client(run)[1]


def digit_uri(seed: int = 0, size=(28, 28), mode="L") -> str:
    rng = np.random.default_rng(seed)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    return to_data_uri(Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode))


def serve_project(client, project: int = 1, config: str = CONFIG) -> None:
    """Connect ``project`` as Label Studio does (``/setup``): only then may its webhooks start rounds."""
    resp = client.post("/setup", json={"project": f"{project}.1700000000", "schema": config})
    assert resp.status_code == 200, resp.json


def predict_body(*uris, config=CONFIG, key="image") -> dict:
    tasks = [{"id": i + 1, "data": {key: uri}} for i, uri in enumerate(uris)]
    return {"tasks": tasks, "project": "1.1700000000", "label_config": config, "params": {"context": None}}


# ---------------------------------------------------------------- a real HTTP file server for image URLs
class _Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        if self.path == "/drip":  # a slow server: one byte every 0.2 s, for ever
            self.send_response(200)
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
            return
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"not found")

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    """(base URL, files by path, requests seen as (path, Authorization header))."""
    handler = type("Files", (_Files,), {"files": {}, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler.files, handler.seen
    server.shutdown()
    server.server_close()


def png_bytes(seed=0) -> bytes:
    return base64.b64decode(digit_uri(seed).split(",", 1)[1])


# ---------------------------------------------------------------- config
def test_config_from_env_reads_ecosystem_names(tmp_path):
    env = {"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "k",
           "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "AUTO_TRAIN_AFTER": "5"}  # fmt: skip
    cfg = BackendConfig.from_env(env)
    assert (cfg.model_dir, cfg.label_studio_url, cfg.api_key) == (tmp_path, "http://ls:8080", "k")
    assert (cfg.basic_auth_user, cfg.basic_auth_pass, cfg.auto_train_after) == ("u", "p", 5)


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "MODEL_DIR"),
        ({"MODEL_DIR": "x", "BASIC_AUTH_USER": "u"}, "BASIC_AUTH_PASS"),
        ({"MODEL_DIR": "x", "AUTO_TRAIN_AFTER": "often"}, "AUTO_TRAIN_AFTER"),
        ({"MODEL_DIR": "x", "LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL"),
    ],
)
def test_config_from_env_rejects(env, message):
    with pytest.raises(ValueError, match=message):
        BackendConfig.from_env(env)


def test_wsgi_reads_environment_when_created_not_at_import(run, monkeypatch):
    monkeypatch.delenv("MODEL_DIR", raising=False)
    import ls_backend.wsgi as wsgi  # importing needs no MODEL_DIR

    monkeypatch.setenv("MODEL_DIR", str(run.directory))
    app = wsgi.create()
    assert app.test_client().get("/health").json["model_version"] == run.model_version(0)


def test_model_dir_that_is_not_a_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        create_app(BackendConfig(model_dir=tmp_path / "nothing"))


# ---------------------------------------------------------------- health, setup, versions (metrics: test_metrics.py)
def test_health_and_root(client, run):
    for path in ("/health", "/"):
        body = client.get(path).json
        assert body["status"] == "UP" and body["model_version"] == run.model_version(0)
        assert body["training"]["state"] == "idle"


def test_setup_answers_model_version(client, run):
    resp = client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "extra_params": None,
                                       "hostname": "http://localhost:8080", "access_token": "t"})  # fmt: skip
    assert resp.status_code == 200 and resp.json == {"model_version": run.model_version(0)}


@pytest.mark.parametrize(
    "body, status, message",
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        ({"project": "1.1", "schema": "<View><Image name='i' value='$i'/></View>"}, 422, "no Choices control"),
        ({"project": "1.1", "schema": "<View"}, 422, "does not parse"),
        ({"project": "abc.1", "schema": CONFIG}, 400, "project"),
    ],
)
def test_setup_rejects(client, body, status, message):
    resp = client.post("/setup", data=body, content_type="application/json") if isinstance(body, str) \
        else client.post("/setup", json=body)  # fmt: skip
    assert resp.status_code == status and message in resp.json["error"]
    assert client.get("/health").status_code == 200  # still up


def test_versions(client, run):
    save_round(run, 1, seed=1)
    assert client.get("/versions").json == {"versions": [run.model_version(0), run.model_version(1)]}
    assert client.get("/health").json["model_version"] == run.model_version(1)
    client.post("/predict", json=predict_body(digit_uri(0), digit_uri(1)))
    scraped = {s.name: s.value for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
               for s in f.samples}  # fmt: skip
    assert scraped["hitl_predicted_tasks_total"] == 2
    # no Label Studio configured: nothing to attach to image-only tasks
    assert scraped["hitl_overlays_attached_total"] == 0 and scraped["hitl_overlays_failed_total"] == 0


# ---------------------------------------------------------------- predict
def test_predict_batch_regions_on_our_config(client, run):
    uris = [digit_uri(0), digit_uri(1, size=(40, 30), mode="RGB"), digit_uri(2)]
    resp = client.post("/predict", json=predict_body(*uris))
    assert resp.status_code == 200
    results = resp.json["results"]
    assert len(results) == 3
    for pred in results:
        assert pred["model_version"] == run.model_version(0)
        assert 0 < pred["score"] <= 1 and pred[PREDICTION_KEY] in CLASSES
        assert pred["result"][0]["type"] == "choices" and pred["result"][0]["value"]["choices"] == [
            pred[PREDICTION_KEY]
        ]
        assert pred["result"][0]["from_name"] == CORRECT_LABEL
        regions = pred["result"][1:]
        assert len(regions) == TOP_K
        kinds = {(r["from_name"], r["to_name"], r["type"]) for r in regions}
        assert kinds == {(CELL_RECT, ANNOTATED, "rectanglelabels")}
        assert all(r["value"]["rectanglelabels"] == [MODEL_LOOKS_HERE] for r in regions)  # not "Irrelevant area"
        assert regions[0]["score"] == 1.0  # the most salient cell first, scores relative to it
        assert all(r["value"]["width"] == pytest.approx(100 / GRID.cols) for r in regions)


def test_predict_matches_the_model(client, run):
    """The served prediction is the checkpoint's own, on the training view of the image."""
    from trainer.data.view import model_view
    from trainer.runs.checkpoint import latest_checkpoint, load_checkpoint

    uri = digit_uri(5, size=(56, 56))
    pred = client.post("/predict", json=predict_body(uri)).json["results"][0]
    model, _ = load_checkpoint(latest_checkpoint(run.checkpoint_dir))
    x = model_view(load_task_image(uri), 28, 1)[None]
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[0]
    assert pred[PREDICTION_KEY] == CLASSES[int(probs.argmax())]
    assert pred["score"] == pytest.approx(float(probs.max()), rel=1e-5)


def test_predict_runs_in_the_runs_precision(tmp_path):
    """train.precision reaches the backend: a bf16 run predicts under bf16 autocast (scores close to fp32's, not
    equal), with regions on the same grid."""
    scores = {}
    for precision in ("fp32", "bf16"):
        run = Run.create(tmp_path / precision, RunConfig(top_k=TOP_K, train=TrainConfig(precision=precision)))
        save_round(run, 0)
        body = make_client(run)[1].post("/predict", json=predict_body(digit_uri(5))).json
        scores[precision] = body["results"][0]["score"]
        assert len(body["results"][0]["result"]) == 1 + TOP_K
    assert scores["bf16"] == pytest.approx(scores["fp32"], abs=0.05) and scores["bf16"] != scores["fp32"]


def choices(to_name: str) -> str:
    return (
        f'<Choices name="digit" toName="{to_name}">' + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices>"
    )


def user_config(tag: str, name: str) -> str:
    return (f'<View><Image name="photo" value="$picture"/>{choices("photo")}<{tag} name="{name}" toName="photo">'
            f'<Label value="Spurious"/><Label value="Model looks here"/></{tag}></View>')  # fmt: skip


@pytest.mark.parametrize(
    "tag, from_name, kind",
    [("RectangleLabels", "bad_area", "rectanglelabels"), ("KeyPointLabels", "bad_point", "keypointlabels"),
     ("PolygonLabels", "bad_poly", "polygonlabels"), ("BrushLabels", "bad_brush", "brushlabels")],
)  # fmt: skip
def test_predict_names_regions_after_the_projects_config(client, tag, from_name, kind):
    """The class first, then the salient cells in the project's own tool, labelled "Model looks here" (never the
    irrelevant "Spurious": accepted unread, a suggestion must not tell the model to ignore what it looks at)."""
    resp = client.post("/predict", json=predict_body(digit_uri(0), config=user_config(tag, from_name), key="picture"))
    assert resp.status_code == 200, resp.json
    pred = resp.json["results"][0]
    first, regions = pred["result"][0], pred["result"][1:]
    assert (first["from_name"], first["to_name"], first["type"]) == ("digit", "photo", "choices")
    assert first["value"]["choices"] == [pred[PREDICTION_KEY]] and first["score"] == pred["score"]
    assert len(regions) == TOP_K
    assert {(r["from_name"], r["to_name"], r["type"]) for r in regions} == {(from_name, "photo", kind)}
    assert all(r["value"][kind] == ["Model looks here"] for r in regions)
    assert all("relabel it 'Spurious'" in r["meta"]["text"][0] for r in regions)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ("{not json", 400, "not valid JSON"),
        ({"label_config": CONFIG}, 400, "'tasks'"),
        ({"tasks": [], "label_config": CONFIG}, 400, "'tasks'"),
        ({"tasks": "task 1", "label_config": CONFIG}, 400, "'tasks'"),
        ({"tasks": [{"id": 1}], "label_config": CONFIG}, 400, "'data'"),
        ({"tasks": [{"id": 7, "data": {"img": "x"}}], "label_config": CONFIG}, 400, "task 7 has no data key 'image'"),
        (predict_body("data:image/png;base64,AAAA"), 422, "cannot be decoded"),
        (predict_body("data:image/png;base64,@@@"), 400, "not valid base64"),
        (predict_body("data:image/gif;base64," + base64.b64encode(b"GIF89a").decode()), 422, "cannot be decoded"),
        (predict_body("ftp://example.org/a.png"), 422, "unsupported scheme 'ftp'"),
        (predict_body("images/a.png"), 422, "unsupported scheme"),
        (predict_body("/data/upload/1/a.png"), 422, "LABEL_STUDIO_URL is not set"),
        (predict_body(""), 400, "non-empty string"),
        ({"tasks": predict_body("x")["tasks"]}, 400, "no label config"),
        (predict_body(digit_uri(0), config="<View><Image name='i' value='$image'/></View>"), 422, "no Choices"),
        (predict_body(digit_uri(0), config="<View><Image"), 422, "does not parse"),
        (
            predict_body([digit_uri(0)], config=f"<View><Image name='i' valueList='$image'/>{choices('i')}</View>"),
            422,
            "reads a list of images",
        ),  # fmt: skip
    ],
)
def test_predict_rejects(client, body, status, message):
    resp = client.post("/predict", data=body, content_type="application/json") if isinstance(body, str) \
        else client.post("/predict", json=body)  # fmt: skip
    assert resp.status_code == status, resp.json
    assert message in resp.json["error"]
    assert client.post("/predict", json=predict_body(digit_uri(0))).status_code == 200  # still serving


def test_predict_without_a_checkpoint_is_503(tmp_path):
    run = Run.create(tmp_path / "empty", RunConfig())
    _, client = make_client(run)
    resp = client.post("/predict", json=predict_body(digit_uri(0)))
    assert resp.status_code == 503 and "no trained model yet" in resp.json["error"]
    assert client.get("/health").json["model_version"] is None


def test_model_loaded_once_and_reloaded_only_for_a_newer_checkpoint(run):
    app, client = make_client(run)
    model = app.extensions["hitl"]["model"].model_for(None)
    client.post("/predict", json=predict_body(digit_uri(0)))
    first = model._snapshot
    client.post("/predict", json=predict_body(digit_uri(1)))
    assert model._snapshot is first  # same object: no reload per request
    save_round(run, 1, seed=1)
    pred = client.post("/predict", json=predict_body(digit_uri(1))).json["results"][0]
    assert pred["model_version"] == run.model_version(1) and model._snapshot is not first


# ---------------------------------------------------------------- image URLs over HTTP
def test_label_studio_urls_get_the_token_other_hosts_do_not(run, file_server):
    base, files, seen = file_server
    files["/data/upload/1/a.png"] = png_bytes(0)
    files["/data/local-files/?d=imgs/b.png"] = png_bytes(1)
    files["/c.png"] = png_bytes(2)
    _, client = make_client(run, label_studio_url=base, api_key="secret", image_hosts=("localhost",),
                            image_networks=LOOPBACK)  # fmt: skip
    other = base.replace("127.0.0.1", "localhost")  # same server, another origin: must not see the key
    body = predict_body("/data/upload/1/a.png", "/data/local-files/?d=imgs/b.png", f"{other}/c.png")
    resp = client.post("/predict", json=body)
    assert resp.status_code == 200, resp.json
    assert dict(seen) == {"/data/upload/1/a.png": "Token secret", "/data/local-files/?d=imgs/b.png": "Token secret",
                          "/c.png": None}  # fmt: skip


@pytest.mark.parametrize(
    "path, payload, status, message",
    [("/missing.png", None, 502, "HTTP 404"), ("/text.png", b"hello", 422, "cannot be decoded")],
)
def test_bad_http_images_are_named(run, file_server, path, payload, status, message):
    base, files, _ = file_server
    if payload is not None:
        files[path] = payload
    _, client = make_client(run, label_studio_url=base, api_key="k")
    resp = client.post("/predict", json=predict_body(digit_uri(0), path))
    # one bad task in a batch: the others are predicted, it gets no prediction and its reason is named
    assert resp.status_code == 200 and resp.json["results"][1] == [] and resp.json["results"][0]["result"]
    assert resp.json["skipped"][0]["task"] == 2 and message in resp.json["skipped"][0]["error"]
    alone = client.post("/predict", json=predict_body(path))  # nothing readable: the task's own error
    assert alone.status_code == status and message in alone.json["error"] and path in alone.json["error"]
    assert "task 1" in alone.json["error"]


def test_unreachable_host_is_502():
    with pytest.raises(ImageError, match="cannot fetch image") as info:
        load_task_image("http://127.0.0.1:9/a.png", timeout=2, image_hosts=("127.0.0.1",), image_networks=LOOPBACK)
    assert info.value.status == 502


# ---------------------------------------------------------------- webhook and training
@pytest.mark.parametrize(
    "body, status, message",
    [
        ("{oops", 400, "not valid JSON"),
        ({"project": {"id": 1}}, 400, "'action'"),
        ({"action": "START_TRAINING", "project": {"id": "one"}}, 400, "project"),
    ],
)
def test_webhook_rejects(client, body, status, message):
    resp = client.post("/webhook", data=body, content_type="application/json") if isinstance(body, str) \
        else client.post("/webhook", json=body)  # fmt: skip
    assert resp.status_code == status and message in resp.json["error"]


@pytest.mark.parametrize("action", ["PROJECT_UPDATED", "TASKS_CREATED", "x" * 100_000])
def test_webhook_unknown_event_is_ignored_with_a_short_fixed_body(client, action):
    resp = client.post("/webhook", json={"action": action, "project": {"id": 1}})
    assert resp.status_code == 200 and resp.json == {"status": "ignored"}  # never an echo of what came


@pytest.mark.slow
def test_start_training_runs_one_round_in_the_background(run):
    app, client = make_client(run)
    serve_project(client, 1)
    began = time.monotonic()
    first = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1, "title": "p"}})
    second = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert time.monotonic() - began < 1.0  # Label Studio's webhook timeout
    assert (first.status_code, first.json["status"]) == (201, "started")
    assert (second.status_code, second.json["status"]) == (201, "queued")  # one follow-up round
    third = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert third.json["status"] == "already queued"
    assert client.get("/health").json["training"]["state"] == "running"
    assert app.extensions["hitl"]["job"].wait(timeout=300)
    health = client.get("/health").json
    assert health["model_version"] == run.model_version(2)  # the round and its one follow-up
    assert health["training"]["state"] == "idle" and health["training"]["queued_rounds"] == 0
    assert health["training"]["rounds"] == 2 and health["training"]["coalesced_triggers"] == 1
    assert health["training"]["last_model_version"] == run.model_version(2)
    pred = client.post("/predict", json=predict_body(digit_uri(0))).json["results"][0]
    assert pred["model_version"] == run.model_version(2)


def test_annotation_events_count_toward_auto_training():
    gate = threading.Event()
    job = TrainingJob(lambda project: gate.wait(10) and "v1", auto_train_after=3)
    assert [job.note_annotation(1) for _ in range(2)] == [False, False]
    assert job.note_annotation(1) is True and job.status()["state"] == "running"
    assert job.note_annotation(1) is False  # counted while running, no second training
    gate.set()
    assert job.wait(10)
    status = job.status()
    assert (status["rounds"], status["annotation_events"], status["last_model_version"]) == (1, 4, "v1")


def test_annotation_webhook_counts(run):
    _, client = make_client(run, auto_train_after=0)
    serve_project(client, 1)
    for action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"):
        resp = client.post("/webhook", json={"action": action, "project": {"id": 1}, "annotation": {"id": 1}})
        assert resp.status_code == 201 and resp.json["status"] == "counted"
    training = client.get("/health").json["training"]
    assert training["annotation_events"] == 3 and training["state"] == "idle" and training["rounds"] == 0


def test_concurrent_triggers_never_train_twice_at_once():
    active, peak, lock = [0], [0], threading.Lock()

    def train(project):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return "v"

    job = TrainingJob(train)
    threads = [threading.Thread(target=job.trigger, args=(1,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert job.wait(10)
    assert peak[0] == 1 and job.rounds == 2 and job.coalesced == 6  # one round, one follow-up, 6 joined it


def test_failed_round_is_reported_and_the_next_one_runs():
    outcomes = iter([RuntimeError("disk full"), "v2"])

    def train(project):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    job = TrainingJob(train)
    job.trigger(1)
    job.wait(10)
    assert job.status()["last_error"] == "RuntimeError: disk full" and job.status()["state"] == "idle"
    job.trigger(1)
    job.wait(10)
    assert job.status()["last_error"] is None and job.status()["last_model_version"] == "v2"


# ---------------------------------------------------------------- basic auth
@pytest.mark.parametrize(
    "auth, status",
    [(None, 401), (("u", "wrong"), 401), (("other", "p"), 401), (("u", "p"), 200)],
)
def test_basic_auth(run, auth, status):
    _, client = make_client(run, basic_auth_user="u", basic_auth_pass="p")
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    for path in ("/health", "/versions", "/metrics"):
        assert client.get(path, headers=headers).status_code == status


# ---------------------------------------------------------------- the fast DeepLIFT path and the benchmark


def test_cli_registers_serve_and_bench_predict(run):
    from trainer.app.cli import (
        build_parser,  # serve arrives through the hitl.commands entry point
    )

    parser = build_parser()
    args = parser.parse_args(["serve", "--model-dir", str(run.directory), "--port", "9999"])
    assert (args.model_dir, args.port, args.func.__name__) == (str(run.directory), 9999, "serve")
    assert parser.parse_args(["bench", "predict", "--json"]).json


# ---------------------------------------------------------------- the token goes to Label Studio only
LS = "http://ls.example:8080"


@pytest.mark.parametrize("url", [
    "/http://evil.example/x", "/HTTP://evil.example/x", "/https://evil.example/x", "/data/../http://evil.example/",
])  # fmt: skip
def test_relative_urls_that_look_absolute_stay_on_label_studio(url):
    absolute, ours = resolve_url(url, LS)
    assert absolute == LS + url and ours  # sent to Label Studio (a 404 there), never to evil.example


@pytest.mark.parametrize("url", [
    "http://evil.example\\@ls.example:8080/x", "/ http://evil.example/x", "http://evil.example/\\x",
    "http://ls.example:8080/\x00", "//evil.example/x", "http://ls.example:8080/a b",
])  # fmt: skip
def test_parser_tricks_are_refused(url):
    with pytest.raises(ImageError):
        resolve_url(url, LS)


@pytest.mark.parametrize("url, ours", [
    ("http://ls.example:8080/data/upload/1/a.png", True), ("HTTP://LS.EXAMPLE:8080/x", True),
    ("http://ls.example/x", False), ("https://ls.example:8080/x", False), ("http://ls.example.evil:8080/x", False),
    ("http://evil.example/?http://ls.example:8080/", False), ("http://user@evil.example:8080/", False),
])  # fmt: skip
def test_only_label_studios_origin_is_ours(url, ours):
    assert resolve_url(url, LS)[1] is ours


def test_label_studio_under_a_path_prefix_owns_only_that_prefix():
    assert resolve_url("http://h:1/ls/data/x", "http://h:1/ls")[1] is True
    assert resolve_url("http://h:1/other/x", "http://h:1/ls")[1] is False
    assert resolve_url("/data/x", "http://h:1/ls") == ("http://h:1/ls/data/x", True)


def test_secrets_are_not_in_the_configs_repr(tmp_path):
    cfg = BackendConfig(model_dir=tmp_path, api_key="tok-123", basic_auth_user="u", basic_auth_pass="pw-456")
    assert "tok-123" not in repr(cfg) and "pw-456" not in repr(cfg) and "model_dir" in repr(cfg)


# ---------------------------------------------------------------- bad requests answer 4xx JSON
@pytest.mark.parametrize("route", ["/setup", "/predict", "/webhook"])
def test_deeply_nested_json_is_a_400(client, route):
    resp = client.post(route, data="[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert resp.status_code == 400 and "not valid JSON" in resp.json["error"]


def test_a_body_over_the_limit_is_a_413(client):
    resp = client.post("/predict", data=b"x" * (9 * 2**20), content_type="application/json")
    assert resp.status_code == 413 and "error" in resp.json


def test_nan_pixels_answer_422_in_valid_json_not_nan(client):
    picture = Image.fromarray(np.full((28, 28), np.nan, dtype=np.float32), mode="F")
    buffer = io.BytesIO()
    picture.save(buffer, format="TIFF")
    uri = "data:image/tiff;base64," + base64.b64encode(buffer.getvalue()).decode()
    resp = client.post("/predict", json=predict_body(uri))
    json.loads(resp.get_data(as_text=True))  # strict JSON: no NaN anywhere
    assert resp.status_code == 422 and "not finite" in resp.json["error"]


def test_a_stray_file_in_checkpoints_does_not_break_versions(client, run):
    (run.checkpoint_dir / "round-final.pt").write_bytes(b"not a checkpoint")
    resp = client.get("/versions")
    assert resp.status_code == 200 and resp.json["versions"] == [run.model_version(0)]


# ---------------------------------------------------------------- safe by default
@pytest.mark.parametrize("remote, allow, status", [
    ("127.0.0.1", False, 200), ("::1", False, 200), ("10.1.2.3", False, 403), ("192.168.0.7", False, 403),
    ("10.1.2.3", True, 200),
])  # fmt: skip
def test_without_credentials_only_this_machine_is_answered(run, remote, allow, status):
    _, client = make_client(run, allow_unauthenticated=allow)
    resp = client.get("/health", environ_base={"REMOTE_ADDR": remote})
    assert resp.status_code == status
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": remote}).status_code == status
    if status == 403:
        assert "BASIC_AUTH_USER" in resp.json["error"]
        webhook = client.post("/webhook", json={"action": "START_TRAINING", "project": 1},
                              environ_base={"REMOTE_ADDR": remote})  # fmt: skip
        assert webhook.status_code == 403  # no anonymous training round from the network


def test_credentials_open_the_backend_to_other_machines(run):
    _, client = make_client(run, basic_auth_user="u", basic_auth_pass="p")
    far = {"REMOTE_ADDR": "10.1.2.3"}
    assert client.get("/health", environ_base=far).status_code == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert client.get("/health", environ_base=far, headers=auth).status_code == 200


@pytest.mark.parametrize("value, allowed", [("true", True), ("1", True), ("", False), ("false", False)])
def test_allow_unauthenticated_is_read_from_the_environment(tmp_path, value, allowed):
    assert (
        BackendConfig.from_env({"MODEL_DIR": str(tmp_path), "ALLOW_UNAUTHENTICATED": value}).allow_unauthenticated
        is allowed
    )
    with pytest.raises(ValueError, match="ALLOW_UNAUTHENTICATED"):
        BackendConfig.from_env({"MODEL_DIR": str(tmp_path), "ALLOW_UNAUTHENTICATED": "maybe"})


def test_serve_refuses_to_listen_beyond_this_machine_without_credentials(run, monkeypatch):
    from trainer.app.cli import main

    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    monkeypatch.delenv("ALLOW_UNAUTHENTICATED", raising=False)
    assert main(["serve", "--model-dir", str(run.directory), "--host", "0.0.0.0", "--port", "1"]) == 2


# ---------------------------------------------------------------- fetching: no server-side request forgery
LOOPBACK = ("127.0.0.0/8", "::1/128")  # the test servers' network, allowed where a test fetches from them


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_named_host_that_resolves_to_an_internal_address_is_refused(host, file_server):
    """IMAGE_HOSTS names a host; DNS (or /etc/hosts) may still point it at this machine or the cloud's metadata."""
    base, files, seen = file_server
    files["/a.png"] = png_bytes(0)
    url = base.replace("127.0.0.1", host) + "/a.png"
    with pytest.raises(ImageError, match=rf"host '{host}', which resolves to (127\.0\.0\.1|::1), a loopback "
                                         r"address: allow its network in IMAGE_NETWORKS") as info:  # fmt: skip
        load_task_image(url, timeout=2, image_hosts=(host,))
    assert info.value.status == 422 and not seen  # refused before anything was sent
    image = load_task_image(url, timeout=2, image_hosts=(host,), image_networks=LOOPBACK)
    assert image.size == (28, 28) and len(seen) == 1


def test_a_redirect_to_an_allowed_name_on_an_internal_address_is_refused(file_server):
    base, files, seen = file_server
    files["/a.png"] = png_bytes(0)
    other = base.replace("127.0.0.1", "localhost")
    with pytest.raises(ImageError, match="resolves to .* loopback address"):
        load_task_image(f"/redirect?to={other}/a.png", label_studio_url=base, api_key="k", timeout=2,
                        image_hosts=("localhost",))  # fmt: skip
    assert [path for path, _ in seen] == [f"/redirect?to={other}/a.png"]  # Label Studio's own hop only


@pytest.mark.parametrize("address, internal", [
    ("127.0.0.1", True), ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True), ("169.254.169.254", True),
    ("100.64.0.1", True), ("0.0.0.0", True), ("224.0.0.1", True), ("::1", True), ("fe80::1", True), ("fd00::1", True),
    ("::ffff:127.0.0.1", True), ("::ffff:169.254.169.254", True), ("8.8.8.8", False), ("2606:4700::1111", False),
])  # fmt: skip
def test_which_addresses_are_internal(address, internal):
    assert (_kind(ipaddress.ip_address(address)) is not None) == internal


def test_the_allowed_networks_are_checked_when_the_backend_starts(run):
    with pytest.raises(ValueError, match="IMAGE_NETWORKS holds '10.0.0.0/33'"):
        BackendConfig.from_env({"MODEL_DIR": str(run.directory), "IMAGE_NETWORKS": "10.0.0.0/8, 10.0.0.0/33"})
    config = BackendConfig.from_env({"MODEL_DIR": str(run.directory), "IMAGE_NETWORKS": "10.0.0.0/8, fd00::/8"})
    assert config.image_networks == ("10.0.0.0/8", "fd00::/8")


@pytest.mark.parametrize("url", [
    "http://2130706433/a.png", "http://0x7f.1/a.png", "http://[::1]/a.png", "http://169.254.169.254/latest",
    "http://evil.example/a.png",
])  # fmt: skip
def test_hosts_other_than_label_studio_are_refused_unless_named(url, file_server):
    base, _, seen = file_server
    with pytest.raises(ImageError, match="neither Label Studio's nor in IMAGE_HOSTS") as info:
        load_task_image(url, label_studio_url=base, api_key="k", timeout=2)
    assert info.value.status == 422 and not seen  # nothing was requested at all


def test_every_redirect_hop_is_checked_and_never_carries_the_token(file_server):
    base, files, seen = file_server
    other = base.replace("127.0.0.1", "localhost")
    with pytest.raises(ImageError, match="IMAGE_HOSTS"):  # Label Studio's origin redirecting elsewhere
        load_task_image("/redirect?to=http://169.254.169.254/", label_studio_url=base, api_key="k", timeout=2)
    files["/a.png"] = png_bytes(0)
    image = load_task_image(f"/redirect?to={other}/a.png", label_studio_url=base, api_key="k", timeout=5,
                            image_hosts=("localhost",), image_networks=LOOPBACK)  # fmt: skip
    assert image.size == (28, 28)
    assert seen == [
        ("/redirect?to=http://169.254.169.254/", "Token k"),
        ("/redirect?to=" + other + "/a.png", "Token k"),
        ("/a.png", None),
    ]


def test_a_dripping_server_is_cut_off_at_the_total_deadline(file_server):
    base, _, _ = file_server
    began = time.monotonic()
    with pytest.raises(ImageError, match="cannot fetch image") as info:
        load_task_image("/drip", label_studio_url=base, timeout=1.0)
    assert info.value.status == 502 and time.monotonic() - began < 3.0


def test_data_uris_have_the_byte_limit_too():
    uri = "data:image/png;base64," + base64.b64encode(b"x" * 4000).decode()
    with pytest.raises(ImageError, match="larger than 1000 bytes") as info:
        load_task_image(uri, max_bytes=1000)
    assert info.value.status == 413


def test_connection_failures_read_alike(file_server):
    """A closed port and a refused host give the same text: the backend is no port scanner."""
    messages = set()
    for url in ("http://127.0.0.1:9/a.png", "http://127.0.0.1:1/a.png"):
        with pytest.raises(ImageError) as info:
            load_task_image(url, timeout=1, image_hosts=("127.0.0.1",), image_networks=LOOPBACK)
        messages.add(str(info.value).replace(url, "URL"))
    assert len(messages) == 1


def test_a_trigger_for_another_project_during_a_round_is_queued_not_dropped():
    gate, trained = threading.Event(), []

    def train(project):
        gate.wait(10)
        trained.append(project)
        return f"v{len(trained)}"

    job = TrainingJob(train)
    assert [job.trigger(1), job.trigger(2), job.trigger(2), job.trigger(1)] == [
        "started",
        "queued",
        "already queued",
        "queued",
    ]
    gate.set()
    assert job.wait(10) and trained == [1, 2, 1] and job.rounds == 3


def test_system_exit_in_a_round_is_reported_not_lost():
    def train(project):
        raise SystemExit(3)

    job = TrainingJob(train)
    job.trigger(1)
    assert job.wait(10)
    assert job.status()["state"] == "idle" and job.status()["last_error"] == "SystemExit: 3"


def test_a_round_cut_off_by_a_restart_is_reported_not_lost(run):
    """The backend process died while a round trained: the next backend says so in /health."""
    state = {"state": "running", "project": 7, "started_at": time.time(), "pid": 1}  # as a round's start writes it
    (run.directory / "backend-job.json").write_text(json.dumps(state))
    _, client = make_client(run)  # a new backend process on the same run directory
    training = client.get("/health").json["training"]
    assert training["state"] == "idle" and training["last_error"].startswith("Interrupted: the round for project 7")
    _, client = make_client(run)  # reported once: the note now says interrupted, not running
    assert client.get("/health").json["training"]["last_error"] is None


def test_finished_rounds_leave_nothing_to_report(run):
    job = TrainingJob(lambda project: "v1", state_path=run.directory / "job.json")
    job.trigger(1)
    assert job.wait(10)
    assert TrainingJob(lambda project: "v", state_path=run.directory / "job.json").last_error is None
