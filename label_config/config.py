"""The labelling config: one owner for control names, data keys and the XML Label Studio shows.

Shape legend: H x W model-input pixels, G_h x G_w grid cells.

Layout: the task image and its saliency overlay side by side, both at ``display_px`` wide with Label
Studio's grid drawn on exactly the ``Grid``'s cells. Annotators mark cells the model must NOT rely on,
on the task image (``ANNOTATED``): one click (``CELL_POINT``) marks the cell under it, a rectangle
(``CELL_RECT``) marks every cell it overlaps. The overlay is a read-only reference, so a task whose
overlay is stale can still be annotated and the rasteriser only has one geometry to trust.

Label Studio's ``gridSize`` unit (read in label-studio 1.23.2's frontend, ``libs/editor``:
``components/ImageGrid/ImageGrid.jsx`` draws ``ceil(stageWidth / gridSize)`` squares of ``gridSize``
each, inside the Konva stage; ``tags/object/Image/Image.js`` sets ``stageWidth = naturalWidth *
stageZoom``): it is in *stage* pixels, i.e. displayed pixels at zoom 1, not natural image pixels.
With ``defaultZoom="fit"`` the stage fills the container, so we pin the container to
``display_px`` x ``display_px * H / W`` (``width``/``height`` attributes) and set
``gridSize = display_px / G_w``. Zooming scales the grid layer with the image, so it stays aligned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from xml.sax.saxutils import escape

import numpy as np

from label_config.controls import Control
from label_config.grid import Grid
from label_config.names import (
    ANNOTATED,
    CELL_POINT,
    CELL_POINT_LABEL,
    CELL_RECT,
    CELL_RECT_LABEL,
    CORRECT_LABEL,
    IMAGE,
    IMAGE_KEY,
    LABEL_CHECK,
    LABEL_KEY,
    LABEL_OK,
    LABEL_WRONG,
    MODEL_LOOKS_HERE,
    PREDICTION_KEY,
    PROBABILITY_KEY,
    ROUND_KEY,
    SALIENCY,
    SALIENCY_KEY,
    SAMPLE_ID_KEY,
    SKIP,
    SKIP_CHOICE,
)

GRID_COLOR = "#00FFFF"  # LS draws the grid at 15% opacity; cyan stays visible on dark digits and heat maps


def _attr(value: str) -> str:
    """An XML attribute value, always double-quoted (LS and its SDK match ``name="..."`` literally)."""
    return '"' + escape(value, {'"': "&quot;", "\n": "&#10;", "\t": "&#9;"}) + '"'


def check_classes(classes: Sequence[str]) -> list[str]:
    """Validate class names for use as Choice values; returns them as a list."""
    classes = list(classes)
    if not classes:
        raise ValueError("classes is empty: the config needs at least one class")
    for name in classes:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class name must be a non-empty string, got {name!r}")
        if name != name.strip() or any(ord(ch) < 32 for ch in name):
            raise ValueError(f"class name {name!r} has surrounding whitespace or control characters")
        if (bad := _unwritable(name)) is not None:
            raise ValueError(f"class name {name!r} holds {bad}, which the labelling config's XML cannot carry")
        if "$" in name:
            # Label Studio substitutes $word in Choice values with task data.
            raise ValueError(f"class name {name!r} contains '$', which Label Studio reads as a data key")
    dupes = sorted({n for n in classes if classes.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate class names: {dupes}")
    return classes


def _unwritable(name: str) -> str | None:
    """The first character of ``name`` that XML 1.0 cannot carry or Unicode reserves (lone surrogates, U+FFFE and
    the other noncharacters, DEL and C1 controls), described; None when every character is fine."""
    for ch in name:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return f"U+{code:04X} (a lone surrogate)"
        if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            return f"U+{code:04X} (a noncharacter)"
        if 0x7F <= code <= 0x9F:
            return f"U+{code:04X} (a control character)"
    return None


def display_size(grid: Grid, display_px: int) -> tuple[int, int, int]:
    """``(width_px, height_px, grid_size_px)`` at which LS shows the image with the grid's exact cells.

    Raises ValueError when LS's square ``gridSize`` cannot trace this grid at ``display_px`` wide.
    """
    if not isinstance(display_px, (int, np.integer)) or display_px < grid.cols:
        raise ValueError(f"display_px must be an integer >= {grid.cols} (the grid's columns), got {display_px!r}")
    if display_px % grid.cols:
        raise ValueError(
            f"display_px={display_px} is not a multiple of the grid's {grid.cols} columns; "
            f"try {display_px_for(grid, display_px)}"
        )
    if grid.rows * grid.width != grid.cols * grid.height:
        raise ValueError(
            f"{grid.rows}x{grid.cols} cells over a {grid.height}x{grid.width} image are not square; "
            "Label Studio's gridSize draws square cells only"
        )
    cell = display_px // grid.cols
    return int(display_px), cell * grid.rows, cell


def display_px_for(grid: Grid, target: int = 224) -> int:
    """The multiple of the grid's columns nearest to ``target``: a ``display_px`` LS can trace."""
    return max(grid.cols, int(round(target / grid.cols)) * grid.cols)


