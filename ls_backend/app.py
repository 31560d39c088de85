"""The HTTP contract of label-studio-ml 2.x on Flask 3: same routes, same JSON, thin handlers.

GET /health (and /)  {"status": "UP", "model_class", "model_version", "skipped_checkpoints", "training": {...},
                     "last_pull"}; a backend with a run per project: "projects": {id: {"model_version",
                     "skipped_checkpoints", "last_pull"}} and model_version null
POST /setup          {"project", "schema", "extra_params"} -> {"model_version"}
POST /predict        {"tasks", "project", "label_config", "params"} -> {"results": [one per task, [] if skipped],
                     "skipped": [{"task", "error"}] when some were}
POST /webhook        {"action", "project": {"id", ...}} -> 201; START_TRAINING starts a round in the background
GET /versions        {"versions": [...]}; ?project=ID: that project's
GET /metrics         Prometheus text: rounds trained, queue depth, last accuracy, training running, /predict latency

Every error is JSON ``{"error": message}`` with a 4xx/5xx status; the server stays up.
"""

from __future__ import annotations

import hmac
import json
import re
import time

from flask import Flask, Response, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from ls_backend.addresses import is_loopback_client
from ls_backend.config import BackendConfig
from ls_backend.jobs import ANNOTATION_EVENTS, TrainingJob
from ls_backend.metrics import BackendMetrics
from ls_backend.model import BackendError, SaliencyModel
from ls_backend.projects import LS_ID_MAX, label_studio_id


def create_app(config: BackendConfig, *, preload: bool = False) -> Flask:
    """The backend for a run directory or a folder of runs (``ls_backend.model``). ``preload`` loads the newest
    checkpoint of a one-run backend now and starts the rounds a previous process left queued or cut off (servers
    do; tests leave the model to the first /predict and call ``job.resume()`` themselves)."""
    model = SaliencyModel(config)
    job = TrainingJob(model.fit, auto_train_after=config.auto_train_after, state_path=model.state_dir / JOB_STATE_FILE)
    if preload:
        if not model.several:
            model.latest_version()
        job.resume()
    app = Flask("ls_backend")
    app.json = StrictJSON(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes  # larger bodies: 413, before any parsing
    metrics = BackendMetrics(model, job)
    app.extensions["hitl"] = {"model": model, "job": job, "config": config, "metrics": metrics,
                              "started": time.time()}  # fmt: skip
    _install_auth(app, config)
    _install_errors(app)
    _install_routes(app, model, job, metrics)
    return app


class StrictJSON(DefaultJSONProvider):
    """Responses in label-studio-ml's key order, and never NaN or Infinity (not JSON: Label Studio's parser
    refuses them), so a non-finite number is an error here rather than a broken answer there."""

    sort_keys = False

    def dumps(self, obj, **kwargs) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


def _json_body() -> dict:
    try:
        data = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):  # malformed, not UTF-8, or nested deeper than the parser goes
        raise BackendError("request body is not valid JSON", 400) from None
    if not isinstance(data, dict):
        raise BackendError(f"request body must be a JSON object, got {type(data).__name__}", 400)
    return data


_SETUP_PROJECT = re.compile(r"([0-9]{1,10})(?:\.[0-9]{1,20})?")  # "<id>.<created-timestamp>", ASCII digits only


