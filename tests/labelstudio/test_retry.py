"""The retry layer under every Label Studio call: what is retried, how often, how long, and the error after."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from trainer.app.lsserver import free_port
from trainer.labelstudio.client import connect
from trainer.labelstudio.retry import (
    LabelStudioUnavailable,
    RetryPolicy,
    RetryTransport,
    activity,
)


class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next status of the server's script (then 200), and counts them."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append(self.command)
        status = self.server.script.pop(0) if self.server.script else 200
        body = json.dumps({"status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.script, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client_for(url: str, waits: list[float]) -> tuple[httpx.Client, RetryTransport]:
    transport = RetryTransport(url, RetryPolicy(tries=4, base_s=0.5), sleep=waits.append)
    return httpx.Client(base_url=url, transport=transport), transport


@pytest.mark.parametrize("method, script, sent, status", [
    ("GET", [503, 502, 504], 4, 200),   # gateway and refusals: retried for a GET
    ("POST", [429, 503], 3, 200),       # refused before any work: retried even for a POST
    ("GET", [400], 1, 400),             # a client error is the caller's to handle, at once
    ("GET", [404], 1, 404),
    ("POST", [409], 1, 409),            # the SDK would retry this one
    ("GET", [500], 1, 500),             # a server bug does not get better by asking again
])  # fmt: skip
def test_what_is_retried(scripted, method, script, sent, status):
    url = f"http://127.0.0.1:{scripted.server_port}"
    scripted.script[:] = script
    waits = []
    client, _ = client_for(url, waits)
    assert client.request(method, "/api/x", json={}).status_code == status
    assert len(scripted.seen) == sent
    assert waits == [0.5, 1.0, 2.0][: sent - 1]  # exponential from base_s


def test_a_post_that_a_gateway_lost_is_not_sent_twice(scripted):
    url = f"http://127.0.0.1:{scripted.server_port}"
    scripted.script[:] = [502]
    client, _ = client_for(url, [])
    with pytest.raises(LabelStudioUnavailable, match=r"POST /api/projects/1/import: HTTP 502, not retried"):
        client.post("/api/projects/1/import", json=[])
    assert scripted.seen == ["POST"]


def test_giving_up_names_the_server_the_request_and_the_activity(scripted):
    url = f"http://127.0.0.1:{scripted.server_port}"
    scripted.script[:] = [503] * 10
    waits = []
    client, _ = client_for(url, waits)
    with activity("push of round 3 to project 7"), pytest.raises(LabelStudioUnavailable) as err:
        client.get("/api/tasks")
    assert len(scripted.seen) == 4 and waits == [0.5, 1.0, 2.0]
    message = str(err.value)
    for part in (url, "GET /api/tasks", "push of round 3 to project 7", "HTTP 503", "after 4 tries"):
        assert part in message


def test_a_server_that_is_down_is_tried_four_times_through_the_sdk():
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused
    client = connect(url, "0" * 40, retry=RetryPolicy(tries=4, base_s=0.01))
    transport = client._client_wrapper.httpx_client.httpx_client._transport
    with pytest.raises(LabelStudioUnavailable, match=rf"Label Studio at {url} did not answer GET /api/projects/5/: "
                                                    r".*ConnectError.*after 4 tries"):  # fmt: skip
        client.projects.get(id=5)
    assert transport.attempts == 4  # the SDK's own retries are off: 4, not 4 x 3


def test_the_policy_is_checked():
    with pytest.raises(ValueError, match="tries must be >= 1, got 0"):
        RetryPolicy(tries=0)
    assert [RetryPolicy(base_s=0.5, max_delay_s=3).delay(k) for k in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3]
