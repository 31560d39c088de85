"""Where Label Studio's token may go: the origin rule, and the SDK client against small real HTTP servers."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from label_studio_sdk.core.api_error import ApiError

from tests.labelstudio.test_auth import jwt
from trainer.labelstudio.auth import AuthError, LabelStudioAuth
from trainer.labelstudio.client import LABEL_STUDIO_ERRORS, connect, label_studio_http
from trainer.labelstudio.origin import path_problem, scope_problem, token_problem
from trainer.labelstudio.retry import RetryPolicy

PAT = jwt({"token_type": "refresh", "exp": time.time() + 3600})
ONE_TRY = RetryPolicy(tries=1)


@pytest.mark.parametrize("url, problem", [
    ("http://h:1/ls/api/x", None), ("HTTP://H:1/ls/", None), ("http://h:1/ls", None),
    ("https://h:1/ls/x", "scheme is 'https'"), ("http://g:1/ls/x", "host is 'g'"), ("http://h:2/ls/x", "port is 2"),
    ("http://h/ls/x", "port is 80"), ("http://h:1/api/token/refresh/", "outside the path prefix '/ls/'"),
    ("http://h:1/lsx/y", "outside the path prefix"),
])  # fmt: skip
def test_the_scope_is_scheme_host_port_and_path_prefix(url, problem):
    u = httpx.URL(url)
    found = scope_problem(u.scheme, u.host, u.port, u.raw_path.decode(), "http://h:1/ls")
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize("path", [
    "/ls/%2e%2e/other-app/x", "/ls/%2E%2e/x", "/ls/./x", "/ls/../x", "/ls/.%2e/x", "/ls/%252e%252e/x",
    "/ls/a%2fb", "/ls/a%5cb", "/ls/a\\b", "/ls/%2e",
])  # fmt: skip
def test_dot_segments_encoded_slashes_and_backslashes_never_carry_the_token(path):
    assert path_problem(path) is not None
    assert token_problem("http", "h", 1, path, "http://h:1/ls") is not None


@pytest.mark.parametrize("path", ["/ls/data/upload/1/a.png", "/ls/x%20y.png", "/ls/100%25.png", "/ls/a..b/.c/"])
def test_ordinary_paths_pass(path):
    assert token_problem("http", "h", 1, path, "http://h:1/ls") is None


# ---------------------------------------------------------------- a fake Label Studio, with or without a prefix
class _LabelStudio(BaseHTTPRequestHandler):
    prefix = ""
    redirect_refresh_to: str | None = None
    redirect_get_to: str | None = None
    refuse_all = False
    access_exp: object = None  # the exp of the access tokens it hands out; None: five minutes from now
    seen: list = []
    issued: list = []

    def _answer(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.seen.append(("POST", self.path, self.headers.get("Authorization"), body))
        if self.path != self.prefix + "/api/token/refresh/":
            return self._answer(404)
        if self.redirect_refresh_to:
            return self._answer(307, headers={"Location": self.redirect_refresh_to + "/api/token/refresh/"})
        exp = time.time() + 300 if self.access_exp is None else self.access_exp
        access = jwt({"token_type": "access", "exp": exp, "n": len(self.issued)})
        self.issued.append(access)
        return self._answer(200, {"access": access})

    def do_GET(self):  # noqa: N802
        self.seen.append(("GET", self.path, self.headers.get("Authorization"), ""))
        if self.path == self.prefix + "/redirect":
            return self._answer(307, headers={"Location": self.redirect_get_to or "/"})
        if self.path != self.prefix + "/api/current-user/whoami":
            return self._answer(404)
        if self.refuse_all or self.headers.get("Authorization") not in [f"Bearer {a}" for a in self.issued]:
            return self._answer(401, {"detail": "refused"})
        return self._answer(200, {"id": 1, "email": "a@example.org", "username": "a"})

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(**class attributes) -> (base URL without the prefix, the handler class); shut down afterwards."""
    servers = []

    def start(**attributes):
        handler = type("LS", (_LabelStudio,), {"seen": [], "issued": [], **attributes})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", handler

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_sdk_refreshes_under_the_path_prefix(serve):
    root, ls = serve(prefix="/ls")
    assert connect(root + "/ls", PAT, retry=ONE_TRY).users.whoami().email == "a@example.org"
    assert [(m, p) for m, p, _, _ in ls.seen] == [
        ("POST", "/ls/api/token/refresh/"),
        ("GET", "/ls/api/current-user/whoami"),
    ]


