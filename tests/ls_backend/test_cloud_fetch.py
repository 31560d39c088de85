"""The backend's fetch of a cloud storage URI, hop by hop, against two small servers (``tests.presign``): the token
goes to Label Studio only, the storage's host is allowed for the one hop Label Studio named it for, its address is
still checked, every failure names the task's URI and never the presigned URL. The same flow against the real Label
Studio and moto: tests/ls_backend/test_cloud_storage.py."""

from __future__ import annotations

import pytest

from ls_backend.images import ImageError, load_task_image
from tests.ls_backend.test_app import png_bytes
from tests.presign import SIGNATURE, label_studio_and_storage

LOOPBACK = ("127.0.0.0/8", "::1/128")
URI = "s3://team-images/cats/a.png"


def fetch(uri: str, ls_url: str, **options):
    options = {"api_key": "k", "task_id": 7, "timeout": 5, "image_networks": LOOPBACK, **options}
    return load_task_image(uri, label_studio_url=ls_url, **options)


def test_the_token_goes_to_label_studio_and_the_presigned_url_is_fetched_without_it():
    with label_studio_and_storage({"/team-images/cats/a.png": png_bytes(1)}) as (ls_url, resolver, _, storage):
        image = fetch(URI, ls_url)  # the storage's host ("localhost") is in no IMAGE_HOSTS
    assert image.size == (28, 28)
    ((asked, ls_headers),) = resolver.seen
    assert asked.startswith("/tasks/7/presign/?fileuri=") and ls_headers["Authorization"] == "Token k"
    ((path, headers),) = storage.seen
    assert path == f"/team-images/cats/a.png?{SIGNATURE}"
    assert "Authorization" not in headers and "Cookie" not in headers  # nor Label Studio's session cookie


def test_the_storage_host_is_allowed_only_for_the_hop_label_studio_named_it_for():
    with label_studio_and_storage({"/team-images/cats/a.png": png_bytes(1)}) as (ls_url, _, storage_url, storage):
        with pytest.raises(ImageError, match="neither Label Studio's nor in IMAGE_HOSTS"):
            fetch(f"{storage_url}/team-images/cats/a.png", ls_url)  # a task naming the storage's host itself
    assert not storage.seen


def test_the_storage_address_is_checked_so_a_private_storage_needs_image_networks():
    with label_studio_and_storage({"/team-images/cats/a.png": png_bytes(1)}) as (ls_url, _, _, storage):
        with pytest.raises(ImageError) as info:
            fetch(URI, ls_url, image_networks=())
    message = str(info.value)
    assert info.value.status == 422 and not storage.seen
    assert f"image {URI!r}, resolved by Label Studio, is on host 'localhost' (named by Label Studio's storage)" in (
        message
    )
    assert "loopback address: allow its network in IMAGE_NETWORKS" in message and "X-Amz" not in message


def test_a_further_redirect_follows_the_usual_rules_and_never_carries_the_token():
    objects = {"/team-images/cats/a.png": png_bytes(2)}
    with label_studio_and_storage(objects) as (ls_url, resolver, storage_url, storage):
        storage.moved_to = "http://169.254.169.254/latest/meta-data/"
        with pytest.raises(ImageError, match="is on host '169.254.169.254', which is neither Label Studio's nor in"):
            fetch("s3://team-images/cats/moved.png", ls_url)
        storage.moved_to = f"{ls_url}/tasks/7/presign/?fileuri=x"  # back to Label Studio's origin: no token there
        with pytest.raises(ImageError):
            fetch("s3://team-images/cats/moved.png", ls_url)
        storage.moved_to = f"{storage_url}/team-images/cats/a.png"  # the storage's host, named by the storage only
        with pytest.raises(ImageError, match="neither Label Studio's nor in IMAGE_HOSTS"):
            fetch("s3://team-images/cats/moved.png", ls_url)
        image = fetch("s3://team-images/cats/moved.png", ls_url, image_hosts=("localhost",))
    assert image.size == (28, 28)
    assert [h.get("Authorization") for _, h in resolver.seen] == ["Token k", "Token k", None, "Token k", "Token k"]


@pytest.mark.parametrize("mode, key, expected", [
    (404, "a.png", "Label Studio did not resolve 's3://team-images/cats/a.png': HTTP 404 (no cloud import storage"),
    (401, "a.png", "HTTP 401 (check LABEL_STUDIO_API_KEY)"),
    ("bytes", "gone.png", "HTTP 424 (Label Studio could not read the object from the storage: is it missing?)"),
    ("redirect", "gone.png", "the storage at 'localhost' answered HTTP 403 for 's3://team-images/cats/gone.png' "
                             "(the object is missing, or the storage refused the presigned URL)"),
    ("redirect", "broken.png", "the storage at 'localhost' answered HTTP 500 for 's3://team-images/cats/broken.png'"),
])  # fmt: skip
def test_every_refusal_names_the_uri_and_who_refused(mode, key, expected):
    with label_studio_and_storage({}, mode=mode) as (ls_url, _, _, _):
        with pytest.raises(ImageError) as info:
            fetch(f"s3://team-images/cats/{key}", ls_url)
    assert expected in str(info.value) and "X-Amz" not in str(info.value) and info.value.status == 502


def test_a_storage_that_does_not_presign_is_read_from_label_studio_itself():
    with label_studio_and_storage({"/team-images/cats/a.png": png_bytes(3)}, mode="bytes") as (ls_url, _, _, st):
        assert fetch(URI, ls_url).size == (28, 28)
    assert not st.seen


@pytest.mark.parametrize("options, expected", [
    ({"task_id": None}, "resolved by Label Studio for its task, but the task has no id"),
    ({"api_key": None}, "which only Label Studio can resolve: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"),
    ({"task_id": 0}, "the task id is 0, not a positive integer"),
])  # fmt: skip
def test_what_a_presign_needs_is_named_when_missing(options, expected):
    with label_studio_and_storage({}) as (ls_url, resolver, _, _):
        with pytest.raises(ImageError, match=expected) as info:
            fetch(URI, ls_url, **options)
    assert info.value.status == 422 and not resolver.seen


def test_the_link_label_studio_gives_in_place_of_the_uri_is_the_same_presign():
    """Label Studio's tasks API hands out ``/tasks/<id>/resolve/?fileuri=...`` in place of ``s3://``."""
    with label_studio_and_storage({"/team-images/cats/a.png": png_bytes(4)}) as (ls_url, resolver, _, storage):
        image = fetch("/tasks/7/resolve/?fileuri=czM6Ly90ZWFtLWltYWdlcy9jYXRzL2EucG5n", ls_url, task_id=None)
    assert image.size == (28, 28) and resolver.seen[0][1]["Authorization"] == "Token k"
    assert "Authorization" not in storage.seen[0][1]
