"""The one simulated annotator acting through Label Studio: what it marks is ``trainer.core.feedback``'s
``simulated_cells`` (the grid cells that overlap an image's true irrelevant region, with optional misses and
wrong cells), which ``hitl experiment`` uses directly; ``hitl run --simulate`` and the demo make it act only
through Label Studio's REST API, submitting what the labelling page would.

Shape legend: H x W pixels, G_h x G_w grid cells.
"""

from __future__ import annotations

import numpy as np

from label_config.config import display_px, display_size
from label_config.names import (
    ANNOTATED,
    CELL_POINT,
    CELL_POINT_LABEL,
    CELL_RECT,
    CELL_RECT_LABEL,
    LABEL_CHECK,
    LABEL_OK,
    SAMPLE_ID_KEY,
)
from trainer.core.checks import check_choice
from trainer.core.feedback import AnnotatorConfig, simulated_cells
from trainer.labelstudio.client import annotate_as_browser
from trainer.runs.run import Run

SIMULATED_KINDS = ("rect", "point")


def simulate_annotator(
    run: Run, client, project_id: int, *, kind: str = "rect", miss_rate: float = 0.0, task_ids=None, seed: int = 0
) -> list[int]:
    """Annotate every unanswered task (of ``task_ids``, default all) as a person would; the new annotation ids.

    Marks the cells that overlap the true decoy (``run.datasets[0].decoy_masks``), each missed with
    probability ``miss_rate``: one rectangle inside each cell (``kind="rect"``) or a click on its centre
    (``"point"``), in percent of the displayed picture, as the labelling page posts them.
    """
    check_choice(kind, "annotator kind", SIMULATED_KINDS)
    annotator = AnnotatorConfig(miss_rate=miss_rate)
    masks = run.datasets[0].decoy_masks  # (N, H, W) bool
    if masks is None:
        raise ValueError(f"dataset {run.config.dataset!r} has no decoy masks: nothing to simulate an annotator with")
    wanted = None if task_ids is None else {int(t) for t in task_ids}
    rng = np.random.default_rng(seed)
    created = []
    for task in client.tasks.list(project=project_id, fields="all"):
        sample_id = (task.data or {}).get(SAMPLE_ID_KEY)
        if task.annotations or sample_id is None or (wanted is not None and task.id not in wanted):
            continue
        cells = simulated_cells(masks[int(sample_id)].numpy(), run.grid, annotator, rng)  # (G_h, G_w)
        created.append(annotate_as_browser(client, task.id, browser_result(run.grid, cells, kind, rng)))
    return created


def browser_result(grid, cells: np.ndarray, kind: str, rng: np.random.Generator) -> list[dict]:
    """What the labelling page submits for ``cells`` (G_h, G_w) bool, plus "label is correct"."""
    width, height, _ = display_size(grid, display_px(grid))
    result = []
    for r, c in np.argwhere(cells):
        x, y, w, h = grid.cell_box_percent(int(r), int(c))
        if kind == "rect":  # drawn by hand: a little inside the cell's borders
            value = {
                "x": x + 0.1 * w,
                "y": y + 0.1 * h,
                "width": 0.8 * w,
                "height": 0.8 * h,
                "rotation": 0,
                "rectanglelabels": [CELL_RECT_LABEL],
            }
            name, tag = CELL_RECT, "rectanglelabels"
        else:
            value = {"x": x + w / 2, "y": y + h / 2, "width": 0.5, "keypointlabels": [CELL_POINT_LABEL]}
            name, tag = CELL_POINT, "keypointlabels"
        result.append(
            {
                "id": _region_id(rng),
                "from_name": name,
                "to_name": ANNOTATED,
                "type": tag,
                "origin": "manual",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": value,
            }
        )
    result.append(
        {
            "id": _region_id(rng),
            "from_name": LABEL_CHECK,
            "to_name": ANNOTATED,
            "type": "choices",
            "origin": "manual",
            "value": {"choices": [LABEL_OK]},
        }
    )
    return result


def _region_id(rng: np.random.Generator) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=10))
