"""A task's image, read from Label Studio by the trainer (the snapshot of a team's project).

What a task may hold:

- a Label Studio URL: relative (``/data/upload/3/x.png``, ``/data/local-files/?d=images/x.png``) or absolute on
  Label Studio's own origin; read through the SDK client's own httpx client (``client.label_studio_http``: the
  token goes only to ``LABEL_STUDIO_URL``'s origin and path, no redirect is followed);
- a cloud storage URI (``s3://``, ``gs://``, ``azure-blob://``; ``trainer.labelstudio.storage``): the same client
  asks Label Studio's presign endpoint for the task, with the token, following no redirect. A 200 is the image
  (Label Studio streams it from a storage that does not presign); a redirect's Location (the presigned URL on the
  storage's host, named by Label Studio's storage, never by the task) is fetched by a separate client that holds no
  credentials, no cookies and ignores environment proxies, and follows no further redirect;
- a ``data:image/...;base64,`` URI.

Refused, each with an error naming the task: images on another host, and any scheme but these.
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpx
from PIL import Image

from trainer.data.files import IMAGE_EXTENSIONS
from trainer.labelstudio.auth import REDIRECT_ANSWER, AuthError
from trainer.labelstudio.origin import token_problem
from trainer.labelstudio.storage import cloud_scheme, is_presign_path, presign_refused, presign_url, storage_refused

MAX_IMAGE_BYTES = 64 * 2**20
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


class TaskImageError(ValueError):
    """A task image the trainer cannot read; the message names the task and the URL."""


def sdk_http(client) -> tuple[httpx.Client, str]:
    """(the httpx client under a label-studio-sdk 2.x client, its base URL)."""
    try:
        wrapper = client._client_wrapper
        return wrapper.httpx_client.httpx_client, wrapper.get_base_url().rstrip("/")
    except AttributeError as exc:
        raise TypeError(f"{type(client).__name__} is not a label-studio-sdk 2.x client: {exc}") from exc


def storage_client(timeout: float = 60.0) -> httpx.Client:
    """The client for presigned URLs: no credentials, no cookies kept, no environment proxy or ``.netrc``
    (``trust_env=False``), no redirect followed."""
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)


def task_image(client, task_id: int, url: str, *, max_bytes: int = MAX_IMAGE_BYTES,
               storage: httpx.Client | None = None) -> tuple[bytes, str]:  # fmt: skip
    """(the image's bytes, a file extension) for task ``task_id`` whose data holds ``url``; TaskImageError naming
    the task when it cannot be had or is not an image. ``storage``: the client for presigned URLs (``storage_client``;
    one is made for this call when not given)."""
    where = f"task {task_id}: image {_short(url)!r}"
    if not isinstance(url, str) or not url.strip():
        raise TaskImageError(f"task {task_id}: the image field holds {_short(url)!r}, not a URL")
    if url.startswith("data:"):
        data = _data_uri(url, where)
        suffix = ""
    elif cloud_scheme(url):
        data = _cloud(client, task_id, url, where, max_bytes, storage)
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    else:
        http, base = sdk_http(client)
        full = base + url if url.startswith("/") and not url.startswith("//") else url
        parts = urlsplit(full)
        if parts.scheme not in ("http", "https"):
            raise TaskImageError(f"{where}: unsupported scheme {parts.scheme or '(none)'!r}")
        problem = token_problem(parts.scheme, parts.hostname or "", parts.port, parts.path, base)
        if problem:
            raise TaskImageError(f"{where} is not Label Studio's ({problem}): only uploads, local files, cloud "
                                 f"storage URIs and URLs on {base} are read")  # fmt: skip
        if is_presign_path(full, base):  # the tasks API's link to a storage object, in place of its s3:// URI
            data = _resolved(http, full, task_id, full, where, max_bytes, storage)
        else:
            data = _get(http, full, where, max_bytes)
        suffix = PurePosixPath(unquote(parts.query.partition("d=")[2] or parts.path)).suffix.lower()
    try:
        with Image.open(io.BytesIO(data)) as picture:
            picture.verify()
            kind = picture.format or ""
    except Exception as exc:  # PIL raises many kinds on a broken file
        raise TaskImageError(f"{where} is not a readable image ({type(exc).__name__}: {str(exc)[:120]})") from exc
    ext = suffix if suffix in IMAGE_EXTENSIONS else FORMAT_EXTENSIONS.get(kind, ".img")
    return data, ext


def _cloud(client, task_id: int, uri: str, where: str, max_bytes: int, storage: httpx.Client | None) -> bytes:
    """The object behind cloud ``uri``: Label Studio's presign for the task (with the token), then its redirect's
    Location without it. Messages never quote the presigned URL (its signature is a credential)."""
    http, base = sdk_http(client)
    try:
        ask = presign_url(base, task_id, uri)
    except ValueError as exc:
        raise TaskImageError(f"task {task_id}: {exc}") from None
    return _resolved(http, ask, task_id, uri, where, max_bytes, storage)


def _resolved(http: httpx.Client, ask: str, task_id: int, uri: str, where: str, max_bytes: int,
              storage: httpx.Client | None) -> bytes:  # fmt: skip
    """What Label Studio's presign at ``ask`` leads to: the body of its 200, or of its redirect's Location fetched
    without credentials by ``storage`` (no further redirect)."""
    try:
        with http.stream("GET", ask, follow_redirects=False, extensions={REDIRECT_ANSWER: True}) as response:
            if response.status_code == 200:  # a storage that does not presign: Label Studio streams the object
                return _body(response, where, max_bytes)
            if not response.is_redirect:
                raise TaskImageError(f"task {task_id}: {presign_refused(uri, response.status_code)}")
            location = urljoin(ask, response.headers.get("location", ""))
    except (httpx.HTTPError, OSError, AuthError) as exc:
        raise TaskImageError(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    parts = urlsplit(location)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TaskImageError(f"{where}: Label Studio's storage answered with a URL that is not http(s)")
    own = storage or storage_client(http.timeout.read or 60.0)
    try:
        with own.stream("GET", location) as response:
            if response.is_redirect:
                raise TaskImageError(f"{where}: the storage at {parts.hostname!r} answered HTTP "
                                     f"{response.status_code}, a redirect, which is not followed")  # fmt: skip
            if response.status_code != 200:
                raise TaskImageError(f"task {task_id}: {storage_refused(uri, parts.hostname, response.status_code)}")
            return _body(response, where, max_bytes)
    except (httpx.HTTPError, OSError) as exc:
        raise TaskImageError(f"{where}: the storage at {parts.hostname!r} could not be read: "
                             f"{type(exc).__name__}") from None  # fmt: skip
    finally:
        if storage is None:
            own.close()


def _get(http: httpx.Client, url: str, where: str, max_bytes: int) -> bytes:
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise TaskImageError(f"{where}: Label Studio answered HTTP {response.status_code}")
            return _body(response, where, max_bytes)
    except (httpx.HTTPError, OSError, AuthError) as exc:
        raise TaskImageError(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _body(response: httpx.Response, where: str, max_bytes: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise TaskImageError(f"{where} is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _data_uri(url: str, where: str) -> bytes:
    head, _, payload = url.partition(",")
    if not head.startswith("data:image/") or not head.endswith(";base64"):
        raise TaskImageError(f"{where}: only base64 image data URIs are read")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TaskImageError(f"{where}: bad base64 ({exc})") from exc


def _short(url) -> str:
    text = str(url)
    return text if len(text) <= 80 else text[:77] + "..."
