"""A pushed task in a real browser: headless Chromium on the local Label Studio's labelling page."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from label_config.names import MODEL_LOOKS_HERE
from tests.browser import PICTURES, labelling_page
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.push import push

pytestmark = [pytest.mark.browser, pytest.mark.labelstudio]

OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "browser"  # gitignored
_REGIONS = ".lsf-outliner .lsf-tree__node_type_rectangleregion"


def _mean_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_pushed_task_shows_overlay_and_suggested_regions(fresh_run, ls_client, label_studio, tmp_path):
    run = fresh_run
    link = connect_project(run, ls_client, label_studio.url, document_root=label_studio.document_root)
    (task_id,) = push(run, ls_client, link.project_id, n=1, document_root=link.document_root)
    data = ls_client.tasks.get(id=task_id).data
    folder = label_studio.document_root / run.name / "round-000"
    files = [folder / f"sample-{data['sample_id']}-{key}.png" for key in ("image", "saliency")]

    shot = tmp_path / "labelling-page.png"
    with labelling_page(label_studio, link.project_id, task_id) as page:
        page.locator(_REGIONS).nth(run.config.top_k - 1).wait_for()
        pictures = page.evaluate(PICTURES)
        regions = page.locator(_REGIONS).all_inner_texts()
        page.screenshot(path=str(shot), full_page=True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, OUTPUT / shot.name)

    # Both pictures arrived at display size, and the second one is the overlay file, not the plain image.
    assert [(p["width"], p["height"]) for p in pictures] == [(224, 224), (224, 224)]
    for shown, path in zip(pictures, files):
        np.testing.assert_allclose(shown["mean"], _mean_rgb(path), atol=1.0)
    assert np.abs(_mean_rgb(files[0]) - _mean_rgb(files[1])).max() > 5
    # The prediction's top-k cells are listed as suggested regions of the rectangle tool, labelled neutrally.
    assert len(regions) == run.config.top_k
    assert all(MODEL_LOOKS_HERE in text for text in regions)
