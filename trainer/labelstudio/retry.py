"""Retries for every call to Label Studio: one httpx transport under the SDK's client (``client.connect``).

The SDK's own retries are switched off: they retry 409 and every 5xx, POSTs included, starting at 1 s. Here a
request is tried at most ``tries`` times with exponential backoff (``base_s``, 2 x ``base_s``, ...), and only
when trying again cannot do the work twice:

- connection refused or timed out before the request was sent: any method (nothing reached the server);
- 429 and 503 (the server refused before doing anything): any method;
- a dropped connection, a read timeout, 502 and 504: only idempotent methods (GET, PUT, DELETE, ...), since a
  POST such as a task import may have been carried out. A push that fails that way is made whole by the next
  push, which reconciles the project's tasks with the ledger.

Every other answer, 4xx included, goes back to the SDK at once, without its ``Set-Cookie`` header. When the tries
run out, or a failure may not be retried, ``LabelStudioUnavailable`` names the server, the request and, if the
caller said so with ``activity``, what was being done.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
REFUSED_STATUSES = frozenset({429, 503})  # the server did nothing: safe to send again, whatever the method
GATEWAY_STATUSES = frozenset({502, 504})  # a proxy lost the answer: the server may have acted on it

_activity: contextvars.ContextVar[str | None] = contextvars.ContextVar("label_studio_activity", default=None)


class LabelStudioUnavailable(ConnectionError):
    """Label Studio could not be reached (or kept refusing) after the retries; the message says where and what."""


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``tries`` attempts; before attempt k + 1 wait ``min(base_s * 2**(k-1), max_delay_s)``."""

    tries: int = 4
    base_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise ValueError(f"tries must be >= 1, got {self.tries}")
        if self.base_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"base_s and max_delay_s must be >= 0, got {self.base_s} and {self.max_delay_s}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.base_s * 2 ** (attempt - 1), self.max_delay_s)


@contextmanager
def activity(text: str) -> Iterator[None]:
    """Name what the calls inside are for (``"push of round 2 to project 7"``), for the error if they fail."""
    token = _activity.set(text)
    try:
        yield
    finally:
        _activity.reset(token)


class RetryTransport(httpx.BaseTransport):
    """An httpx transport that retries as the module says. ``server``: the Label Studio URL, for messages."""

    def __init__(self, server: str, policy: RetryPolicy = RetryPolicy(), *, inner: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        self.server = server.rstrip("/")
        self.policy = policy
        self.inner = inner or httpx.HTTPTransport()
        self.sleep = sleep
        self.attempts = 0  # requests sent in all, retries included (tests and diagnostics read it)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        began = time.monotonic()
        for attempt in range(1, self.policy.tries + 1):
            self.attempts += 1
            try:
                response = self.inner.handle_request(request)
            except httpx.TransportError as exc:
                retry = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) or request.method in IDEMPOTENT
                failure, cause = f"{type(exc).__name__}: {exc}", exc
            else:
                status = response.status_code
                retry = status in REFUSED_STATUSES or (status in GATEWAY_STATUSES and request.method in IDEMPOTENT)
                if not (retry or status in GATEWAY_STATUSES):
                    # Label Studio answers a token with a 14-day session cookie; the client never needs it, and
                    # the SDK's errors print every response header (seen in the backend's /health).
                    response.headers.pop("set-cookie", None)
                    return response
                response.close()
                failure, cause = f"HTTP {status}", None
            if not retry or attempt == self.policy.tries:
                raise self._error(request, failure, attempt, time.monotonic() - began, retried=retry) from cause
            self.sleep(self.policy.delay(attempt))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _error(self, request: httpx.Request, failure: str, attempts: int, seconds: float, *,
               retried: bool) -> LabelStudioUnavailable:  # fmt: skip
        doing = _activity.get()
        what = f"{request.method} {request.url.path}" + (f" ({doing})" if doing else "")
        tried = (f"after {attempts} tries over {seconds:.1f} s" if retried else
                 "not retried: the server may have acted on it")  # fmt: skip
        return LabelStudioUnavailable(
            f"Label Studio at {self.server} did not answer {what}: {failure}, {tried}. Check that it is running "
            f"and reachable, then run the command again: what was done is in the ledger and is not repeated"
        )

    def close(self) -> None:
        self.inner.close()