def display_px(grid: Grid) -> int:
    """The width at which tasks show images: one owner for the config, the PNGs and the suggestions."""
    return display_px_for(grid, 224)


# Zoom (wheel and toolbar buttons), brightness and contrast sliders in each Image's toolbar: a faint confounder
# (a watermark, a ruler's ticks) is often only visible with more contrast. The grid zooms with the image.
VIEW_CONTROLS = {"zoom": "true", "zoomControl": "true", "brightnessControl": "true", "contrastControl": "true"}


def _image_tag(name: str, key: str, width: int, height: int, cell: int, *, value_list: bool = False) -> str:
    """One Image object. ``value_list``: read ``$key`` as a list of pictures (``valueList``), which Label Studio
    does not require in a task's data (``tasks/validation.py`` checks only ``value`` keys), so tasks that
    carry only the image can be imported; the overlay is attached later (see ``build_config``)."""
    source = "valueList" if value_list else "value"
    controls = " ".join(f"{k}={_attr(v)}" for k, v in VIEW_CONTROLS.items())
    return (
        f"<Image name={_attr(name)} {source}={_attr('$' + key)} width={_attr(f'{width}px')} "
        f"maxWidth={_attr(f'{width}px')} height={_attr(f'{height}px')} maxHeight={_attr(f'{height}px')} "
        f'defaultZoom="fit" smoothing="false" grid="true" gridSize={_attr(str(cell))} '
        f"gridColor={_attr(GRID_COLOR)} {controls}/>"
    )


def build_config(classes: list[str], grid: Grid, *, display_px: int = 224) -> str:
    """The Label Studio labelling config (XML) for these classes and this grid.

    The task image reads ``$image`` (required in every task); the overlay reads ``$saliency`` as a one-item list
    (``valueList``), optional: a task imported with the image only is accepted, and the ML backend's ``/predict``
    attaches its overlay (``ls_backend.overlays``).

    classes: K class names (the dataset's ``.classes``). Raises ValueError on empty or duplicate
    names and on a ``display_px`` at which LS cannot draw the grid's cells (see ``display_size``).
    """
    classes = check_classes(classes)
    width, height, cell = display_size(grid, display_px)
    class_choices = "\n".join(f"      <Choice value={_attr(c)}/>" for c in classes)
    # No width on the panels: each Image also carries its toolbar, and squeezing both into display_px
    # shrank the image (measured: 182 px of 224), which breaks the gridSize arithmetic.
    panel = 'style="flex: 0 0 auto"'
    return f"""<View>
  <Header value="Sample ${SAMPLE_ID_KEY} | round ${ROUND_KEY}"/>
  <Header size="5" value="Label: ${LABEL_KEY} | model: ${PREDICTION_KEY} (p = ${PROBABILITY_KEY})"/>
  <View style="display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start">
    <View {panel}>
      <Header size="5" value="Image: mark what the model must not use"/>
      {_image_tag(IMAGE, IMAGE_KEY, width, height, cell)}
    </View>
    <View {panel}>
      <Header size="5" value="Saliency (where the model looks)"/>
      {_image_tag(SALIENCY, SALIENCY_KEY, width, height, cell, value_list=True)}
    </View>
  </View>
  <KeyPointLabels name={_attr(CELL_POINT)} toName={_attr(ANNOTATED)}>
    <Label value={_attr(CELL_POINT_LABEL)} background="#FF7F0E"/>
  </KeyPointLabels>
  <RectangleLabels name={_attr(CELL_RECT)} toName={_attr(ANNOTATED)}>
    <Label value={_attr(CELL_RECT_LABEL)} background="#D62728"/>
    <Label value={_attr(MODEL_LOOKS_HERE)} background="#1F77B4"/>
  </RectangleLabels>
  <Choices name={_attr(LABEL_CHECK)} toName={_attr(ANNOTATED)} choice="single" showInline="true">
    <Choice value={_attr(LABEL_OK)}/>
    <Choice value={_attr(LABEL_WRONG)}/>
  </Choices>
  <View visibleWhen="choice-selected" whenTagName={_attr(LABEL_CHECK)} whenChoiceValue={_attr(LABEL_WRONG)}>
    <Header size="5" value="Correct label"/>
    <Choices name={_attr(CORRECT_LABEL)} toName={_attr(ANNOTATED)} choice="single" showInline="true">
{class_choices}
    </Choices>
  </View>
  <Choices name={_attr(SKIP)} toName={_attr(ANNOTATED)} choice="single">
    <Choice value={_attr(SKIP_CHOICE)}/>
  </Choices>
</View>
"""


