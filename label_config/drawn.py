"""What a person draws over a pixel mask in a project's own region tool: polygons or a brush stroke, as the labelling
page submits them. Pure: no I/O.

Shape legend: H x W model-input pixels.

A region's geometry is in percent of the image (polygons) or in pixels of the picture Label Studio shows (a brush's
RLE at ``original_width x original_height``), so ``width`` / ``height`` are that picture's size. Both round-trip
through the rasteriser: ``regions.region_mask`` of what is drawn here gives the mask back (a polygon with its
holes filled, which is why polygons are drawn one piece at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from label_config.interface import RegionControl
from label_config.regions import mask_to_polygons, mask_to_rle

DRAWN_TAGS = ("polygonlabels", "brushlabels")  # the tools a mask can be drawn in exactly


def drawn_regions(
    control: RegionControl,
    pieces: Sequence[np.ndarray],
    *,
    label: str,
    width: int,
    height: int,
    ids: Sequence[str],
) -> list[dict]:
    """Result items that mark ``pieces`` (each (H, W) bool) in ``control`` with ``label`` (a stored label string):
    one polygon per outline of each piece (``polygonlabels``), or one brush stroke over them all (``brushlabels``).
    ``ids``: region ids to use, at least one per region made (a polygon piece may have several outlines)."""
    if control.tag not in DRAWN_TAGS:
        raise ValueError(f"{control.name!r} is a {control.tag} tool: masks are drawn with {list(DRAWN_TAGS)}")
    if label not in {o.stored for o in control.options}:
        raise ValueError(f"{label!r} is not a label of {control.name!r} ({[o.stored for o in control.options]})")
    pieces = [np.asarray(p, dtype=bool) for p in pieces if np.any(p)]
    if not pieces:
        return []
    values: list[dict] = []
    if control.tag == "brushlabels":
        union = np.logical_or.reduce(pieces)
        values.append({"format": "rle", "rle": mask_to_rle(union, height, width)})
    else:
        values += [{"points": points, "closed": True} for piece in pieces for points in mask_to_polygons(piece)]
    if len(ids) < len(values):
        raise ValueError(f"{len(values)} regions to draw, {len(ids)} ids given")
    return [{
        "id": region_id, "from_name": control.name, "to_name": control.to_name, "type": control.tag,
        "origin": "manual", "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {**value, control.tag: [label]},
    } for region_id, value in zip(ids, values)]  # fmt: skip
