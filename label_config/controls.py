"""The one parsed view of a (possibly user-edited) labelling config: our controls, its objects and the
task-data key each object reads.

The ML backend names its regions after the project's own config (a prediction whose ``from_name`` or
``to_name`` is not in the config is silently not shown by Label Studio) and reads the image from the data key
the annotated object names; the rasteriser and the label-fix parser read the same names. Nothing else
parses the XML. Parsed with the standard library (pure, no SDK import):
Label Studio treats tag and attribute names case-insensitively, so we do too.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from label_config.names import CELL_POINT, CELL_RECT, CORRECT_LABEL, LABEL_CHECK, SKIP

RECT_TAGS = ("rectanglelabels", "rectangle")  # region types that mark cells by area
POINT_TAGS = ("keypointlabels", "keypoint")  # region types that mark the cell under a click
_VALUE_TAGS = ("label", "choice")


@dataclass(frozen=True)
class Control:
    """One control tag: ``tag`` is Label Studio's lower-case tag (= the result ``type``)."""

    name: str
    tag: str
    to_name: str  # the first object it points at
    values: tuple[str, ...]  # label / choice values as they appear in results (alias when set)


@dataclass(frozen=True)
class ConfigControls:
    """The controls we use, ``None`` where the config lacks one; ``objects`` maps object name -> tag;
    ``data_keys`` maps object name -> the task-data key it reads (``value="$image"`` -> ``image``);
    ``list_objects`` names the objects that read a list (``valueList="$key"``: optional in a task's data)."""

    rect: Control | None
    point: Control | None
    label_check: Control | None
    correct_label: Control | None
    skip: Control | None
    objects: tuple[tuple[str, str], ...]
    data_keys: tuple[tuple[str, str], ...] = ()
    list_objects: tuple[str, ...] = ()

    @property
    def region(self) -> Control:
        """The control predictions should use to mark cells: the rectangle tool when there is one."""
        return self.rect if self.rect is not None else self.point  # type: ignore[return-value]

    def data_key(self, object_name: str) -> str:
        """The task-data key the object ``object_name`` reads; ValueError naming what is wrong otherwise."""
        keys = dict(self.data_keys)
        if object_name not in dict(self.objects):
            raise ValueError(
                f"label config has no object named {object_name!r} (objects: {sorted(dict(self.objects))})"
            )
        if object_name not in keys:
            raise ValueError(f"object {object_name!r} does not read a task-data key (expected value='$<data key>')")
        return keys[object_name]


def _attrs(el: ET.Element) -> dict[str, str]:
    return {k.lower(): v for k, v in el.attrib.items()}


def _control(el: ET.Element) -> Control:
    attrs = _attrs(el)
    values = tuple(
        _attrs(child).get("alias") or _attrs(child).get("value", "")
        for child in el.iter()
        if child is not el and child.tag.lower() in _VALUE_TAGS
    )
    to_name = attrs.get("toname", "").split(",")[0].strip()
    return Control(name=attrs.get("name", ""), tag=el.tag.lower(), to_name=to_name, values=values)


def _pick(controls: list[Control], tags: tuple[str, ...], preferred: str) -> Control | None:
    """Our named control when present with a fitting tag, else the first control with such a tag."""
    fitting = [c for c in controls if c.tag in tags]
    named = [c for c in fitting if c.name == preferred]
    chosen = named or fitting
    return chosen[0] if chosen else None


def check_config(xml: str) -> ConfigControls:
    """Parse a labelling config and return which of our controls it has.

    Raises ValueError when the XML does not parse, when it has no rectangle or keypoint control
    (nothing could mark cells), or when that control points at no Image object.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"label config is not valid XML: {exc}") from exc
    objects, controls, data_keys, list_objects = [], [], [], []
    for el in root.iter():
        attrs = _attrs(el)
        if "toname" in attrs and "name" in attrs:
            controls.append(_control(el))
        elif "name" in attrs and ("value" in attrs or "valuelist" in attrs) and el.tag.lower() not in _VALUE_TAGS:
            objects.append((attrs["name"], el.tag.lower()))
            source = attrs.get("value", attrs.get("valuelist", ""))
            if source.startswith("$") and len(source) > 1:
                data_keys.append((attrs["name"], source[1:]))
                if "value" not in attrs:
                    list_objects.append(attrs["name"])
    rect = _pick(controls, RECT_TAGS, CELL_RECT)
    point = _pick(controls, POINT_TAGS, CELL_POINT)
    if rect is None and point is None:
        raise ValueError(
            f"label config has no RectangleLabels or KeyPointLabels control (expected {CELL_RECT!r} or "
            f"{CELL_POINT!r}); found controls {[c.name for c in controls]}"
        )
    images = {name for name, tag in objects if tag == "image"}
    for ctrl in (rect, point):
        if ctrl is not None and ctrl.to_name not in images:
            raise ValueError(
                f"control {ctrl.name!r} points at {ctrl.to_name!r}, which is not an Image in the config "
                f"(images: {sorted(images)})"
            )
    by_name = {c.name: c for c in controls if c.tag == "choices"}
    return ConfigControls(
        rect=rect,
        point=point,
        label_check=by_name.get(LABEL_CHECK),
        correct_label=by_name.get(CORRECT_LABEL),
        skip=by_name.get(SKIP),
        objects=tuple(objects),
        data_keys=tuple(data_keys),
        list_objects=tuple(list_objects),
    )
