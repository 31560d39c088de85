"""A pushed task in a real browser: headless Chromium on the local Label Studio's labelling page."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from label_config.names import CELL_RECT_LABEL
from trainer.labelstudio.link import connect_project
from trainer.labelstudio.push import push

pytestmark = [pytest.mark.browser, pytest.mark.labelstudio]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; the test never downloads a browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "browser"  # gitignored
LOAD_MS = 90_000  # the labelling page on 2 busy cores

# The picture each Image tag shows (config order: the task image, then the saliency overlay): size and
# mean colour, read back through a canvas, so the test knows the overlay itself arrived.
_PICTURES = """() => Array.from(document.querySelectorAll('.lsf-main-view__annotation .lsf-image img')).map(img => {
  if (!img.complete || img.naturalWidth === 0) return {width: 0};
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0);
  const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const mean = [0, 0, 0];
  for (let i = 0; i < px.length; i += 4) for (let k = 0; k < 3; k++) mean[k] += px[i + k];
  return {width: img.naturalWidth, height: img.naturalHeight, mean: mean.map(m => m / (px.length / 4))};
})"""
_REGIONS = ".lsf-outliner .lsf-tree__node_type_rectangleregion"


def _mean_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_pushed_task_shows_overlay_and_suggested_regions(fresh_run, ls_client, label_studio, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Playwright Python client is missing: pip install -e '.[test]'", pytrace=False)

    run = fresh_run
    link = connect_project(run, ls_client, label_studio.url, document_root=label_studio.document_root)
    (task_id,) = push(run, ls_client, link.project_id, n=1, document_root=link.document_root)
    data = ls_client.tasks.get(id=task_id).data
    folder = label_studio.document_root / run.name / "round-000"
    files = [folder / f"sample-{data['sample_id']}-{key}.png" for key in ("image", "saliency")]

    shot = tmp_path / "labelling-page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(LOAD_MS)
            page.goto(f"{label_studio.url}/user/login/")
            page.fill("input[name=email]", label_studio.username)
            page.fill("input[name=password]", label_studio.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url)
            page.goto(f"{label_studio.url}/projects/{link.project_id}/data?task={task_id}")
            page.wait_for_function(f"({_PICTURES})().filter(p => p.width > 0).length === 2")
            page.locator(_REGIONS).nth(run.config.top_k - 1).wait_for()
            pictures = page.evaluate(_PICTURES)
            regions = page.locator(_REGIONS).all_inner_texts()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, OUTPUT / shot.name)

    # Both pictures arrived at display size, and the second one is the overlay file, not the plain image.
    assert [(p["width"], p["height"]) for p in pictures] == [(224, 224), (224, 224)]
    for shown, path in zip(pictures, files):
        np.testing.assert_allclose(shown["mean"], _mean_rgb(path), atol=1.0)
    assert np.abs(_mean_rgb(files[0]) - _mean_rgb(files[1])).max() > 5
    # The prediction's top-k cells are listed as suggested regions of the rectangle tool.
    assert len(regions) == run.config.top_k
    assert all(CELL_RECT_LABEL in text for text in regions)
