"""A prediction for a project's own config: the class as a ``choices`` result, the cells the model looks at as
regions of the config's feedback tool. Pure: no I/O.

Shape legend: G_h x G_w grid cells.

The regions carry the tool's neutral label (``MODEL_LOOKS_HERE``), never an irrelevant one: Label Studio copies a
prediction's regions into the annotation when an annotator accepts it, so a pre-filled "Irrelevant" region accepted
unread would tell the model to ignore what it looks at (on a digit: its own strokes). A region is feedback only
once the annotator relabels it (or draws one) with an irrelevant label. A tool without the neutral label gets no
regions: the class prediction still comes, and ``hitl config`` prints a snippet that has the label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from label_config.grid import Grid
from label_config.interface import ProjectConfig, RegionControl, choices_result
from label_config.regions import mask_to_rle


def _value(tag: str, grid: Grid, r: int, c: int, width: int, height: int) -> dict:
    """The geometry of cell ``(r, c)`` in the value format of region type ``tag`` (percent of the image)."""
    x, y, w, h = grid.cell_box_percent(r, c)
    if tag == "keypointlabels":
        return {"x": x + w / 2, "y": y + h / 2, "width": min(w, h) / 4}
    if tag == "polygonlabels":
        return {"points": [[x, y], [x + w, y], [x + w, y + h], [x, y + h]], "closed": True}
    if tag == "ellipselabels":
        return {"x": x + w / 2, "y": y + h / 2, "radiusX": w / 2, "radiusY": h / 2, "rotation": 0}
    if tag == "brushlabels":
        mask = np.zeros((height, width), dtype=bool)  # (H, W) at the size the regions are given for
        rows = slice(round(y * height / 100), max(round((y + h) * height / 100), round(y * height / 100) + 1))
        cols = slice(round(x * width / 100), max(round((x + w) * width / 100), round(x * width / 100) + 1))
        mask[rows, cols] = True
        return {"format": "rle", "rle": mask_to_rle(mask, height, width)}
    return {"x": x, "y": y, "width": w, "height": h, "rotation": 0}


def attention_regions(
    control: RegionControl,
    cells: Sequence[tuple[int, int]],
    grid: Grid,
    *,
    scores: Sequence[float],
    texts: Sequence[str],
    display_px: int = 224,
) -> list[dict]:
    """One region per cell in ``control``, labelled with its neutral label, each with its score and a ``meta``
    text; [] when the control has no neutral label. cells: ``(row, col)`` pairs, most salient first."""
    label = control.neutral
    if label is None:
        return []
    if not len(scores) == len(texts) == len(cells):
        raise ValueError(f"got {len(cells)} cells, {len(scores)} scores and {len(texts)} texts")
    width, height = int(display_px), max(1, round(display_px * grid.height / grid.width))
    items = []
    for (r, c), score, text in zip(cells, scores, texts):
        value = _value(control.tag, grid, int(r), int(c), width, height)
        value[control.tag] = [label.stored]
        items.append({
            "id": f"cell_{int(r)}_{int(c)}", "from_name": control.name, "to_name": control.to_name,
            "type": control.tag, "original_width": width, "original_height": height, "image_rotation": 0,
            "value": value, "score": float(score), "meta": {"text": [text]},
        })  # fmt: skip
    return items


def prediction_result(
    config: ProjectConfig,
    class_index: int,
    probability: float,
    cells: Sequence[tuple[int, int]],
    grid: Grid,
    *,
    scores: Sequence[float],
    display_px: int = 224,
    label: tuple[int, float] | None = None,
) -> list[dict]:
    """A prediction's ``result``: the class (``choices``, first), then the cells the model looks at in the config's
    feedback tool (none without one). ``class_index`` / ``probability``: the model's predicted class and its
    probability; scores: per cell, in [0, 1].

    ``label``: ``(class index, the model's probability of it)`` of the label a task already carries (a team's
    project asked for feedback on its own labelled tasks). The choice pre-filled is then that label, scored with
    the model's probability of it, so an annotator who accepts the prediction unread changes nothing; the model's
    own class and probability are said in each region's text. Without it the choice is the predicted class."""
    chosen, chosen_p = (class_index, probability) if label is None else label
    items = [choices_result(config, chosen, chosen_p)]
    tool = config.feedback
    if tool is None:
        return items
    shown = config.classes.options[class_index].value
    must_not = tool.irrelevant[0].value
    what = f"for {shown}, p = {probability:.2f}"
    if label is not None and label[0] != class_index:
        what += f"; the label {config.classes.options[label[0]].value} has p = {label[1]:.2f}"
    texts = [
        f"the model looks here (salient cell {rank} {what}): relabel it {must_not!r} if the model must not use this"
        for rank in range(1, len(cells) + 1)
    ]
    return items + attention_regions(tool, cells, grid, scores=scores, texts=texts, display_px=display_px)
