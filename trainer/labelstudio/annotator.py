"""The one simulated annotator acting through Label Studio: what it marks is ``trainer.core.feedback``'s
``simulated_cells`` (the grid cells that overlap an image's true irrelevant region, with optional misses and
wrong cells), which ``hitl experiment`` uses directly; ``hitl run --simulate`` and the demo make it act only
through Label Studio's REST API, submitting what the labelling page would.

Shape legend: H x W pixels, G_h x G_w grid cells.

Kinds (``SIMULATED_KINDS``; several, comma-separated, take turns task by task):
- ``rect``, ``point``: our own config's cell tools, a rectangle inside each marked cell or a click on its centre,
  plus "label is correct";
- ``polygon``, ``brush``: the project's own feedback tool of that kind (a team's project, ``hitl config
  --snippet``) with its irrelevant label ("Model must not use this"): polygons around the true region inside each
  marked cell (a whole cell where a wrong cell holds none of it), or one brush stroke (RLE) over them, added to
  the round's prediction as a person adds marks to the pre-filled page;
- ``accept``: the round's prediction submitted unchanged, as an annotator clicking accept without reading it.
Every answer is a new annotation (``parent_prediction``: the prediction it started from), never an edit of someone
else's: a team's label stays its own, and the pull takes each annotator's newest answer for the label.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from label_config.config import display_px, display_size
from label_config.drawn import drawn_regions
from label_config.interface import RegionControl, parse_project_config
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
from trainer.labelstudio.push_team import is_pushed
from trainer.runs.ledger import utc_timestamp
from trainer.runs.run import Run

SIMULATED_KINDS = ("rect", "point", "polygon", "brush", "accept")
DRAWN = {"polygon": "polygonlabels", "brush": "brushlabels"}  # kind -> the project's tool it draws with


def parse_kinds(kind: str) -> tuple[str, ...]:
    """``"polygon,brush"`` -> ``("polygon", "brush")``, each one of ``SIMULATED_KINDS``."""
    kinds = tuple(k.strip() for k in str(kind).split(","))
    for k in kinds:
        check_choice(k, "annotator kind", SIMULATED_KINDS)
    return kinds


def simulate_annotator(run: Run, client, project_id: int, *, kind: str = "rect", miss_rate: float = 0.0,
                       task_ids=None, seed: int = 0, truth=None) -> list[int]:  # fmt: skip
    """Answer every task (of ``task_ids``, default all the project's) that has no answer since this run's
    prediction on it, as a person would; the new annotation ids.

    A task's sample id is its data's ``sample_id`` (our tasks) or the ledger's (a team's task pushed by
    ``push_team``). Marks cover the cells that overlap ``truth[sample id]`` ((N, H, W) bool; default the run's
    training ``decoy_masks``), each missed with probability ``miss_rate``.
    """
    kinds = parse_kinds(kind)
    annotator = AnnotatorConfig(miss_rate=miss_rate)
    marking = any(k != "accept" for k in kinds)
    if marking and truth is None:
        truth = run.datasets[0].decoy_masks
        if truth is None:
            raise ValueError(
                f"dataset {run.config.dataset!r} has no decoy masks: nothing to simulate an annotator with"
            )
    sample_of = {t.task_id: t.sample_id for t in run.ledger.pushed_tasks(project_id)}
    if task_ids is None:
        tasks = list(client.tasks.list(project=project_id, fields="all"))
    else:
        tasks = [client.tasks.get(id=int(t)) for t in task_ids]
    tools = _tools(client, project_id, kinds)
    rng = np.random.default_rng(seed)
    created = []
    for task in tasks:
        sample_id = (task.data or {}).get(SAMPLE_ID_KEY, sample_of.get(task.id))
        prediction = run_prediction(run, task)
        if sample_id is None or answered(task, prediction):
            continue
        k = kinds[len(created) % len(kinds)]
        if k == "accept":
            if prediction is None:
                raise ValueError(f"task {task.id} has no prediction of run {run.name} to accept")
            result = list(prediction["result"])
        else:
            cells = simulated_cells(np.asarray(truth[int(sample_id)]), run.grid, annotator, rng)  # (G_h, G_w)
            if k in DRAWN:
                start = [] if prediction is None else list(prediction["result"])
                result = start + _drawn(run, int(sample_id), cells, np.asarray(truth[int(sample_id)]), tools[k], rng)
            else:
                result = browser_result(run.grid, cells, k, rng)
        parent = None if prediction is None or k in ("rect", "point") else prediction["id"]
        created.append(annotate_as_browser(client, task.id, result, parent_prediction=parent))
    return created


def run_prediction(run: Run, task) -> dict | None:
    """The task's newest prediction of one of ``run``'s model_versions (one ``push_team`` made first), as a dict
    (``id``, ``result``, ``model_version``, ``created_at``), or None."""
    prefix = f"{run.name}-r"
    found = [_as_dict(p) for p in task.predictions or []]
    ours = [p for p in found if str(p.get("model_version") or "").startswith(prefix)]
    pushed = [p for p in ours if is_pushed(p["model_version"], p.get("result"), p["model_version"])]
    found = pushed or ours
    return max(found, key=lambda p: (utc_timestamp(p["created_at"]), p["id"])) if found else None


def answered(task, prediction: dict | None) -> bool:
    """Whether the task has an annotation made since ``prediction`` (any annotation when there is none): the
    team's own labels, given before the round asked, are not answers to it."""
    since = None if prediction is None else utc_timestamp(prediction["created_at"])
    return any(since is None or utc_timestamp(_as_dict(a)["created_at"]) >= since for a in task.annotations or [])