def overlay_value(url: str) -> list[str]:
    """The task-data value of the overlay (``$saliency``): a one-item list, as the config reads it (``valueList``)."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"overlay URL must be a non-empty string, got {url!r}")
    return [url]


def _cell_list(cells: Iterable[tuple[int, int]] | np.ndarray, grid: Grid) -> list[tuple[int, int]]:
    """Cells as unique ``(row, col)`` pairs in first-seen order; a (G_h, G_w) bool array is accepted."""
    if isinstance(cells, np.ndarray) and cells.dtype == bool:
        if cells.shape != grid.shape:
            raise ValueError(f"cells have shape {cells.shape}, the grid is {grid.shape}")
        cells = [tuple(rc) for rc in np.argwhere(cells)]
    out: dict[tuple[int, int], None] = {}
    for rc in cells:
        r, c = (int(v) for v in rc)
        grid.cell_box_percent(r, c)  # raises ValueError outside the grid
        out[(r, c)] = None
    return list(out)


def suggestion_result(
    cells: Iterable[tuple[int, int]] | np.ndarray,
    grid: Grid,
    *,
    score: float | Sequence[float] | None = None,
    display_px: int = 224,
    control: Control | None = None,
) -> list[dict]:
    """Label Studio prediction ``result`` items that pre-fill ``cells``, one region per cell.

    cells: ``(row, col)`` pairs (or a (G_h, G_w) bool array). score: one value for every region or one
    per cell. control: a ``Control`` from ``check_config`` to name regions after a project's own config
    (default: our ``CELL_RECT`` on ``ANNOTATED``, labelled ``MODEL_LOOKS_HERE``, which marks nothing when accepted
    unread); a keypoint control gets a point at each cell centre.
    """
    cells = _cell_list(cells, grid)
    # original_* only inform LS of the display size; regions are in percent, so no divisibility needed.
    width, height = int(display_px), max(1, round(display_px * grid.height / grid.width))
    scores: list[float | None]
    if score is None or isinstance(score, (int, float, np.number)):
        scores = [None if score is None else float(score)] * len(cells)
    else:
        scores = [float(s) for s in score]
        if len(scores) != len(cells):
            raise ValueError(f"got {len(scores)} scores for {len(cells)} unique cells")
    tag = control.tag if control is not None else "rectanglelabels"
    from_name = control.name if control is not None else CELL_RECT
    to_name = control.to_name if control is not None else ANNOTATED
    label = (control.values[0] if control.values else None) if control is not None else MODEL_LOOKS_HERE
    items = []
    for (r, c), s in zip(cells, scores):
        x, y, w, h = grid.cell_box_percent(r, c)
        if tag.startswith("keypoint"):
            value: dict[str, object] = {"x": x + w / 2, "y": y + h / 2, "width": min(w, h) / 4}
        else:
            value = {"x": x, "y": y, "width": w, "height": h, "rotation": 0}
        if tag.endswith("labels") and label is not None:
            value[tag] = [label]
        item: dict[str, object] = {
            "id": f"cell_{r}_{c}",
            "from_name": from_name,
            "to_name": to_name,
            "type": tag,
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": value,
        }
        if s is not None:
            item["score"] = float(s)
        items.append(item)
    return items
