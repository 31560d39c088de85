"""Fetching a task's image: Label Studio uploads and local files, http(s) URLs and data URIs.

Label Studio gives the backend URLs as the task holds them: relative ones (``/data/upload/3/x.png``,
``/data/local-files/?d=images/x.png``) are served by Label Studio and need its API key, so they are
resolved against ``LABEL_STUDIO_URL`` and fetched with the key's ``Authorization`` header
(``trainer.labelstudio.auth``: ``Token <legacy key>``, or ``Bearer <access token>`` for a personal access token).
The key is sent to Label Studio only, never to another host. Every failure is an ``ImageError`` naming the URL.

The key goes only where ``trainer.labelstudio.origin`` allows (Label Studio's scheme, host, port and path prefix,
no dot segments), and never after a redirect.

A host other than Label Studio's must be named in ``IMAGE_HOSTS`` and is then checked again after DNS: every
address its name resolves to, and every IPv4 address such an IPv6 one embeds, must be public (not loopback,
private, link-local, shared, reserved or multicast) unless it lies in one of the operator's ``IMAGE_NETWORKS``;
the connection goes to the address that was checked (``ls_backend.transport``), never through an environment
proxy, and the whole fetch has one deadline.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
from urllib.parse import unquote_to_bytes, urljoin

import requests
import urllib3
from PIL import Image
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from ls_backend.addresses import internal_kind
from ls_backend.transport import Deadline, InternalAddress, fetch_session
from trainer.data.view import BadImageError, decode_image
from trainer.labelstudio.auth import AuthError, LabelStudioAuth
from trainer.labelstudio.origin import path_problem, scope_problem

_kind = internal_kind  # the name the backend's tests know


class ImageError(ValueError):
    """A task image that cannot be had. ``status``: the HTTP status the backend answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _short(url: str) -> str:
    return url if len(url) <= 80 else url[:77] + "..."


