"""How raw HTTP calls authenticate to Label Studio: a legacy token or a personal access token.

Label Studio 1.23 hands out personal access tokens (PATs) by default: JWT refresh tokens
(``header.payload.signature``, base64url, payload ``"token_type": "refresh"``). It refuses them as
``Authorization: Token <jwt>``: a PAT is exchanged for a short-lived access token
(``POST /api/token/refresh/`` with ``{"refresh": <PAT>}`` -> ``{"access": ...}``), sent as ``Bearer``.
The legacy token (40 hex characters, ``Authorization: Token <key>``) works only where the server enables it
(``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``). ``LabelStudioAuth`` accepts both and hides the difference.

The SDK client (``client.connect``) uses it too, through ``TokenAuth``: the SDK's own exchange posts the PAT to
``/api/token/refresh/`` at the host's root (outside a path prefix) and follows a 307 with it. Every request that
carries a token obeys ``trainer.labelstudio.origin`` and follows no redirect. Secrets never reach a repr, a log
line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
import time
from collections.abc import Callable, Generator
from typing import Literal

import httpx
import requests

from trainer.labelstudio.origin import token_problem

TokenKind = Literal["legacy", "pat", "access"]
# A request extension: the caller takes a redirect answer itself (Label Studio's presign of a cloud URI answers 303)
# and fetches its Location without the token; the client never follows one.
REDIRECT_ANSWER = "hitl.redirect_answer"
REFRESH_PATH = "/api/token/refresh/"
REFRESH_EARLY_S = 30.0  # refresh this long before the access token's exp, so a slow request still carries a live one


class AuthError(ValueError):
    """A key Label Studio cannot accept, or a refresh it refused. Never holds the key itself."""


def jwt_payload(token: str) -> dict | None:
    """The (unverified) payload of a JWT, or None when ``token`` is not shaped like one (three base64url parts).

    Raises AuthError for a token shaped like a JWT whose payload is not base64url JSON.
    """
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, RecursionError) as exc:  # RecursionError: nested deeper than json parses
        raise AuthError("the Label Studio key has three dot-separated parts like a JWT, but its payload is not "
                        "base64url JSON: copy the whole token again") from exc  # fmt: skip
    if not isinstance(payload, dict):
        raise AuthError("the Label Studio key looks like a JWT, but its payload is not a JSON object")
    return payload


def token_kind(token: str) -> TokenKind:
    """``"pat"`` for a personal access token (a JWT refresh token), ``"access"`` for a JWT access token,
    ``"legacy"`` for anything that is not a JWT. AuthError for a JWT of another type."""
    if not isinstance(token, str) or not token.strip():
        raise AuthError("the Label Studio key is empty: set LABEL_STUDIO_API_KEY")
    payload = jwt_payload(token.strip())
    if payload is None:
        return "legacy"
    kind = payload.get("token_type")
    if kind == "refresh":
        return "pat"
    if kind == "access":
        return "access"
    raise AuthError(f"the Label Studio key is a JWT with token_type {kind!r}; expected a personal access token "
                    "(token_type 'refresh') or a legacy token")  # fmt: skip


def expires_at(token: str) -> float | None:
    """A JWT's ``exp`` (seconds since the epoch), None when it has none or is not a JWT.

    Raises AuthError for an ``exp`` that is not a finite number (``"soon"``, NaN, ``true``): read as "never", it
    would keep a token forever."""
    payload = jwt_payload(token)
    exp = None if payload is None else payload.get("exp")
    if exp is None:
        return None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        raise AuthError(
            f"the Label Studio token's 'exp' is {type(exp).__name__} {str(exp)[:20]!r}, not a finite number "
            "of seconds: Label Studio never issues such a token, copy it again"
        )
    return float(exp)


class LabelStudioAuth:
    """The ``Authorization`` header for one Label Studio server and key; thread-safe.

    url: the server's base URL (the PAT is exchanged at ``<url>/api/token/refresh/``). api_key: a legacy
    token, a PAT or an access token (used as is until it expires; it cannot be refreshed). The access token a
    PAT yields is cached and refreshed ``refresh_early_s`` before its ``exp``, or when Label Studio answers 401
    (``refused``: at most one refresh per access token, shared by concurrent requests).
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0, refresh_early_s: float = REFRESH_EARLY_S,
                 clock: Callable[[], float] = time.time,
                 session: requests.Session | httpx.Client | None = None) -> None:  # fmt: skip
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AuthError(f"Label Studio URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.kind = token_kind(api_key)
        self._key = api_key.strip()
        self._timeout = timeout
        self._early = refresh_early_s
        self._clock = clock
        self._http = session or requests
        self._lock = threading.Lock()
        self._access: str | None = None
        self._access_exp: float | None = None
        self._after_401: str | None = None  # the access token minted because its predecessor met a 401
        self._renew_for_401 = False
        self.refreshes = 0  # how many access tokens this object fetched (tests and /metrics read it)
        if self.kind != "legacy":
            exp = expires_at(self._key)  # an unreadable exp is refused here, at start, where the key was given
            if exp is not None and exp <= self._clock():
                raise AuthError(
                    f"the Label Studio {'personal access' if self.kind == 'pat' else 'access'} token "
                    "has expired: create a new one (Account & Settings -> Personal Access Token)"
                )

    def __repr__(self) -> str:
        return f"LabelStudioAuth(url={self.url!r}, kind={self.kind!r})"

    @property
    def refreshable(self) -> bool:
        """Whether a 401 may be cured by a fresh access token (only a PAT can mint one)."""
        return self.kind == "pat"

    def headers(self) -> dict[str, str]:
        """``{"Authorization": ...}`` to send to Label Studio now, refreshing the access token when due."""
        if self.kind == "legacy":
            return {"Authorization": f"Token {self._key}"}
        if self.kind == "access":
            return {"Authorization": f"Bearer {self._key}"}
        return {"Authorization": f"Bearer {self._access_token()}"}

    def expire(self) -> None:
        """Forget the cached access token: the next ``headers`` refreshes."""
        with self._lock:
            self._access = self._access_exp = None

    def refused(self, sent: dict[str, str]) -> bool:
        """Label Studio answered 401 to a request that carried the headers ``sent``: whether sending it again
        with ``headers()`` may succeed. True at most once per access token: concurrent 401s to the same token
        share one refresh, and a token fresh from a 401's refresh that meets a 401 too is reported, not
        refreshed again (Label Studio refuses the key itself, and every request would mint one more)."""
        if not self.refreshable:
            return False
        token = sent.get("Authorization", "").removeprefix("Bearer ")
        with self._lock:
            if token == self._after_401:
                return False
            if token == self._access:
                self._access = self._access_exp = None
                self._renew_for_401 = True
            return True  # another request may already have refreshed: try its token

    def _access_token(self) -> str:
        with self._lock:
            if self._access is None or (
                self._access_exp is not None and self._clock() >= self._access_exp - self._early
            ):
                access = self._refresh()
                try:
                    exp = expires_at(access)
                except AuthError:
                    exp = -math.inf  # Label Studio's own token, unreadable exp: use it once, refresh when next needed
                self._access, self._access_exp = access, exp
                self._after_401 = access if self._renew_for_401 else None
                self._renew_for_401 = False
                self.refreshes += 1
            return self._access

    def _refresh(self) -> str:
        where = self.url + REFRESH_PATH
        # Never follow a redirect: a 307 would post the personal access token to wherever it points.
        no_redirects = (
            {"follow_redirects": False} if isinstance(self._http, httpx.Client) else {"allow_redirects": False}
        )
        try:
            resp = self._http.post(where, json={"refresh": self._key}, timeout=self._timeout, **no_redirects)
        except (requests.RequestException, httpx.HTTPError) as exc:
            raise AuthError(
                f"cannot reach {where} to exchange the personal access token: {type(exc).__name__}"
            ) from None
        if 300 <= resp.status_code < 400:
            raise AuthError(
                f"{where} answered HTTP {resp.status_code} (a redirect to "
                f"{resp.headers.get('location', '?')[:100]!r}); the personal access token is never sent "
                "after a redirect: set LABEL_STUDIO_URL to the address Label Studio answers at"
            )
        if resp.status_code != 200:
            hint = (" (revoked, expired, or made by another Label Studio server)" if resp.status_code in (400, 401)
                    else "")  # fmt: skip
            raise AuthError(f"Label Studio refused the personal access token at {where}: HTTP {resp.status_code}{hint}")
        try:
            access = resp.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"{where} answered 200 without an 'access' token in JSON") from None
        if not isinstance(access, str) or jwt_payload(access) is None:
            raise AuthError(f"{where} answered an 'access' value that is not a JWT")
        return access


