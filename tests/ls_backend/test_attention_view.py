"""Where the model looks, in a team's own project, in a real browser.

Label Studio's stock image-classification template over a run's classes, with the feedback tool that ``hitl config
--snippet`` prints pasted after its Image (as the README tells a team to do); digits uploaded as files and imported
as Local Files; the backend connected through Label Studio's API and Label Studio's own "Retrieve Predictions"
storing a prediction for every task; then the task's labelling page in headless Chromium: the predicted class is
the selected Choice and the most salient cells are listed as "Model looks here" regions of the pasted tool.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from label_config.names import MODEL_LOOKS_HERE
from label_config.snippet import FEEDBACK_CONTROL
from tests.browser import labelling_page
from tests.labelstudio.test_image_only import predict_all, serve_backend
from tests.labelstudio.test_snapshot import png
from tests.ls_backend.stock import STOCK_IMAGE, stock_template
from tests.ls_backend.test_stock_template_with_label_studio import upload_files
from trainer.app.cli import main
from trainer.explain.overlay import image_to_pil
from trainer.labelstudio.client import ensure_local_storage, local_file_url

pytestmark = [pytest.mark.browser, pytest.mark.labelstudio]

# docs/attention-view.png is a copy of this (quantised to 128 colours: 40 kB), committed by hand: a test run never
# changes a tracked file.
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-output" / "attention-view.png"
_REGIONS = ".lsf-outliner .lsf-tree__node_type_rectangleregion"
# The Choices the labelling page shows as checked (Label Studio 1.23 renders a Choice as an antd checkbox).
CHECKED = """() => Array.from(document.querySelectorAll('.lsf-main-view__annotation .lsf-choice__checkbox input'))
  .filter(input => input.checked).map(input => input.name)"""


def pasted(config: str, snippet: str) -> str:
    """``config`` with ``snippet`` pasted on the lines after its Image, indented as the Image is."""
    assert config.count(STOCK_IMAGE) == 1
    return config.replace(STOCK_IMAGE, STOCK_IMAGE + "".join(f"  {line}\n" for line in snippet.splitlines()))


def digits(run, sample_ids: list[int]) -> list[bytes]:
    """Test digits of ``run`` as 224 px PNGs, a size a team's pictures have (the model sees them at its own)."""
    test = run.datasets[1]
    return [png(image_to_pil(test[i][0], 224).convert("L")) for i in sample_ids]


def test_the_labelling_page_shows_the_class_and_where_the_model_looks(fresh_run, label_studio, ls_client, capsys,
                                                                      tmp_path):  # fmt: skip
    run = fresh_run
    assert main(["config", "--classes", *run.classes, "--snippet"]) == 0
    config = pasted(stock_template(run.classes), capsys.readouterr().out)
    project = ls_client.projects.create(title=f"digits with the feedback tool {run.name}", label_config=config)
    pictures = digits(run, [0, 1, 2, 3])
    upload_files(label_studio, project.id, {f"digit-{k}.png": data for k, data in enumerate(pictures[:2])})
    folder = label_studio.document_root / f"attention-{project.id}"
    folder.mkdir(parents=True)
    for k, data in enumerate(pictures[2:], 2):
        (folder / f"digit-{k}.png").write_bytes(data)
    ensure_local_storage(ls_client, project.id, folder, label_studio.document_root)
    ls_client.projects.import_tasks(id=project.id, request=[
        {"data": {"image": local_file_url(folder / f"digit-{k}.png", label_studio.document_root)}} for k in (2, 3)
    ])  # fmt: skip
    tasks = sorted(t.id for t in ls_client.tasks.list(project=project.id))
    assert len(tasks) == 4

    with serve_backend(run, label_studio.url, label_studio.token) as (url, _):
        predict_all(ls_client, project.id, url)
    predictions = {p.task: p for p in ls_client.predictions.list(project=project.id)}
    assert sorted(predictions) == tasks
    for pred in predictions.values():
        choice, *regions = pred.result
        assert choice["type"] == "choices" and choice["value"]["choices"][0] in run.classes
        assert len(regions) == run.config.top_k
        assert {(r["from_name"], r["value"]["rectanglelabels"][0]) for r in regions} == {
            (FEEDBACK_CONTROL, MODEL_LOOKS_HERE)
        }

    task = tasks[0]  # an uploaded digit
    shot = tmp_path / SCREENSHOT.name
    with labelling_page(label_studio, project.id, task, width=1400, height=760, pictures=1) as page:
        page.locator(_REGIONS).nth(run.config.top_k - 1).wait_for()
        regions = page.locator(_REGIONS).all_inner_texts()
        checked = page.evaluate(CHECKED)
        # Label Studio fits the image to the page's height when the task opens; a taller page then shows the
        # feedback tool's labels and the Choices below it too.
        page.set_viewport_size({"width": 1400, "height": 1420})
        page.wait_for_timeout(1000)
        page.screenshot(path=str(shot))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT)

    # The prediction's top-k cells are the pasted tool's regions, labelled neutrally; its class is the selected one.
    assert len(regions) == run.config.top_k
    assert all(MODEL_LOOKS_HERE in text for text in regions)
    shown = sorted(float(text.split()[-1]) for text in regions)  # each region's score, as the list shows it
    assert shown == sorted(round(r["score"], 2) for r in predictions[task].result[1:])
    assert checked == [predictions[task].result[0]["value"]["choices"][0]]
