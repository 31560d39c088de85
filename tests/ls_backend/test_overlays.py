"""Which tasks lack an overlay, and which configs let the backend attach one (pure: no server); the writer's
thread outlives a Label Studio that cannot be reached (a real SDK client against a closed port)."""

from __future__ import annotations

import socket

import pytest
from PIL import Image

from label_config.config import build_config
from label_config.grid import Grid
from label_config.interface import parse_project_config
from label_config.names import SALIENCY_KEY
from ls_backend.overlays import OverlayWriter, PendingOverlay, lacks_overlay, overlay_key, overlay_png
from trainer.labelstudio.client import connect
from trainer.labelstudio.retry import RetryPolicy

RECT = "<Choices name='c' toName='image'><Choice value='a'/><Choice value='b'/></Choices>"


@pytest.mark.parametrize("xml, key", [
    (build_config(["a", "b"], Grid(28, 28, 7, 7)), SALIENCY_KEY),  # ours: the overlay is an optional list
    (f"<View><Image name='image' value='$image'/><Image name='saliency' value='$heat'/>{RECT}</View>", None),
    (f"<View><Image name='image' value='$image'/>{RECT}</View>", None),  # a config without an overlay
    (f"<View><Image name='image' value='$image'/><Image name='saliency' valueList='$heat'/>{RECT}</View>", "heat"),
])  # fmt: skip
def test_overlay_key_only_for_an_optional_overlay(xml, key):
    assert overlay_key(parse_project_config(xml)) == key


@pytest.mark.parametrize("data, lacks", [
    ({"image": "x"}, True),
    ({"image": "x", "saliency": []}, True),
    ({"image": "x", "saliency": [""]}, True),
    ({"image": "x", "saliency": ""}, True),
    ({"image": "x", "saliency": ["data:image/png;base64,AAAA"]}, False),
])  # fmt: skip
def test_lacks_overlay(data, lacks):
    assert lacks_overlay({"id": 1, "data": data}, SALIENCY_KEY) is lacks


def test_the_overlay_writer_lives_on_when_label_studio_cannot_be_reached():
    """Label Studio down: each overlay is counted as failed after the retries, and the thread goes on to the next
    (it used to die on the first, leaving every later overlay unwritten until the backend restarted)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    writer = OverlayWriter(
        lambda: connect(f"http://127.0.0.1:{port}", "token", retry=RetryPolicy(tries=2, base_s=0.05))
    )
    for task_id in (1, 2):
        writer.submit(PendingOverlay(task_id, 1, SALIENCY_KEY, overlay_png(Image.new("RGB", (8, 8))), "m-1", "a", 0.9))
    assert writer.wait(30), "the writer stopped handling overlays"
    assert (writer.failed, writer.attached) == (2, 0)