def resolve_url(url: str, label_studio_url: str | None) -> tuple[str, bool]:
    """``(absolute URL, whether it is Label Studio's)``; raises ImageError for what cannot be fetched.

    Whether a URL is Label Studio's (and so gets the API key) is decided on the final, joined URL, parsed by the
    parser that sends it (urllib3's): same scheme, host and port as ``LABEL_STUDIO_URL`` and under its path
    (``trainer.labelstudio.origin``). A relative URL is appended to that base, never ``urljoin``-ed
    (``/http://host/x`` stays on Label Studio). Backslashes, whitespace and control characters are refused: parsers
    disagree on them; so is a Label Studio URL whose path a proxy could decode into another (``/ls/%2e%2e/x``).
    """
    if not isinstance(url, str) or not url.strip():
        raise ImageError(f"image URL must be a non-empty string, got {url!r}", 400)
    if any(ch == "\\" or ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ImageError(f"image URL {_short(url)!r} holds a backslash, whitespace or a control character", 400)
    if url.startswith("//"):
        raise ImageError(f"image URL {_short(url)!r} has no scheme: use a full http(s) URL or a relative one", 400)
    if url.startswith("/"):
        if not label_studio_url:
            raise ImageError(
                f"image URL {_short(url)!r} is relative to Label Studio, but LABEL_STUDIO_URL is not set", 422
            )
        url = label_studio_url.rstrip("/") + url
    try:
        parsed = parse_url(url)
    except LocationParseError as exc:
        raise ImageError(f"image URL {_short(url)!r} cannot be parsed: {exc}", 400) from exc
    if (parsed.scheme or "").lower() not in ("http", "https"):
        raise ImageError(
            f"image URL {_short(url)!r} has unsupported scheme {parsed.scheme or '(none)'!r}: "
            "use a Label Studio upload or local-files URL, http(s) or a data URI",
            422,
        )
    if not label_studio_url:
        return url, False
    parts = (parsed.scheme or "", parsed.host or "", parsed.port, parsed.path or "/")
    if scope_problem(*parts, label_studio_url) is not None:
        return url, False
    problem = path_problem(parts[3])
    if problem:
        raise ImageError(f"image URL {_short(url)!r} is on Label Studio, but {problem}: refused, since a proxy may "
                         "decode it into another path", 400)  # fmt: skip
    return url, True


MAX_REDIRECTS = 3


def fetch_image_bytes(
    url: str,
    *,
    label_studio_url: str | None = None,
    api_key: str | None = None,
    auth: LabelStudioAuth | None = None,
    timeout: float = 10.0,
    max_bytes: int = 50 * 2**20,
    image_hosts: tuple[str, ...] = (),
    image_networks: tuple[str, ...] = (),
    session: requests.Session | None = None,
) -> bytes:
    """The encoded image behind ``url`` (a data URI is decoded in place), within ``timeout`` seconds in all and
    ``max_bytes`` bytes from any source.

    Only Label Studio's origin gets the API key: ``auth`` (long-lived, so a personal access token's access token is
    cached across calls) or ``api_key`` (a one-off ``LabelStudioAuth``). A 401 from Label Studio with a personal
    access token refreshes the access token and tries once more. Any other host must be named in ``image_hosts``
    (the operator's ``IMAGE_HOSTS``), so neither a decimal or hex spelling of an address nor a redirect can reach an
    internal service; every redirect hop is checked the same way, and after DNS every address of such a host must be
    public or in ``image_networks`` (CIDR strings, the operator's ``IMAGE_NETWORKS``). Failures to connect all read
    alike (no port scanning). ``session`` serves Label Studio's own URLs; other hosts go through a pinned session.
    """
    if isinstance(url, str) and url.startswith("data:"):
        return _data_uri_bytes(url, max_bytes)
    allowed = {h.lower() for h in image_hosts}
    auth = auth or _one_off_auth(label_studio_url, api_key)
    with Deadline(timeout) as deadline, fetch_session(check=False) as direct, \
            fetch_session(tuple(ipaddress.ip_network(n) for n in image_networks)) as pinned:  # fmt: skip
        try:
            return _fetch(url, label_studio_url, auth, allowed, max_bytes, deadline, session or direct, pinned)
        except ImageError:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            late = ": it took longer than the timeout" if deadline.passed else ""
            raise ImageError(f"cannot fetch image {_short(url)!r}{late}", 502) from exc


def _fetch(url: str, label_studio_url: str | None, auth: LabelStudioAuth | None, allowed: set[str], max_bytes: int,
           deadline: Deadline, direct: requests.Session, pinned: requests.Session) -> bytes:  # fmt: skip
    current, retried = url, False
    hops = 0
    while hops <= MAX_REDIRECTS:
        absolute, ours = resolve_url(current, label_studio_url)
        host = (parse_url(absolute).host or "").lower()
        if not ours and host not in allowed:
            raise ImageError(f"image URL {_short(url)!r} is on host {host!r}, which is neither Label Studio's nor "
                             "in IMAGE_HOSTS", 422)  # fmt: skip
        headers = _auth_headers(auth, url) if ours and auth else {}
        left = deadline.left()
        http = direct if ours else pinned
        try:
            with http.get(absolute, headers=headers, timeout=(max(0.1, left), max(0.1, left)), stream=True,
                          allow_redirects=False) as resp:  # fmt: skip
                if resp.is_redirect:
                    current = urljoin(absolute, resp.headers.get("location", ""))
                    hops += 1
                    continue
                if resp.status_code == 401 and ours and auth and not retried and auth.refused(headers):
                    retried = True  # the cached access token died early (a server restart): once per token
                    continue
                if resp.status_code != 200:
                    hint = " (check LABEL_STUDIO_API_KEY)" if ours and resp.status_code in (401, 403) else ""
                    raise ImageError(f"fetching image {_short(url)!r} gave HTTP {resp.status_code}{hint}", 502)
                return _read(resp, url, max_bytes, deadline)
        except InternalAddress as exc:
            raise ImageError(
                f"image URL {_short(url)!r} is on host {host!r}, which resolves to {exc.address}, "
                f"{exc.kind} address: allow its network in IMAGE_NETWORKS to fetch from it",
                422,
            ) from None
    raise ImageError(f"image URL {_short(url)!r} redirects more than {MAX_REDIRECTS} times", 502)


def _one_off_auth(label_studio_url: str | None, api_key: str | None) -> LabelStudioAuth | None:
    if not (api_key and label_studio_url):
        return None
    try:
        return LabelStudioAuth(label_studio_url, api_key)
    except AuthError as exc:
        raise ImageError(f"LABEL_STUDIO_API_KEY unusable: {exc}", 502) from None


def _auth_headers(auth: LabelStudioAuth, url: str) -> dict[str, str]:
    try:
        return auth.headers()
    except AuthError as exc:
        raise ImageError(f"fetching image {_short(url)!r}: {exc}", 502) from None


def _read(resp: requests.Response, url: str, max_bytes: int, deadline: Deadline) -> bytes:
    """The body, up to ``max_bytes``, before ``deadline``: ``read1`` returns whatever has arrived, so a server
    that drips a byte at a time is cut off at the deadline, not waited for."""
    chunks, size = [], 0
    while chunk := resp.raw.read1(64 * 1024, decode_content=True):
        size += len(chunk)
        if size > max_bytes:
            raise ImageError(f"image {_short(url)!r} is larger than {max_bytes} bytes", 413)
        if deadline.passed or deadline.left() < 0:
            raise ImageError(f"cannot fetch image {_short(url)!r}: it took longer than the timeout", 502)
        chunks.append(chunk)
    if deadline.passed:  # the cut socket read as the end of a body without Content-Length: not the whole image
        raise ImageError(f"cannot fetch image {_short(url)!r}: it took longer than the timeout", 502)
    return b"".join(chunks)


def _data_uri_bytes(uri: str, max_bytes: int) -> bytes:
    head, sep, payload = uri.partition(",")
    if not sep:
        raise ImageError(f"data URI {_short(uri)!r} has no ',' before its payload", 400)
    if len(payload) * 3 // 4 > max_bytes:  # base64 (or percent-encoded) text is at least 3/4 of the bytes
        raise ImageError(f"data URI {_short(uri)!r} is larger than {max_bytes} bytes", 413)
    try:
        if head.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"data URI {_short(uri)!r} is not valid base64: {exc}", 400) from exc


def load_task_image(url: str, **fetch_options) -> Image.Image:
    """Fetch and decode one task image (decoded as training decodes files: ``trainer.data.view``);
    ``fetch_options`` as for ``fetch_image_bytes``."""
    data = fetch_image_bytes(url, **fetch_options)
    try:
        return decode_image(data, _short(url))
    except BadImageError as exc:
        raise ImageError(f"image {_short(url)!r} cannot be decoded: {exc.problems[0][1]}", 422) from exc


def to_data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    """A PIL image as a data URI (tests and the benchmark build tasks with it)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