class TokenAuth(httpx.Auth):
    """An httpx auth flow that puts ``auth``'s header on requests to its Label Studio only.

    A request elsewhere (``trainer.labelstudio.origin``) raises AuthError before anything is sent; a redirect
    answer raises too (the token never follows one; the client must not follow redirects itself), unless the request
    carries the ``REDIRECT_ANSWER`` extension: its caller reads the Location and fetches it without the token. A 401
    is sent once more with a refreshed access token when ``auth.refused`` says that may help.
    """

    requires_request_body = True  # a request is sent again after a refresh

    def __init__(self, auth: LabelStudioAuth) -> None:
        self.auth = auth

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        url = request.url
        path = url.raw_path.split(b"?", 1)[0].decode("ascii")
        problem = token_problem(url.scheme, url.host, url.port, path, self.auth.url)
        if problem:
            raise AuthError(f"refusing to send the Label Studio token with {request.method} to "
                            f"{url.scheme}://{url.host}{':' + str(url.port) if url.port else ''}{path[:80]}: {problem} "
                            f"(LABEL_STUDIO_URL is {self.auth.url})")  # fmt: skip
        for attempt in (1, 2):
            sent = self.auth.headers()
            request.headers.update(sent)
            response = yield request
            if response.is_redirect and not request.extensions.get(REDIRECT_ANSWER):
                raise AuthError(f"Label Studio answered {request.method} {path[:80]} with HTTP {response.status_code} "
                                f"to {response.headers.get('location', '?')[:100]!r}: a request that carries the "
                                "token follows no redirect; set LABEL_STUDIO_URL to the address Label Studio "
                                "answers at")  # fmt: skip
            if response.status_code != 401 or attempt == 2 or not self.auth.refused(sent):
                return
