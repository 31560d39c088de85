"""The one rule for where Label Studio's token may go: pure functions, no I/O.

A request carries the token only when it goes to ``LABEL_STUDIO_URL``'s scheme, host and port, under its path
(``http://host/ls`` owns ``/ls/...`` only), and its path holds no dot segment, encoded or not, no encoded slash
and no backslash: a proxy in front of Label Studio may decode ``/ls/%2e%2e/other-app/`` into another
application's path. Callers judge the URL as the library that sends it parsed it (urllib3 for requests, httpx
for the SDK), and never follow a redirect with the token.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_DECODE_ROUNDS = 4  # a proxy chain may decode more than once: %252e -> %2e -> .


def _port(scheme: str, port: int | None) -> int | None:
    return port if port is not None else DEFAULT_PORTS.get(scheme)


def scope_problem(scheme: str, host: str, port: int | None, path: str, base_url: str) -> str | None:
    """Why a URL with these parts lies outside ``base_url`` (another scheme, host, port, or outside its path
    prefix), or None when it lies inside. ``path``: the path as it will be sent (still percent-encoded)."""
    base = urlsplit(base_url)
    base_scheme, scheme = base.scheme.lower(), (scheme or "").lower()
    if scheme != base_scheme:
        return f"its scheme is {scheme or '(none)'!r}, not {base_scheme!r}"
    base_host, host = (base.hostname or "").lower(), (host or "").lower().strip("[]")
    if host != base_host:
        return f"its host is {host!r}, not {base_host!r}"
    if _port(scheme, port) != _port(base_scheme, base.port):
        return f"its port is {_port(scheme, port)}, not {_port(base_scheme, base.port)}"
    prefix = base.path.rstrip("/") + "/"
    if not ((path or "/") + "/").startswith(prefix):
        return f"its path {path!r} is outside the path prefix {prefix!r}"
    return None


def path_problem(path: str) -> str | None:
    """Why ``path`` (percent-encoded, as sent) may be read as another path by a server or proxy that decodes it:
    a ``.`` or ``..`` segment (``%2e`` or not, decoded up to a few times), an encoded ``/`` or a backslash."""
    for segment in (path or "").split("/"):
        decoded = segment
        for _ in range(_DECODE_ROUNDS):
            if "\\" in decoded:
                return f"its path segment {segment!r} holds a backslash"
            if "/" in decoded:
                return f"its path segment {segment!r} holds an encoded slash"
            if decoded in (".", ".."):
                return f"its path holds the dot segment {segment!r}"
            step = unquote(decoded)
            if step == decoded:
                break
            decoded = step
        else:
            return f"its path segment {segment!r} is percent-encoded {_DECODE_ROUNDS} times over"
    return None


def token_problem(scheme: str, host: str, port: int | None, path: str, base_url: str) -> str | None:
    """Why a request with these parts must not carry the token of the Label Studio at ``base_url``, or None."""
    return scope_problem(scheme, host, port, path, base_url) or path_problem(path)
