"""How raw HTTP calls authenticate to Label Studio: a legacy token or a personal access token.

Label Studio 1.23 hands out personal access tokens (PATs) by default: JWT refresh tokens
(``header.payload.signature``, base64url, payload ``"token_type": "refresh"``). It refuses them as
``Authorization: Token <jwt>``: a PAT is exchanged for a short-lived access token
(``POST /api/token/refresh/`` with ``{"refresh": <PAT>}`` -> ``{"access": ...}``), sent as ``Bearer``.
The legacy token (40 hex characters, ``Authorization: Token <key>``) works only where the server enables it
(``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``). ``LabelStudioAuth`` accepts both and hides the difference.

The SDK client (``label_studio_sdk.LabelStudio``) does the same exchange itself when given a PAT as
``api_key``, so only raw HTTP (the backend's image fetch) needs this. Secrets never reach a repr, a log
line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from typing import Literal

import requests

TokenKind = Literal["legacy", "pat", "access"]
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
    except (binascii.Error, ValueError) as exc:
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
    """A JWT's ``exp`` (seconds since the epoch), None when it has none or is not a JWT."""
    payload = jwt_payload(token)
    exp = None if payload is None else payload.get("exp")
    return float(exp) if isinstance(exp, (int, float)) else None


class LabelStudioAuth:
    """The ``Authorization`` header for one Label Studio server and key; thread-safe.

    url: the server's base URL (the PAT is exchanged at ``<url>/api/token/refresh/``). api_key: a legacy
    token, a PAT or an access token (used as is until it expires; it cannot be refreshed). The access token a
    PAT yields is cached and refreshed ``refresh_early_s`` before its ``exp``, or when Label Studio answers 401
    (call ``expire`` and ask again: ``headers`` then refreshes once).
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0, refresh_early_s: float = REFRESH_EARLY_S,
                 clock: Callable[[], float] = time.time, session: requests.Session | None = None) -> None:  # fmt: skip
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
        self.refreshes = 0  # how many access tokens this object fetched (tests and /metrics read it)
        if self.kind != "legacy":
            exp = expires_at(self._key)
            if exp is not None and exp <= self._clock():
                raise AuthError(f"the Label Studio {'personal access' if self.kind == 'pat' else 'access'} token "
                                "has expired: create a new one (Account & Settings -> Personal Access Token)")  # fmt: skip

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
        """Forget the cached access token (Label Studio answered 401 to it): the next ``headers`` refreshes."""
        with self._lock:
            self._access = self._access_exp = None

    def _access_token(self) -> str:
        with self._lock:
            if self._access is None or (self._access_exp is not None and self._clock() >= self._access_exp - self._early):
                self._access = self._refresh()
                self._access_exp = expires_at(self._access)
                self.refreshes += 1
            return self._access

    def _refresh(self) -> str:
        where = self.url + REFRESH_PATH
        try:
            resp = self._http.post(where, json={"refresh": self._key}, timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise AuthError(f"cannot reach {where} to exchange the personal access token: {type(exc).__name__}") from None
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