def _as_dict(item) -> dict:
    return item if isinstance(item, dict) else item.dict()


def _tools(client, project_id: int, kinds: tuple[str, ...]) -> dict[str, RegionControl]:
    """The project's feedback tool for each drawing kind asked for; ValueError naming what the config lacks."""
    wanted = [k for k in kinds if k in DRAWN]
    if not wanted:
        return {}
    config = parse_project_config(client.projects.get(id=project_id).label_config)
    tools = {}
    for k in wanted:
        fitting = [r for r in config.regions if r.tag == DRAWN[k] and r.to_name == config.image.name and r.irrelevant]
        if not fitting:
            raise ValueError(
                f"project {project_id}'s config has no {DRAWN[k]} tool over {config.image.name!r} "
                f"with an irrelevant label: add one (`hitl config --classes ... --snippet --tool {k}`)"
            )
        tools[k] = fitting[0]
    return tools


def simulated_pieces(truth: np.ndarray, cells: np.ndarray, grid) -> list[np.ndarray]:
    """What the annotator outlines for each marked cell: the true region's pixels inside it, or the whole cell
    when it holds none (a wrong cell). truth: (H, W) bool; cells: (G_h, G_w) bool. Returns (H, W) bool masks."""
    rows, cols = grid.row_edges(), grid.col_edges()
    pieces = []
    for r, c in np.argwhere(cells):
        cell = np.zeros((grid.height, grid.width), dtype=bool)
        cell[rows[r] : rows[r + 1], cols[c] : cols[c + 1]] = True
        inside = cell & truth
        pieces.append(inside if inside.any() else cell)
    return pieces


def _drawn(run: Run, sample_id: int, cells: np.ndarray, truth: np.ndarray, tool: RegionControl, rng) -> list[dict]:
    width, height = _picture_size(run, sample_id)
    pieces = simulated_pieces(truth, cells, run.grid)
    ids = [_region_id(rng) for _ in range(4 * len(pieces) + 1)]  # a piece may have several outlines
    return drawn_regions(tool, pieces, label=tool.irrelevant[0].stored, width=width, height=height, ids=ids)


def _picture_size(run: Run, sample_id: int) -> tuple[int, int]:
    """(width, height) of the picture Label Studio shows for the sample: its file's (a team's image), else the
    model's input size."""
    train = run.datasets[0]
    if hasattr(train, "path_of"):
        with Image.open(train.path_of(sample_id)) as picture:
            return picture.size
    _, h, w = run.image_shape
    return w, h


def browser_result(grid, cells: np.ndarray, kind: str, rng: np.random.Generator) -> list[dict]:
    """What the labelling page of our own config submits for ``cells`` (G_h, G_w) bool, plus "label is correct"."""
    width, height, _ = display_size(grid, display_px(grid))
    result = []
    for r, c in np.argwhere(cells):
        x, y, w, h = grid.cell_box_percent(int(r), int(c))
        if kind == "rect":  # drawn by hand: a little inside the cell's borders
            value = {"x": x + 0.1 * w, "y": y + 0.1 * h, "width": 0.8 * w, "height": 0.8 * h, "rotation": 0,
                     "rectanglelabels": [CELL_RECT_LABEL]}  # fmt: skip
            name, tag = CELL_RECT, "rectanglelabels"
        else:
            value = {"x": x + w / 2, "y": y + h / 2, "width": 0.5, "keypointlabels": [CELL_POINT_LABEL]}
            name, tag = CELL_POINT, "keypointlabels"
        result.append({"id": _region_id(rng), "from_name": name, "to_name": ANNOTATED, "type": tag,
                       "origin": "manual", "original_width": width, "original_height": height, "image_rotation": 0,
                       "value": value})  # fmt: skip
    result.append({"id": _region_id(rng), "from_name": LABEL_CHECK, "to_name": ANNOTATED, "type": "choices",
                   "origin": "manual", "value": {"choices": [LABEL_OK]}})  # fmt: skip
    return result


def _region_id(rng: np.random.Generator) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=10))
