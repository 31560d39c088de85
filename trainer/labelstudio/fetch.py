"""A task's image, read from Label Studio by the trainer (the snapshot of a team's project).

Through the SDK client's own httpx client (``client.label_studio_http``: the token goes only to
``LABEL_STUDIO_URL``'s origin and path, no redirect is followed). What a task may hold:

- a Label Studio URL: relative (``/data/upload/3/x.png``, ``/data/local-files/?d=images/x.png``) or absolute on
  Label Studio's own origin;
- a ``data:image/...;base64,`` URI.

Refused for now, each with an error naming the task: images on another host, and cloud storage URIs
(``s3://``, ``gs://``, ``azure-blob://``; Label Studio's ``/tasks/<id>/presign/`` answers with a redirect to the
storage's host, which a request carrying the token never follows).
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image

from trainer.data.files import IMAGE_EXTENSIONS
from trainer.labelstudio.auth import AuthError
from trainer.labelstudio.origin import token_problem

MAX_IMAGE_BYTES = 64 * 2**20
CLOUD_SCHEMES = ("s3", "gs", "azure-blob")
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


def task_image(client, task_id: int, url: str, *, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """(the image's bytes, a file extension) for task ``task_id`` whose data holds ``url``; TaskImageError naming
    the task when it cannot be had or is not an image."""
    where = f"task {task_id}: image {_short(url)!r}"
    if not isinstance(url, str) or not url.strip():
        raise TaskImageError(f"task {task_id}: the image field holds {_short(url)!r}, not a URL")
    if url.startswith("data:"):
        data = _data_uri(url, where)
        suffix = ""
    else:
        http, base = sdk_http(client)
        full = base + url if url.startswith("/") and not url.startswith("//") else url
        parts = urlsplit(full)
        if parts.scheme in CLOUD_SCHEMES:
            raise TaskImageError(f"{where} is in cloud storage ({parts.scheme}://): reading it through Label "
                                 "Studio's presign is not supported yet; import the image as an upload or a local "
                                 "file")  # fmt: skip
        if parts.scheme not in ("http", "https"):
            raise TaskImageError(f"{where}: unsupported scheme {parts.scheme or '(none)'!r}")
        problem = token_problem(parts.scheme, parts.hostname or "", parts.port, parts.path, base)
        if problem:
            raise TaskImageError(f"{where} is not Label Studio's ({problem}): only uploads, local files and "
                                 f"URLs on {base} are read")  # fmt: skip
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


def _get(http: httpx.Client, url: str, where: str, max_bytes: int) -> bytes:
    try:
        with http.stream("GET", url) as response:
            if response.status_code != 200:
                raise TaskImageError(f"{where}: Label Studio answered HTTP {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise TaskImageError(f"{where} is larger than {max_bytes} bytes")
                chunks.append(chunk)
    except (httpx.HTTPError, OSError, AuthError) as exc:
        raise TaskImageError(f"{where}: {type(exc).__name__}: {str(exc)[:200]}") from exc
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
