"""Both kinds of Label Studio key: telling them apart, and a personal access token against the real server."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests

from trainer.labelstudio.auth import (
    AuthError,
    LabelStudioAuth,
    expires_at,
    jwt_payload,
    token_kind,
)
from trainer.labelstudio.client import connect


def jwt(payload: dict | bytes, signature: str = "c2ln") -> str:
    """A JWT-shaped string (unsigned: only the shape and payload matter to the classifier)."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    part = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{part}.{signature}"


LEGACY = "0123456789abcdef0123456789abcdef01234567"
FUTURE = time.time() + 3600


@pytest.mark.parametrize("token, kind", [
    (LEGACY, "legacy"),
    (jwt({"token_type": "refresh", "exp": FUTURE}), "pat"),
    (jwt({"token_type": "access", "exp": FUTURE}), "access"),
    ("not.a-jwt", "legacy"),  # two dots make three parts only when none is empty
    ("a..b", "legacy"),
])  # fmt: skip
def test_token_kind(token, kind):
    assert token_kind(token) == kind


@pytest.mark.parametrize("token, match", [
    ("", "empty"),
    (jwt({"token_type": "sliding"}), "token_type 'sliding'"),
    ("aaa.%%%%.bbb", "payload is not base64url JSON"),
    (jwt(b"[1, 2]"), "not a JSON object"),
])  # fmt: skip
def test_unusable_keys_are_named_without_being_shown(token, match):
    with pytest.raises(AuthError, match=match) as err:
        token_kind(token)
    assert not token or token not in str(err.value)


def test_expiry_is_read_from_the_payload():
    assert expires_at(jwt({"exp": 1234})) == 1234.0
    assert expires_at(jwt({"token_type": "refresh"})) is None
    assert expires_at(LEGACY) is None and jwt_payload(LEGACY) is None


def test_an_expired_personal_access_token_is_refused_up_front():
    with pytest.raises(AuthError, match="has expired"):
        LabelStudioAuth("http://ls:8080", jwt({"token_type": "refresh", "exp": time.time() - 1}))


def test_legacy_token_header_and_repr_hide_nothing_but_the_key():
    auth = LabelStudioAuth("http://ls:8080/", LEGACY)
    assert auth.headers() == {"Authorization": f"Token {LEGACY}"}
    assert auth.kind == "legacy" and not auth.refreshable and auth.url == "http://ls:8080"
    assert LEGACY not in repr(auth)


# ---------------------------------------------------------------- against the real server


@pytest.mark.labelstudio
def test_both_kinds_of_key_open_the_api_and_the_sdk(label_studio, ls_key):
    auth = LabelStudioAuth(label_studio.url, ls_key)
    whoami = requests.get(f"{label_studio.url}/api/current-user/whoami", headers=auth.headers(), timeout=10)
    assert whoami.status_code == 200 and whoami.json()["email"] == label_studio.username
    assert connect(label_studio.url, ls_key).users.whoami().email == label_studio.username  # the SDK refreshes itself
    assert ls_key not in repr(auth)


@pytest.mark.labelstudio
def test_a_personal_access_token_is_not_a_legacy_token(label_studio):
    pat = label_studio.personal_access_token()
    assert token_kind(pat) == "pat"
    refused = requests.get(f"{label_studio.url}/api/current-user/whoami", headers={"Authorization": f"Token {pat}"},
                           timeout=10)  # fmt: skip
    assert refused.status_code == 401  # what the backend sent before: the 502 on /predict


@pytest.mark.labelstudio
def test_the_access_token_is_cached_and_refreshed_before_it_expires(label_studio):
    now = [time.time()]
    auth = LabelStudioAuth(label_studio.url, label_studio.personal_access_token(), clock=lambda: now[0])
    first = auth.headers()
    assert auth.headers() == first and auth.refreshes == 1  # cached
    exp = expires_at(first["Authorization"].removeprefix("Bearer "))
    assert exp is not None and exp > now[0]
    now[0] = exp - 10  # inside the early-refresh window
    time.sleep(1.1)  # a new access token differs from the old one only by its iat/exp (whole seconds)
    second = auth.headers()
    assert auth.refreshes == 2 and second != first
    whoami = requests.get(f"{label_studio.url}/api/current-user/whoami", headers=second, timeout=10)
    assert whoami.status_code == 200


@pytest.mark.labelstudio
def test_a_forged_personal_access_token_is_refused_by_label_studio(label_studio):
    forged = jwt({"token_type": "refresh", "exp": FUTURE, "jti": "x", "user_id": 1})
    auth = LabelStudioAuth(label_studio.url, forged)
    with pytest.raises(AuthError, match=r"refused the personal access token .*HTTP 401") as err:
        auth.headers()
    assert forged not in str(err.value)


# ---------------------------------------------------------------- unreadable payloads and exp
def test_a_deeply_nested_payload_is_a_clear_error_not_a_recursion_error():
    with pytest.raises(AuthError, match="payload is not base64url JSON"):
        token_kind(jwt(b"[" * 100_000 + b"]" * 100_000))


@pytest.mark.parametrize("exp", ["soon", float("nan"), float("inf"), True, [1]])
def test_an_exp_that_is_not_a_finite_number_is_refused_at_start(exp):
    token = jwt(json.dumps({"token_type": "refresh", "exp": exp}).encode())  # json.dumps writes NaN, as a forger can
    with pytest.raises(AuthError, match="'exp' is .* not a finite number"):
        LabelStudioAuth("http://ls:8080", token)
