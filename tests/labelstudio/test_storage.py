"""Cloud storage URIs and Label Studio's presign path (``trainer.labelstudio.storage``), and the trainer's fetch of
such a task image through the SDK client (``trainer.labelstudio.fetch``) against two small servers
(``tests.presign``). Against the real Label Studio and moto: tests/labelstudio/test_snapshot_cloud.py."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.ls_backend.test_app import png_bytes
from tests.presign import SIGNATURE, label_studio_and_storage
from trainer.labelstudio.client import connect
from trainer.labelstudio.fetch import TaskImageError, task_image
from trainer.labelstudio.retry import RetryPolicy
from trainer.labelstudio.storage import is_cloud_uri, is_presign_path, presign_path, presign_url


@pytest.mark.parametrize("uri, cloud", [
    ("s3://b/k.png", True), ("gs://b/k.png", True), ("azure-blob://c/k.png", True), ("s3://b", True),
    ("http://b/k.png", False), ("/data/upload/1/k.png", False), ("s3:/b/k.png", False), ("S3://b/k.png", False),
    ("data:image/png;base64,AA==", False), (None, False), (5, False),
])  # fmt: skip
def test_which_uris_are_cloud_storage(uri, cloud):
    assert is_cloud_uri(uri) == cloud


@pytest.mark.parametrize("uri", ["s3://b/k.png", "gs://bucket/a b/ü?.png", "azure-blob://c/x>?~.jpg", "s3://b/k"])
def test_the_presign_path_decodes_as_label_studio_decodes_it(uri):
    """Label Studio 1.23: ``base64.urlsafe_b64decode(request.GET['fileuri'])`` (io_storages/proxy_api.py)."""
    path = presign_path(12, uri)
    parts = urlsplit(path)
    assert parts.path == "/tasks/12/presign/"
    (fileuri,) = parse_qs(parts.query, strict_parsing=True)["fileuri"]
    assert base64.urlsafe_b64decode(fileuri.encode()).decode() == uri
    assert set(parts.query) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_%=")


@pytest.mark.parametrize("task_id, uri, problem", [
    (0, "s3://b/k", "task id is 0, not a positive integer"), (True, "s3://b/k", "task id is True"),
    ("3", "s3://b/k", "task id is '3'"), (None, "s3://b/k", "task id is None"),
    (3, "http://b/k", "is not a cloud storage URI"), (3, "s3:///k", "names no bucket"),
])  # fmt: skip
def test_a_presign_path_needs_a_task_and_a_cloud_uri(task_id, uri, problem):
    with pytest.raises(ValueError, match=problem):
        presign_path(task_id, uri)


def test_the_presign_url_keeps_label_studios_path_prefix():
    assert presign_url("http://h:1/ls/", 3, "s3://b/k").startswith("http://h:1/ls/tasks/3/presign/?fileuri=")
    assert is_presign_path("http://h:1/ls/tasks/3/presign/?fileuri=x", "http://h:1/ls")
    assert is_presign_path("http://h:1/ls/projects/3/resolve/?fileuri=x", "http://h:1/ls/")
    for url in ("http://h:1/tasks/3/presign/", "http://h:1/ls/tasks/3/presign/x", "http://h:1/ls/tasks/a/resolve/",
                "http://h:1/ls/api/tasks/3/"):  # fmt: skip
        assert not is_presign_path(url, "http://h:1/ls")


# ---------------------------------------------------------------- the trainer's fetch
def client_for(ls_url: str):
    return connect(ls_url, "k", retry=RetryPolicy(tries=1))


def test_the_trainer_asks_label_studio_with_the_token_and_the_storage_without(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a dead proxy: the storage's client ignores it
    monkeypatch.setenv("NO_PROXY", "")
    objects = {"/team-images/cats/a.png": png_bytes(5)}
    with label_studio_and_storage(objects) as (ls_url, resolver, _, storage):
        data, ext = task_image(client_for(ls_url), 7, "s3://team-images/cats/a.png")
        linked, _ = task_image(client_for(ls_url), 7, "/tasks/7/resolve/?fileuri=czM6Ly90ZWFtLWltYWdlcy9jYXRzL2EucG5n")
    assert data == linked == objects["/team-images/cats/a.png"] and ext == ".png"
    assert [p.split("?")[0] for p, _ in resolver.seen] == ["/tasks/7/presign/", "/tasks/7/resolve/"]
    assert all(h["Authorization"] == "Token k" for _, h in resolver.seen)
    assert [p for p, _ in storage.seen] == [f"/team-images/cats/a.png?{SIGNATURE}"] * 2
    for _, headers in storage.seen:  # no token, no Label Studio session cookie, no proxy in between
        assert not {"authorization", "cookie", "proxy-authorization"} & {k.lower() for k in headers}


@pytest.mark.parametrize("mode, key, expected", [
    ("redirect", "gone.png", "task 7: the storage at 'localhost' answered HTTP 403 for "
                             "'s3://team-images/cats/gone.png' (the object is missing"),
    ("redirect", "moved.png", "the storage at 'localhost' answered HTTP 307, a redirect, which is not followed"),
    (404, "a.png", "task 7: Label Studio did not resolve 's3://team-images/cats/a.png': HTTP 404"),
    ("bytes", "gone.png", "HTTP 424 (Label Studio could not read the object"),
])  # fmt: skip
def test_the_trainer_names_the_task_and_the_uri_of_what_it_cannot_read(mode, key, expected):
    with label_studio_and_storage({}, mode=mode) as (ls_url, _, _, _):
        with pytest.raises(TaskImageError) as info:
            task_image(client_for(ls_url), 7, f"s3://team-images/cats/{key}")
    assert expected in str(info.value) and "X-Amz" not in str(info.value)


def test_a_storage_that_does_not_presign_is_read_from_label_studio_itself():
    objects = {"/team-images/cats/a.png": png_bytes(6)}
    with label_studio_and_storage(objects, mode="bytes") as (ls_url, _, _, storage):
        data, _ = task_image(client_for(ls_url), 7, "s3://team-images/cats/a.png")
    assert data == objects["/team-images/cats/a.png"] and not storage.seen
