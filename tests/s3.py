"""A real S3-protocol server on localhost for the cloud storage tests: moto's standalone server, in its own virtual
environment (``make moto-env``: its python-dateutil < 3 clashes with ours), behind a small recording reverse
proxy, and a Label Studio project whose tasks come from a real Label Studio S3 import storage over it.

Label Studio's storage names the proxy as its ``s3_endpoint``, so every request that reaches "the storage's host"
(Label Studio's own listing, the presigned GETs of the backend and the trainer) passes the proxy and is recorded
as it arrived, headers and all: what a secrets test searches.
"""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from tests.ls_backend.stock import STOCK, STOCK_CLASSES, picture
from trainer.app.lsserver import REPO_ROOT, free_port

BUCKET = "team-images"
REGION = "us-east-1"
# The storage's own credentials, as a team would paste them into Label Studio's storage form (moto accepts any).
ACCESS_KEY_ID = "AKIAHITLTESTSTORAGE01"
SECRET_ACCESS_KEY = "s3cr3t-storage-key-that-must-stay-in-label-studio"


def default_moto_venv() -> Path:
    """moto's venv: ``$HITL_MOTO_VENV`` if set, else ``<repo>/.venv-moto`` (``make moto-env``)."""
    return Path(os.environ.get("HITL_MOTO_VENV") or REPO_ROOT / ".venv-moto")


@dataclass
class Seen:
    """One request as the storage's host received it."""

    method: str
    path: str
    headers: dict[str, str]

    def text(self) -> str:
        return f"{self.method} {self.path}\n" + "\n".join(f"{k}: {v}" for k, v in self.headers.items())


@dataclass
class S3Server:
    """moto's standalone server (``moto_url``) and the recording proxy in front of it (``endpoint``, what Label
    Studio's storage is given); ``seen``: every request the proxy forwarded."""

    moto_url: str
    endpoint: str
    seen: list[Seen] = field(default_factory=list)

    # The test's own writes go straight to moto (not through the proxy: its record is what the others sent). moto
    # refuses an anonymous delete but checks no signature: any AWS Authorization header makes a request the owner's.
    OWNER = {"Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{REGION}/s3/aws4_request, "
                              "SignedHeaders=host, Signature=0"}  # fmt: skip

    def put(self, bucket: str, key: str, data: bytes) -> None:
        resp = requests.put(f"{self.moto_url}/{bucket}/{key}", data=data, headers=self.OWNER, timeout=30)
        assert resp.status_code == 200, resp.text

    def delete(self, bucket: str, key: str) -> None:
        resp = requests.delete(f"{self.moto_url}/{bucket}/{key}", headers=self.OWNER, timeout=30)
        assert resp.status_code == 204, resp.text

    def create_bucket(self, bucket: str) -> None:
        assert requests.put(f"{self.moto_url}/{bucket}", headers=self.OWNER, timeout=30).status_code == 200


def start_moto(log_path: Path, venv: Path | None = None) -> tuple[subprocess.Popen, str]:
    """moto's server on 127.0.0.1 and a free port, answering; (process, URL)."""
    venv = venv or default_moto_venv()
    executable = venv / "bin" / "moto_server"
    if not executable.exists():
        raise FileNotFoundError(f"moto's server is not installed at {executable}: run `make moto-env`, or set "
                                "HITL_MOTO_VENV to a venv with moto[server]")  # fmt: skip
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = open(log_path, "ab")  # noqa: SIM115 (closed when the process is stopped)
    proc = subprocess.Popen([str(executable), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}: see {log_path}")
        try:
            if requests.get(f"{url}/moto-api/", timeout=2).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    stop_moto(proc)
    raise TimeoutError(f"moto_server did not answer on {url} within 60 s: see {log_path}")


def stop_moto(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class _Proxy(BaseHTTPRequestHandler):
    """Forwards every request to ``upstream`` as it came (Host header included: the signatures cover it) and
    records it."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    seen: list[Seen] = []

    def _forward(self) -> None:
        self.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 (http.server's names)

    def log_message(self, *args) -> None:
        pass


def start_proxy(upstream_url: str, seen: list[Seen]) -> ThreadingHTTPServer:
    host, port = upstream_url.removeprefix("http://").split(":")
    handler = type("Proxy", (_Proxy,), {"upstream": (host, int(port)), "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def png(seed: int, size: int = 28) -> bytes:
    out = io.BytesIO()
    picture(seed, size).save(out, "PNG")
    return out.getvalue()


@dataclass
class S3Project:
    """A stock-template project whose tasks come from an S3 import storage: ``tasks`` maps each task id to the
    object's key; ``uris``: task id -> the ``s3://`` URI its data holds."""

    project_id: int
    storage_id: int
    prefix: str
    tasks: dict[int, str]
    uris: dict[int, str]


def s3_project(label_studio, ls_client, s3: S3Server, prefix: str, names: list[str], *,
               presign: bool = True) -> S3Project:  # fmt: skip
    """``names`` as 28 px PNGs under ``prefix/`` in the bucket, a stock-template project, a Label Studio S3 import
    storage over them (through the proxy: ``s3.endpoint``), synced: one task per object."""
    project = ls_client.projects.create(title=f"s3 {prefix}", label_config=STOCK)
    for n, name in enumerate(names):
        s3.put(BUCKET, f"{prefix}/{name}", png(700 + 10 * len(prefix) + n))
    headers = {"Authorization": f"Token {label_studio.token}"}
    made = requests.post(f"{label_studio.url}/api/storages/s3", headers=headers, timeout=60, json={
        "project": project.id, "title": f"bucket {prefix}", "bucket": BUCKET, "prefix": prefix,
        "s3_endpoint": s3.endpoint, "region_name": REGION, "aws_access_key_id": ACCESS_KEY_ID,
        "aws_secret_access_key": SECRET_ACCESS_KEY, "presign": presign, "presign_ttl": 15, "use_blob_urls": True,
        "regex_filter": r".*\.png",
    })  # fmt: skip
    assert made.status_code == 201, made.text
    storage_id = made.json()["id"]
    synced = requests.post(f"{label_studio.url}/api/storages/s3/{storage_id}/sync", headers=headers, timeout=120)
    assert synced.status_code == 200 and synced.json()["status"] == "completed", synced.text
    # resolve_uri=False: the task data as stored (the tasks API otherwise hands out its /tasks/<id>/resolve/ links)
    tasks = {t.id: t.data["image"] for t in ls_client.tasks.list(project=project.id, resolve_uri=False)}
    assert sorted(tasks.values()) == sorted(f"s3://{BUCKET}/{prefix}/{name}" for name in names), tasks
    return S3Project(project.id, storage_id, prefix, {i: u.rsplit("/", 1)[1] for i, u in tasks.items()}, tasks)


def choice(label: str) -> dict:
    return {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


__all__ = ["BUCKET", "STOCK", "STOCK_CLASSES", "S3Project", "S3Server", "choice", "s3_project", "start_moto"]
