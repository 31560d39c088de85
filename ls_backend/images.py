"""Fetching a task's image: Label Studio uploads and local files, cloud storage URIs, http(s) URLs and data URIs.

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

A cloud storage URI (``s3://``, ``gs://``, ``azure-blob://``) is resolved by Label Studio for the task that holds
it (``trainer.labelstudio.storage``): the presign request goes to Label Studio with the key; a redirect it answers
with is fetched without the key, through the pinned session (so a storage on a private or loopback address needs
its network in ``IMAGE_NETWORKS``), its host allowed for that one hop because Label Studio's storage named it, never
because a task did; a further redirect from the storage follows the rules above, without the key. A 200 from Label
Studio is the image itself (a storage that does not presign: Label Studio streams the object).
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
from trainer.labelstudio.storage import is_cloud_uri, is_presign_path, presign_refused, presign_url, storage_refused

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
    task_id: int | None = None,
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

    A cloud storage URI is resolved by Label Studio for task ``task_id`` (the module's docstring says how); the
    storage's host named in Label Studio's redirect needs no ``image_hosts`` entry, its addresses are checked alike.
    """
    if isinstance(url, str) and url.startswith("data:"):
        return _data_uri_bytes(url, max_bytes)
    allowed = {h.lower() for h in image_hosts}
    auth = auth or _one_off_auth(label_studio_url, api_key)
    start = _presign(url, task_id, label_studio_url, auth) if is_cloud_uri(url) else url
    with Deadline(timeout) as deadline, fetch_session(check=False) as direct, \
            fetch_session(tuple(ipaddress.ip_network(n) for n in image_networks)) as pinned:  # fmt: skip
        hops = _Hops(url, start, label_studio_url, auth, allowed, max_bytes, deadline, session or direct, pinned)
        try:
            return hops.fetch()
        except ImageError:
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            late = ": it took longer than the timeout" if deadline.passed else ""
            raise ImageError(f"cannot fetch image {_short(url)!r}{late}", 502) from exc


def _presign(uri: str, task_id, label_studio_url: str | None, auth: LabelStudioAuth | None) -> str:
    """Label Studio's presign URL for the cloud ``uri`` of task ``task_id``; ImageError when it cannot be asked."""
    if not label_studio_url or auth is None:
        raise ImageError(f"image {_short(uri)!r} is in cloud storage, which only Label Studio can resolve: set "
                         "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", 422)  # fmt: skip
    if task_id is None:
        raise ImageError(f"image {_short(uri)!r} is in cloud storage, resolved by Label Studio for its task, but the "
                         "task has no id", 422)  # fmt: skip
    try:
        return presign_url(label_studio_url, task_id, uri)
    except ValueError as exc:
        raise ImageError(str(exc), 422) from None


class _Hops:
    """One fetch, hop by hop: ``start`` (``url`` itself, or Label Studio's presign URL for a cloud ``url``), then
    at most ``MAX_REDIRECTS`` redirects, each judged by ``resolve_url`` and the host rules before it is sent."""

    def __init__(self, url: str, start: str, label_studio_url: str | None, auth: LabelStudioAuth | None,
                 allowed: set[str], max_bytes: int, deadline: Deadline, direct: requests.Session,
                 pinned: requests.Session) -> None:  # fmt: skip
        self.url, self.start, self.label_studio_url, self.auth = url, start, label_studio_url, auth
        self.allowed, self.max_bytes, self.deadline = allowed, max_bytes, deadline
        self.direct, self.pinned = direct, pinned
        self.cloud = is_cloud_uri(url)
        self.storage_host: str | None = None  # the host Label Studio's presign answer named: allowed for that hop
        self.token = True  # no hop after the storage's carries the key

    def fetch(self) -> bytes:
        current, retried, hops = self.start, False, 0
        while hops <= MAX_REDIRECTS:
            try:
                absolute, ours = resolve_url(current, self.label_studio_url)
            except ImageError as exc:
                if self.token:  # no presign answer so far: the URL is the task's, or a redirect's as before
                    raise
                # the message would quote the URL, a presigned one included (its signature is a credential)
                raise ImageError(f"{self._where()} redirects to a URL that is not http(s) or cannot be parsed",
                                 exc.status) from None  # fmt: skip
            host = (parse_url(absolute).host or "").lower()
            storage = self.storage_host is not None
            if storage:
                ours = False  # the presigned URL goes through the pinned session, without the key, wherever it is
            elif not ours and host not in self.allowed:
                raise ImageError(f"{self._where()} is on host {host!r}, which is neither Label Studio's nor in "
                                 "IMAGE_HOSTS", 422)  # fmt: skip
            headers = _auth_headers(self.auth, self.url) if ours and self.auth and self.token else {}
            left = self.deadline.left()
            try:
                with (self.direct if ours else self.pinned).get(
                    absolute, headers=headers, timeout=(max(0.1, left), max(0.1, left)), stream=True,
                    allow_redirects=False,
                ) as resp:  # fmt: skip
                    if resp.is_redirect:
                        current = urljoin(absolute, resp.headers.get("location", ""))
                        presigned = hops == 0 and ours and self._presigns(absolute)
                        self.storage_host = (parse_url(current).host or "").lower() if presigned else None
                        self.token = self.token and not presigned
                        hops += 1
                        continue
                    if resp.status_code == 401 and self.auth and headers and not retried and self.auth.refused(headers):
                        retried = True  # the cached access token died early (a server restart): once per token
                        continue
                    if resp.status_code != 200:
                        presign = hops == 0 and ours and self._presigns(absolute)
                        raise ImageError(self._refused(resp.status_code, ours, storage, presign), 502)
                    return _read(resp, self.url, self.max_bytes, self.deadline)
            except InternalAddress as exc:
                named = " (named by Label Studio's storage)" if storage else ""
                raise ImageError(
                    f"{self._where()} is on host {host!r}{named}, which resolves to {exc.address}, {exc.kind} "
                    "address: allow its network in IMAGE_NETWORKS to fetch from it",
                    422,
                ) from None
        raise ImageError(f"image URL {_short(self.url)!r} redirects more than {MAX_REDIRECTS} times", 502)

    def _presigns(self, absolute: str) -> bool:
        """Whether the first request asked Label Studio to resolve a cloud URI: the task's ``s3://`` (or the like),
        or a link to Label Studio's resolver that the tasks API gave in its place."""
        return self.cloud or is_presign_path(absolute, self.label_studio_url or "")

    def _where(self) -> str:
        """The fetch, as messages name it: the task's URL, never a presigned one (its signature is a credential)."""
        if self.cloud or not self.token:
            return f"image {_short(self.url)!r}, resolved by Label Studio,"
        return f"image URL {_short(self.url)!r}"

    def _refused(self, status: int, ours: bool, storage: bool, presign: bool) -> str:
        """What an answer other than 200 means, by who gave it (``presign``: Label Studio's, to the presign)."""
        if storage:
            return storage_refused(self.url, self.storage_host or "", status)
        if presign:
            return presign_refused(self.url, status)
        hint = " (check LABEL_STUDIO_API_KEY)" if ours and status in (401, 403) else ""
        return f"fetching image {_short(self.url)!r} gave HTTP {status}{hint}"


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
