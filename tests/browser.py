"""Headless Chromium for the browser tests: Debian's binary (never a downloaded one), launched with the flags
this machine needs, and a logged-in Label Studio labelling page."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package; the tests never download a browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
LOAD_MS = 90_000  # the labelling page on 2 busy cores

# Each Image object's picture in the labelling page, in config order (the task image, then the overlay): size and
# mean colour read back through a canvas (Label Studio shows both as blob: URLs), so a test knows which arrived.
PICTURES = """() => Array.from(document.querySelectorAll('.lsf-main-view__annotation .lsf-image img')).map(img => {
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


@contextlib.contextmanager
def chromium_page(*, width: int, height: int) -> Iterator:
    """A Playwright page in headless Chromium; a missing browser or client fails the test by name."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Playwright Python client is missing: pip install -e '.[test]'", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(LOAD_MS)
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def labelling_page(label_studio, project_id: int, task_id: int, *, width: int = 1400, height: int = 1000,
                   pictures: int = 2) -> Iterator:  # fmt: skip
    """The labelling page of one task, logged in as the test server's user, once its ``pictures`` Image objects
    (two in our own config: the task image and the overlay; one in the stock template) have decoded."""
    with chromium_page(width=width, height=height) as page:
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", label_studio.username)
        page.fill("input[name=password]", label_studio.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/user/login" not in url)
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task_id}")
        page.wait_for_function(f"({PICTURES})().filter(p => p.width > 0).length === {pictures}")
        yield page
