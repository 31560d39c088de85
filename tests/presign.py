"""Two small HTTP servers on 127.0.0.1 for the unit tests of the presign flow (no Label Studio, no moto; the tests
against the real ones are tests/ls_backend/test_cloud_storage.py and tests/labelstudio/test_snapshot_cloud.py).

``Resolver`` answers ``/tasks/<id>/presign/?fileuri=<base64url>`` as Label Studio 1.23 does: it decodes the URI the
same way (``base64.urlsafe_b64decode``), refuses a request without ``Authorization`` (401) and answers with
``mode``: a 303 to the storage (``/<bucket>/<key>?X-Amz-Signature=...`` at ``storage``), the bytes (200, a storage
that does not presign), or a status. ``Storage`` serves ``objects`` by path, or a redirect at ``/moved``.
Both record every request as ``(path, headers)``.
"""

from __future__ import annotations

import base64
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SIGNATURE = "X-Amz-Signature=5ec2e7"


class _Recording(BaseHTTPRequestHandler):
    seen: list[tuple[str, dict[str, str]]] = []

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Resolver(_Recording):
    storage = ""  # the storage's base URL
    mode: str | int = "redirect"  # "redirect", "bytes", or an HTTP status
    objects: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append((self.path, dict(self.headers.items())))
        parts = urlsplit(self.path)
        if not parts.path.startswith("/tasks/") or not parts.path.endswith(("/presign/", "/resolve/")):
            return self.answer(404)
        if "Authorization" not in self.headers:
            return self.answer(401)
        uri = base64.urlsafe_b64decode(parse_qs(parts.query)["fileuri"][0]).decode()
        key = "/" + uri.partition("://")[2]  # s3://bucket/key -> /bucket/key
        if self.mode == "redirect":
            return self.answer(303, headers={"Location": f"{self.storage}{key}?{SIGNATURE}",
                                             "Set-Cookie": "sessionid=label-studio-session"})  # fmt: skip
        if self.mode == "bytes":
            body = self.objects.get(key)
            return self.answer(200 if body else 424, body or b"")
        return self.answer(int(self.mode))


class Storage(_Recording):
    objects: dict[str, bytes] = {}
    moved_to = ""

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append((self.path, dict(self.headers.items())))
        path = urlsplit(self.path).path
        if path.endswith("/moved.png"):
            return self.answer(307, headers={"Location": self.moved_to})
        if path.endswith("/broken.png"):
            return self.answer(500)
        body = self.objects.get(path)
        return self.answer(200 if body else 403, body or b"<Error><Code>AccessDenied</Code></Error>")


@contextmanager
def serving(handler: type[_Recording], **attributes):
    """``handler`` (with its own ``seen`` and the given attributes) on a free port: (base URL, the handler class)."""
    cls = type(handler.__name__, (handler,), {"seen": [], **attributes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", cls
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def label_studio_and_storage(objects: dict[str, bytes], *, mode: str | int = "redirect", storage_host="localhost"):
    """(Label Studio's URL, its handler, the storage's URL, its handler): the storage is reached by the name
    ``storage_host`` (another host than Label Studio's 127.0.0.1), Label Studio's redirects name it so."""
    with serving(Storage, objects=objects) as (storage_url, storage):
        named = storage_url.replace("127.0.0.1", storage_host)
        with serving(Resolver, storage=named, mode=mode, objects=objects) as (ls_url, resolver):
            yield ls_url, resolver, named, storage
