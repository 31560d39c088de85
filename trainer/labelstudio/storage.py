"""Task images in cloud storage: which URIs they are and where Label Studio resolves them. Pure, no I/O.

A task imported from a Label Studio cloud import storage holds the object's URI (``s3://bucket/key``,
``gs://bucket/key``, ``azure-blob://container/key``), which only Label Studio can read: it resolves one at
``GET <LABEL_STUDIO_URL>/tasks/<task id>/presign/?fileuri=<URI, base64url>`` (with the token) and answers a 303 to a
presigned URL on the storage's host when the storage presigns, or the bytes themselves when it does not.

Label Studio 1.23 decodes ``fileuri`` with ``base64.urlsafe_b64decode`` (``io_storages/proxy_api.py``,
``ResolveStorageUriAPIMixin.resolve``; its own task data links are built the same way in
``io_storages/base_models.py``, and label-studio-sdk's ``encode_presign_fileuri`` agrees). ``/presign/`` is the
name label-studio-sdk and the ML backends use; Label Studio keeps it beside ``/resolve/``.

Both fetchers use this module: the backend's ``ls_backend.images`` and the trainer's ``trainer.labelstudio.fetch``.
The token goes only with the request to Label Studio; the presigned URL is fetched without it, its host allowed for
that one hop because Label Studio's storage named it, never because a task did.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, urlsplit

CLOUD_SCHEMES = ("s3", "gs", "azure-blob")  # Label Studio's import storages' url_scheme values
PRESIGN_PATH = "/tasks/{task_id}/presign/"
# Label Studio's own links to a storage object (its tasks API resolves s3:// in task data to /tasks/<id>/resolve/...)
_RESOLVER = re.compile(r"/(tasks|projects)/[0-9]+/(presign|resolve)/")


def cloud_scheme(uri) -> str | None:
    """The cloud storage scheme of ``uri`` (``"s3"``, ``"gs"``, ``"azure-blob"``), or None for anything else."""
    if not isinstance(uri, str):
        return None
    scheme, sep, _ = uri.partition("://")
    return scheme if sep and scheme in CLOUD_SCHEMES else None


def is_cloud_uri(uri) -> bool:
    """Whether ``uri`` names an object in a Label Studio cloud import storage (read only through Label Studio)."""
    return cloud_scheme(uri) is not None


def presign_path(task_id: int, uri: str) -> str:
    """The path and query under ``LABEL_STUDIO_URL`` at which Label Studio resolves ``uri`` for task ``task_id``:
    ``/tasks/<id>/presign/?fileuri=<base64url of the URI>`` (the padding percent-encoded, as any query value).

    ValueError naming what is wrong: ``uri`` is not a cloud URI or names no bucket, ``task_id`` is not a positive
    integer (the task's id is what Label Studio checks the caller's permission and the project's storages on)."""
    scheme = cloud_scheme(uri)
    if scheme is None:
        raise ValueError(
            f"{str(uri)[:80]!r} is not a cloud storage URI ({', '.join(s + '://' for s in CLOUD_SCHEMES)})"
        )
    if not uri[len(scheme) + 3 :].split("/", 1)[0]:
        raise ValueError(f"cloud storage URI {uri[:80]!r} names no bucket or container")
    if isinstance(task_id, bool) or not isinstance(task_id, int) or task_id < 1:
        raise ValueError(f"cloud storage URI {uri[:80]!r} is resolved by Label Studio for its task, but the task id "
                         f"is {task_id!r}, not a positive integer")  # fmt: skip
    encoded = base64.urlsafe_b64encode(uri.encode("utf-8")).decode("ascii")
    return PRESIGN_PATH.format(task_id=task_id) + "?fileuri=" + quote(encoded, safe="")


def is_presign_path(url: str, label_studio_url: str) -> bool:
    """Whether ``url`` (absolute, already judged to be on ``label_studio_url``) is Label Studio's endpoint that
    resolves a cloud URI (``/tasks/<id>/presign/``, ``/tasks/<id>/resolve/``, or the ``/projects/<id>/`` ones):
    the tasks API hands out such links in place of ``s3://``, and they answer with a redirect to the storage."""
    path = urlsplit(url).path
    prefix = urlsplit(label_studio_url).path.rstrip("/")
    return path.startswith(prefix + "/") and bool(_RESOLVER.fullmatch(path[len(prefix) :]))


def presign_url(label_studio_url: str, task_id: int, uri: str) -> str:
    """``presign_path`` under ``label_studio_url`` (its path prefix kept: ``http://host/ls`` -> ``/ls/tasks/...``)."""
    return label_studio_url.rstrip("/") + presign_path(task_id, uri)


_PRESIGN_REFUSALS = {
    401: "check LABEL_STUDIO_API_KEY",
    403: "check LABEL_STUDIO_API_KEY: its user may not see the task's project",
    404: "no cloud import storage of the task's project covers this bucket, or no such task",
    424: "Label Studio could not read the object from the storage: is it missing?",
}


def presign_refused(uri: str, status: int) -> str:
    """What Label Studio's answer ``status`` (neither 200 nor a redirect) to the presign of ``uri`` means."""
    why = _PRESIGN_REFUSALS.get(status)
    return f"Label Studio did not resolve {uri[:80]!r}: HTTP {status}" + (f" ({why})" if why else "")


def storage_refused(uri: str, host: str, status: int) -> str:
    """What the storage's answer ``status`` at the presigned URL for ``uri`` means (the URL itself is never quoted:
    its signature is a credential)."""
    why = " (the object is missing, or the storage refused the presigned URL)" if status in (403, 404) else ""
    return f"the storage at {host!r} answered HTTP {status} for {uri[:80]!r}{why}"