def _project_id(project) -> int | None:
    """Label Studio sends "<id>.<created-timestamp>" to /setup and /predict, a project object to /webhook.
    An id is a positive integer within Label Studio's range; anything else is a 400 that shows what came."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or project == "":
        return None
    if isinstance(project, str) and (m := _SETUP_PROJECT.fullmatch(project)):
        project = int(m.group(1))
    pid = label_studio_id(project)  # bool and float are not ids
    if pid is None:
        raise BackendError(f"project must be '<id>.<timestamp>', an id or an object with 'id' (an integer "
                           f"1..{LS_ID_MAX}), got {str(project)[:40]!r}", 400)  # fmt: skip
    return pid


def _install_routes(app: Flask, model: SaliencyModel, job: TrainingJob, metrics: BackendMetrics) -> None:
    @app.get("/")
    @app.get("/health")
    def health():
        # model_version: the one /predict serves; skipped_checkpoints: newer files that failed to load, and why;
        # last_pull: what the newest pull (Start Training's too) read, its invalid annotations and warnings
        if not model.several:
            return jsonify(status="UP", model_class=type(model).__name__, model_version=model.latest_version(),
                           skipped_checkpoints=model.skipped(), training=job.status(),
                           last_pull=model.run.ledger.last_pull())  # fmt: skip
        projects = {str(pid): {"model_version": m.latest_version() if m.loaded else _newest(m),
                               "skipped_checkpoints": m.skipped(), "last_pull": m.run.ledger.last_pull()}
                    for pid, m in model.models()}  # fmt: skip
        return jsonify(status="UP", model_class=type(model).__name__, model_version=None, skipped_checkpoints=[],
                       training=job.status(), projects=projects)  # fmt: skip

    @app.post("/setup")
    def setup():
        data = _json_body()
        project_id = _project_id(data.get("project"))
        try:
            return jsonify(model_version=model.setup(data.get("schema"), project_id))
        except BackendError as exc:
            # Label Studio drops the body and shows only "422 ... Check the ML backend server console logs"
            app.logger.warning("/setup for project %s refused: %s", project_id, exc)
            raise

    @app.post("/predict")
    def predict():
        with metrics.predict_latency.time():
            data = _json_body()
            tasks = data.get("tasks")
            if not isinstance(tasks, list) or not tasks:
                raise BackendError("'tasks' must be a non-empty list of tasks", 400)
            project_id = _project_id(data.get("project"))
            outcome = model.predict(tasks, data.get("label_config"), project_id)
            if outcome.skipped:  # Label Studio reads only "results"; the reasons are for people and logs
                return jsonify(results=outcome.results, skipped=outcome.skipped)
            return jsonify(results=outcome.results)

    @app.post("/webhook")
    def webhook():
        data = _json_body()
        action = data.get("action")
        if not isinstance(action, str):
            raise BackendError("webhook body has no 'action'", 400)
        project_id = _project_id(data.get("project"))
        if action not in ("START_TRAINING", *ANNOTATION_EVENTS):  # Label Studio sends many kinds: none is ours
            return jsonify(status="ignored"), 200
        if project_id is not None and not model.serves(project_id):
            app.logger.warning("webhook %s for project %s refused: the backend does not serve it", action, project_id)
            return jsonify(error=f"project {project_id} is not served by this backend: connect the backend to it "
                           "in the project's settings (Label Studio then calls /setup)"), 403  # fmt: skip
        if action == "START_TRAINING":
            status = job.trigger(project_id)
            if status == "queue full":
                return jsonify(error=f"{job.max_queued} projects wait for a training round already: press Start "
                               "Training again when one has finished", training=job.status()), 429  # fmt: skip
            return jsonify(status=status, training=job.status()), 201
        started = job.note_annotation(project_id)
        return jsonify(status="started" if started else "counted", training=job.status()), 201

    @app.get("/versions")
    def versions():
        project = request.args.get("project")
        return jsonify(versions=model.versions(_project_id(project) if project else None))

    @app.get("/metrics")
    def prometheus_metrics():
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        return Response(body, headers={"Content-Type": content_type})


def _newest(served) -> str | None:
    """The newest checkpoint's model_version of a run whose model is not loaded (/health loads nothing)."""
    found = served.versions()
    return found[-1] if found else None


def _install_errors(app: Flask) -> None:
    @app.errorhandler(BackendError)
    def backend_error(exc: BackendError):
        return jsonify(error=str(exc)), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=f"{exc.name}: {exc.description}"), exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("request failed")
        return jsonify(error=f"{type(exc).__name__}: {exc}"), 500


# A reverse proxy on this machine makes every client look local: a request it forwarded is not this machine's.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
JOB_STATE_FILE = "backend-job.json"  # the backend's training job, so a restart reports a round it cut off


def _install_auth(app: Flask, config: BackendConfig) -> None:
    if not config.basic_auth_user:
        if not config.allow_unauthenticated:

            @app.before_request
            def this_machine_only():
                proxied = [name for name in PROXY_HEADERS if name in request.headers]
                if proxied or not is_loopback_client(request.remote_addr):
                    why = f" (a request forwarded by a proxy: it carries {', '.join(proxied)})" if proxied else ""
                    return jsonify(
                        error=f"this backend has no credentials, so it answers only on its own machine{why}: "
                        "set BASIC_AUTH_USER and BASIC_AUTH_PASS (and give Label Studio the same), or "
                        "ALLOW_UNAUTHENTICATED=true on a trusted network"
                    ), 403
                return None

        return
    user, password = config.basic_auth_user.encode(), (config.basic_auth_pass or "").encode()

    @app.before_request
    def require_basic_auth():
        auth = request.authorization
        given_user = (auth.username or "").encode() if auth else b""
        given_pass = (auth.password or "").encode() if auth else b""
        # compare both, always, so the time taken does not tell which one was wrong
        ok = hmac.compare_digest(given_user, user) & hmac.compare_digest(given_pass, password)
        if not ok:
            return Response('{"error": "basic auth required"}', 401, {"WWW-Authenticate": 'Basic realm="hitl"'},
                            mimetype="application/json")  # fmt: skip
        return None