def test_the_sdk_never_follows_a_refresh_redirect_with_the_token(serve):
    other, elsewhere = serve()
    root, ls = serve(redirect_refresh_to=other)
    with pytest.raises(LABEL_STUDIO_ERRORS, match="never sent after a redirect") as info:
        connect(root, PAT, retry=ONE_TRY).users.whoami()
    assert elsewhere.seen == [] and PAT not in str(info.value)
    assert [(m, p) for m, p, _, _ in ls.seen] == [("POST", "/api/token/refresh/")]


def test_a_redirect_on_an_api_call_is_not_followed_with_the_token(serve):
    other, elsewhere = serve()
    root, ls = serve(redirect_get_to=other + "/x")
    http = label_studio_http(root, PAT, retry=ONE_TRY)
    with pytest.raises(AuthError, match="HTTP 307 .* follows no redirect"):
        http.get(root + "/redirect")
    assert elsewhere.seen == []


@pytest.mark.parametrize("path", ["/%2e%2e/other-app/x", "/../other-app/x", "/a%2fb"])
def test_the_sdk_client_refuses_paths_that_leave_the_prefix(serve, path):
    root, ls = serve(prefix="/ls")
    http = label_studio_http(root + "/ls", PAT, retry=ONE_TRY)
    with pytest.raises(AuthError, match="refusing to send the Label Studio token"):
        http.get(root + "/ls" + path)
    with pytest.raises(AuthError, match="refusing .*port is"):
        http.get(root.rsplit(":", 1)[0] + ":1/ls/api/x")
    assert ls.seen == []  # nothing was sent, not even a refresh


def test_a_401_to_a_fresh_token_is_reported_not_refreshed_again(serve):
    root, ls = serve(refuse_all=True)
    client = connect(root, PAT, retry=ONE_TRY)
    for _ in range(20):
        with pytest.raises(ApiError) as info:
            client.users.whoami()
        assert info.value.status_code == 401
    assert len(ls.issued) == 2  # the first access token, and one more after its 401: not one per request


def test_a_401_is_cured_by_one_refresh(serve):
    root, ls = serve()
    client = connect(root, PAT, retry=ONE_TRY)
    assert client.users.whoami().email == "a@example.org"
    ls.issued.clear()  # the server forgets its access tokens (a restart)
    assert client.users.whoami().email == "a@example.org" and len(ls.issued) == 1


def test_concurrent_401s_share_one_refresh(serve):
    root, ls = serve()
    auth = LabelStudioAuth(root, PAT)
    first = auth.headers()
    ls.issued.clear()  # every request with the first token now meets a 401
    answers = []

    def request_again():
        if auth.refused(first):
            answers.append(httpx.get(root + "/api/current-user/whoami", headers=auth.headers()).status_code)

    threads = [threading.Thread(target=request_again) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == [200] * 8 and auth.refreshes == 2 and len(ls.issued) == 1


@pytest.mark.parametrize("exp", ["soon", float("nan")])
def test_an_access_token_with_an_unreadable_exp_counts_as_expired(serve, exp):
    root, ls = serve(access_exp=exp)
    auth = LabelStudioAuth(root, PAT)
    assert auth.headers() != auth.headers() and auth.refreshes == 2  # never kept: refreshed each time it is needed
