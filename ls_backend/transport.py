"""The connections an image fetch makes: never through an environment proxy, checked addresses, one deadline.

- A host other than Label Studio's is resolved, judged (``ls_backend.addresses``) and connected to in one place,
  inside the connection, so a name that resolves again to another address (DNS rebinding) gains nothing.
- ``HTTP(S)_PROXY`` is never used: through a proxy the connection goes to the proxy, so the check would judge
  the proxy's address, not the peer's, and Label Studio's token would pass through the proxy.
- ``Deadline`` bounds the whole fetch (connect, status and header lines, body): a per-read timeout lets a server
  that drips one header line a second hold a fetch for ever, so at the deadline every socket of the fetch is
  shut down, whatever it is waiting for.
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import os
import socket
import threading
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from ls_backend.addresses import internal_kind


class InternalAddress(Exception):
    """Raised inside a connection: the host resolved to an address that is not public nor allowed."""

    def __init__(self, address: str, kind: str) -> None:
        super().__init__(address)
        self.address, self.kind = address, kind


class Deadline:
    """The end of one fetch, ``seconds`` from now; connections made inside ``with`` are cut when it passes."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.passed = False
        self._open: list[tuple[HTTPConnection, socket.socket]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._cut)
        self._timer.daemon = True
        self._token: contextvars.Token | None = None

    def __enter__(self) -> Deadline:
        self._token = _current.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _current.reset(self._token)

    def left(self) -> float:
        return self.at - time.monotonic()

    def watch(self, connection: HTTPConnection, sock: socket.socket) -> None:
        with self._lock:
            if self.passed:
                sock.close()
                raise TimeoutError("the fetch's deadline has passed")
            self._open.append((connection, sock))

    def _cut(self) -> None:
        with self._lock:
            self.passed = True
            for connection, raw in self._open:
                # shutdown wakes a thread blocked in recv; TLS moves the descriptor to connection.sock
                for sock in (getattr(connection, "sock", None), raw):
                    try:
                        if sock is not None:
                            sock.shutdown(socket.SHUT_RDWR)
                    except OSError:  # closed already, or its descriptor moved to the TLS socket
                        pass


_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("image_fetch_deadline", default=None)


def checked_addresses(host: str, port: int, networks: tuple) -> list[str]:
    """The addresses ``host`` resolves to, once every one of them is public or in ``networks``."""
    addresses = list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)))
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone id is not part of the address
        kind = internal_kind(address)
        if kind is not None and not any(address in network for network in networks):
            raise InternalAddress(text, kind)
    return addresses


class _DeadlineConnection(HTTPConnection):
    """Connects to the checked addresses (``check``) or as urllib3 does, and hands the socket to the deadline."""

    networks: tuple = ()
    check = True

    def _new_conn(self) -> socket.socket:
        try:
            addresses = checked_addresses(self._dns_host, self.port, self.networks) if self.check else [self._dns_host]
            for i, address in enumerate(addresses):  # in resolver order, as create_connection would
                try:
                    sock = create_connection((address, self.port), self.timeout, source_address=self.source_address,
                                             socket_options=self.socket_options)  # fmt: skip
                    break
                except OSError:
                    if i == len(addresses) - 1:
                        raise
            else:
                raise OSError(f"{self.host} resolves to no address")
            deadline = _current.get()
            if deadline is not None:
                deadline.watch(self, sock)
            return sock
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:  # name resolution included: every failure to connect reads alike
            raise NewConnectionError(self, f"failed to establish a new connection: {exc}") from exc


class _DeadlineSecureConnection(_DeadlineConnection, HTTPSConnection):
    pass


@functools.lru_cache(maxsize=16)
def _pool_classes(networks: tuple, check: bool) -> dict[str, type]:
    attributes = {"networks": networks, "check": check}
    plain = type("Connection", (_DeadlineConnection,), attributes)
    secure = type("SecureConnection", (_DeadlineSecureConnection,), attributes)
    return {"http": type("Pool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
            "https": type("SecurePool", (HTTPSConnectionPool,), {"ConnectionCls": secure})}  # fmt: skip


class _Adapter(HTTPAdapter):
    def __init__(self, networks: tuple, check: bool) -> None:
        self.networks, self.check = networks, check
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self.networks, self.check)


def fetch_session(networks: tuple = (), *, check: bool = True) -> requests.Session:
    """A session for one fetch: no environment proxy, no ``.netrc``; with ``check``, connections go only to public
    addresses or to those in ``networks`` (ip_network objects). Label Studio's own URLs use ``check=False``."""
    session = requests.Session()
    session.trust_env = False  # the address check must judge the real peer, and the token must not pass a proxy
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True  # still honoured
    adapter = _Adapter(networks, check)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def pinned_session(networks: tuple = ()) -> requests.Session:
    """``fetch_session`` with the address check (the name the backend's tests and callers know)."""
    return fetch_session(networks, check=True)
