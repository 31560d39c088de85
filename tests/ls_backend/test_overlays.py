"""Which tasks lack an overlay, and which configs let the backend attach one (pure: no server)."""

from __future__ import annotations

import pytest

from label_config.config import build_config
from label_config.controls import check_config
from label_config.grid import Grid
from label_config.names import SALIENCY_KEY
from ls_backend.overlays import lacks_overlay, overlay_key

RECT = "<RectangleLabels name='r' toName='image'><Label value='x'/></RectangleLabels>"


@pytest.mark.parametrize("xml, key", [
    (build_config(["a", "b"], Grid(28, 28, 7, 7)), SALIENCY_KEY),  # ours: the overlay is an optional list
    (f"<View><Image name='image' value='$image'/><Image name='saliency' value='$heat'/>{RECT}</View>", None),
    (f"<View><Image name='image' value='$image'/>{RECT}</View>", None),  # a config without an overlay
    (f"<View><Image name='image' value='$image'/><Image name='saliency' valueList='$heat'/>{RECT}</View>", "heat"),
])  # fmt: skip
def test_overlay_key_only_for_an_optional_overlay(xml, key):
    assert overlay_key(check_config(xml)) == key


@pytest.mark.parametrize("data, lacks", [
    ({"image": "x"}, True),
    ({"image": "x", "saliency": []}, True),
    ({"image": "x", "saliency": [""]}, True),
    ({"image": "x", "saliency": ""}, True),
    ({"image": "x", "saliency": ["data:image/png;base64,AAAA"]}, False),
])  # fmt: skip
def test_lacks_overlay(data, lacks):
    assert lacks_overlay({"id": 1, "data": data}, SALIENCY_KEY) is lacks
