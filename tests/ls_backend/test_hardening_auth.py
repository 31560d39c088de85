"""What the backend trusts: this machine's clients, the image fetch's addresses, proxies, deadlines and tokens."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from ls_backend.addresses import embedded_ipv4, internal_kind, is_loopback_client
from ls_backend.images import ImageError, fetch_image_bytes, load_task_image, resolve_url
from tests.labelstudio.test_origin import PAT, serve  # noqa: F401 (serve is a fixture)
from tests.ls_backend.test_app import file_server, make_client, png_bytes, run  # noqa: F401 (fixtures)
from trainer.labelstudio.auth import LabelStudioAuth

LOOPBACK_NETS = ("127.0.0.0/8", "::1/128")


# ---------------------------------------------------------------- who counts as this machine
@pytest.mark.parametrize("remote, local", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("::1a:2b", False), ("::1:0:0:1", False), ("::ffff:10.0.0.1", False), ("1.2.3.4", False), ("", False),
    ("not an address", False), (None, False),
])  # fmt: skip
def test_the_loopback_check_parses_addresses(remote, local):
    assert is_loopback_client(remote) is local


@pytest.mark.parametrize("remote, status", [("::1a:2b", 403), ("::ffff:127.0.0.1", 200), ("127.8.9.10", 200)])
def test_without_credentials_a_remote_ipv6_is_not_local(run, remote, status):  # noqa: F811
    _, client = make_client(run)
    assert client.get("/health", environ_base={"REMOTE_ADDR": remote}).status_code == status


@pytest.mark.parametrize("header", [("X-Forwarded-For", "10.1.2.3"), ("Forwarded", "for=10.1.2.3"),
                                    ("X-Real-IP", "10.1.2.3")])  # fmt: skip
def test_a_request_forwarded_by_a_local_proxy_is_not_local(run, header):  # noqa: F811
    _, client = make_client(run)
    resp = client.get("/health", environ_base={"REMOTE_ADDR": "127.0.0.1"}, headers=[header])
    assert resp.status_code == 403 and f"forwarded by a proxy: it carries {header[0]}" in resp.json["error"]
    assert client.get("/health", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200


# ---------------------------------------------------------------- IPv6 addresses that lead to IPv4 ones
@pytest.mark.parametrize(
    "address, kind",
    [
        ("::127.0.0.1", "a loopback"),
        ("::ffff:0:127.0.0.1", "a loopback"),
        ("64:ff9b::a9fe:a9fe", "a link-local"),
        ("64:ff9b:1::a9fe:a9fe", "a link-local"),
        ("2002:a9fe:a9fe::1", "a link-local"),
        ("::ffff:10.0.0.1", "a private or reserved"),
        ("2002:7f00:1::1", "a loopback"),
        ("64:ff9b::808:808", None),
        ("2002:808:808::1", None),
        ("::ffff:0:8.8.8.8", None),
        ("2606:4700::1111", None),
        ("::1", "a loopback"),
        ("::", "an unspecified"),
    ],
)
def test_ipv6_forms_embedding_an_internal_ipv4_are_internal(address, kind):
    assert internal_kind(ipaddress.ip_address(address)) == kind


def test_teredo_names_both_of_its_ipv4_addresses():
    found = embedded_ipv4(ipaddress.ip_address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert [str(a) for a in found] == ["65.54.227.120", "192.0.2.45"]


# ---------------------------------------------------------------- paths a proxy could decode into another
@pytest.mark.parametrize("url", ["/%2e%2e/other-app/x", "/%2E%2E/x", "/a%2fb/x", "/%252e%252e/x",
                                 "http://h:1/ls/%2e%2e/other-app/x"])  # fmt: skip
def test_a_label_studio_path_a_proxy_could_decode_is_refused(url):
    with pytest.raises(ImageError, match="a proxy may decode it into another path") as info:
        resolve_url(url, "http://h:1/ls")
    assert info.value.status == 400


def test_nothing_is_sent_for_such_a_path(file_server):  # noqa: F811
    base, files, seen = file_server
    with pytest.raises(ImageError, match="dot segment"):
        load_task_image("/%2e%2e/other-app/x", label_studio_url=base + "/ls", api_key="k", timeout=2)
    assert seen == []


# ---------------------------------------------------------------- never through an environment proxy
@pytest.fixture
def env_proxy(file_server, monkeypatch):  # noqa: F811
    """An HTTP proxy named in the environment (a recording file server): what it saw."""
    proxy, files, seen = file_server
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    return seen


def test_an_environment_proxy_does_not_skip_the_address_check(env_proxy):
    with pytest.raises(ImageError, match="a loopback address"):
        load_task_image("http://localhost:9/a.png", timeout=2, image_hosts=("localhost",))
    assert env_proxy == []


def test_label_studios_token_does_not_pass_an_environment_proxy(env_proxy, serve):  # noqa: F811
    root, ls = serve(refuse_all=True)
    with pytest.raises(ImageError, match="HTTP 404"):
        fetch_image_bytes("/a.png", label_studio_url=root, api_key="k" * 40, timeout=2)
    assert env_proxy == [] and [p for _, p, _, _ in ls.seen] == ["/a.png"]


# ---------------------------------------------------------------- one deadline for the whole fetch
@pytest.fixture
def header_drip():
    """A server that answers a status line, then one header line every 0.2 s for 20 s: its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve_one(conn):
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for i in range(100):
                    if stop.wait(0.2):
                        return
                    conn.sendall(b"X-Drip-%d: 1\r\n" % i)
            except OSError:
                return

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


@pytest.mark.parametrize("where", ["label studio", "image host"])
def test_a_server_dripping_header_lines_is_cut_off_at_the_deadline(header_drip, where):
    options = ({"label_studio_url": header_drip} if where == "label studio" else
               {"image_hosts": ("127.0.0.1",), "image_networks": LOOPBACK_NETS})  # fmt: skip
    began = time.monotonic()
    with pytest.raises(ImageError, match="took longer than the timeout") as info:
        fetch_image_bytes(header_drip + "/a.png", timeout=1.0, **options)
    assert info.value.status == 502 and time.monotonic() - began < 2.0


# ---------------------------------------------------------------- one refresh per access token
def test_twenty_refused_fetches_make_two_refreshes_not_twenty_one(serve):  # noqa: F811
    root, ls = serve(refuse_all=True)
    auth = LabelStudioAuth(root, PAT)
    for _ in range(20):
        with pytest.raises(ImageError, match="HTTP 401"):
            fetch_image_bytes("/api/current-user/whoami", label_studio_url=root, auth=auth, timeout=2)
    assert auth.refreshes == 2
