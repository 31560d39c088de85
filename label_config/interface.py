"""The one parsed view of any project's labelling config: its images, its class control, its region tools.

Built on label-studio-sdk's ``LabelInterface`` (pure: lxml and pydantic, no HTTP), which tells control tags from
object tags, links each control to the objects its ``toName`` names, reads data keys (``value="$image"``) and
builds result items (``choices_result``). Hand-written here only for what it does not give, each said where:
case-insensitive tag and attribute names, the ``<Choice>`` list with its duplicates, value vs alias, which
Choices holds the classes, and which region tool says "the model must not use this".

Label Studio writes a ``<Choice>``'s or ``<Label>``'s ``alias`` into results instead of its ``value`` when the
alias is set (labelstud.io/tags/choice: "the alias replaces the choice value in the annotation results"; the
SDK's ``LabelTag`` agrees): ``Option.stored`` is that string, ``Option.value`` what annotators see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from label_config.names import CELL_POINT, CELL_RECT, LABEL_CHECK, MODEL_LOOKS_HERE, SKIP

if TYPE_CHECKING:
    from label_studio_sdk.label_interface import LabelInterface

# Region tools over an image whose labels can mark where the model must (not) look, in the order a prediction
# prefers them: a rectangle pre-fills one grid cell exactly; a brush needs RLE masks.
REGION_TAGS = ("rectanglelabels", "polygonlabels", "ellipselabels", "keypointlabels", "brushlabels")
OUR_FEEDBACK_CONTROLS = (CELL_RECT, CELL_POINT)  # every label of these but MODEL_LOOKS_HERE is irrelevant-like
OUR_OTHER_CHOICES = (LABEL_CHECK, SKIP)  # our own Choices that never hold the classes
# Whole words or phrases, matched case-insensitively on a label's value and alias. Irrelevant wins over relevant
# ("Irrelevant object", "not relevant"). Kept small on purpose: a miss only means no pre-filled regions.
IRRELEVANT_WORDS = (
    "irrelevant",
    "not relevant",
    "ignore",
    "shortcut",
    "confounder",
    "spurious",
    "artifact",
    "artefact",
    "not here",
    "must not",
)
RELEVANT_WORDS = ("relevant", "look here", "object", "should use")

# Canonical spellings of the tags and attributes we read. Label Studio's editor reads tag and attribute names
# case-insensitively; the SDK matches them exactly (``toName``, ``Choice``), so we respell before it parses.
_CANONICAL = {
    s.lower(): s
    for s in (
        "View",
        "Image",
        "Choices",
        "Choice",
        "Label",
        "RectangleLabels",
        "PolygonLabels",
        "EllipseLabels",
        "KeyPointLabels",
        "BrushLabels",
        "Rectangle",
        "Polygon",
        "Ellipse",
        "KeyPoint",
        "Brush",
        "Header",
        "Text",
    )
}
_CANONICAL_ATTRS = {s.lower(): s for s in ("name", "toName", "value", "valueList", "alias", "choice")}
_OPTION_TAGS = ("Choice", "Label")


class ProjectConfigError(ValueError):
    """A config the backend cannot serve; ``problems`` names each thing missing or wrong."""

    def __init__(self, *problems: str):
        self.problems = problems
        super().__init__("label config cannot be used: " + "; ".join(problems))


@dataclass(frozen=True)
class ImageObject:
    """An ``<Image>``: ``data_key`` is ``key`` of ``value="$key"`` (None for a literal URL); ``value_list``
    when it reads ``valueList`` (a list of pictures, optional in a task's data)."""

    name: str
    data_key: str | None
    value_list: bool


@dataclass(frozen=True)
class Option:
    """One ``<Choice>`` or ``<Label>``: ``value`` is shown to annotators, ``stored`` written in results."""

    value: str
    alias: str | None = None

    @property
    def stored(self) -> str:
        return self.alias or self.value


@dataclass(frozen=True)
class ClassControl:
    """The Choices that holds the classes, in config order; ``multiple`` for ``choice="multiple"``."""

    name: str
    to_name: str
    options: tuple[Option, ...]
    multiple: bool = False

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(o.value for o in self.options)

    def index(self, label: str) -> int:
        """The class index of a label read from a result: the stored string, else the shown value (an
        annotation made before an alias was added). ValueError naming the label when it is neither."""
        for attr in ("stored", "value"):
            for i, option in enumerate(self.options):
                if getattr(option, attr) == label:
                    return i
        raise ValueError(f"{self.name!r}: {label!r} is not one of the classes {[o.stored for o in self.options]}")


@dataclass(frozen=True)
class RegionControl:
    """A region tool over an image; ``tag`` is the lower-case tag (= the result ``type``)."""

    name: str
    tag: str
    to_name: str
    options: tuple[Option, ...]

    @property
    def irrelevant(self) -> tuple[Option, ...]:
        """Labels that mark what the model must not use (every label of our own cell tools but the neutral one)."""
        if self.name in OUR_FEEDBACK_CONTROLS:
            return tuple(o for o in self.options if not is_neutral(o))
        return tuple(o for o in self.options if label_kind(o) == "irrelevant")

    @property
    def relevant(self) -> tuple[Option, ...]:
        """Labels that mark what the model should use."""
        if self.name in OUR_FEEDBACK_CONTROLS:
            return ()
        return tuple(o for o in self.options if label_kind(o) == "relevant")

    @property
    def neutral(self) -> Option | None:
        """The label that only says where the model looks (``MODEL_LOOKS_HERE``), which predictions pre-fill
        regions with; None when the tool has none."""
        return next((o for o in self.options if is_neutral(o)), None)


@dataclass(frozen=True)
class ProjectConfig:
    """A parsed config: ``classes`` is the class control; ``regions`` every region tool over an image."""

    images: tuple[ImageObject, ...]
    classes: ClassControl
    regions: tuple[RegionControl, ...]
    interface: LabelInterface = field(repr=False, compare=False)

    @property
    def image(self) -> ImageObject:
        """The image the classes are about (the class control's object)."""
        return next(i for i in self.images if i.name == self.classes.to_name)

    @property
    def feedback(self) -> RegionControl | None:
        """The region tool predictions pre-fill: over the class image with an irrelevant-like label, the most
        preferred tag (``REGION_TAGS`` order) first, then config order; None when there is none."""
        fitting = [r for r in self.regions if r.to_name == self.image.name and r.irrelevant]
        fitting.sort(key=lambda r: REGION_TAGS.index(r.tag))
        return fitting[0] if fitting else None


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def label_kind(option: Option) -> str | None:
    """``"irrelevant"``, ``"relevant"`` or None, from ``IRRELEVANT_WORDS`` / ``RELEVANT_WORDS`` (whole words,
    case-insensitive, a trailing plural "s" allowed) in the label's value or alias."""
    text = _words(option.value) + _words(option.alias or "")
    for kind, words in (("irrelevant", IRRELEVANT_WORDS), ("relevant", RELEVANT_WORDS)):
        if any(f" {w} " in text or f" {w}s " in text for w in words):
            return kind
    return None


def is_neutral(option: Option) -> bool:
    """Whether the label is ``MODEL_LOOKS_HERE`` (value or alias, case and spacing aside): one name on purpose,
    so a content label ("Dog") is never taken for it."""
    return any(_words(t or "") == _words(MODEL_LOOKS_HERE) for t in (option.value, option.alias))


def _canonical_tree(xml: str) -> etree._Element:
    """The config as an lxml tree with the tags and attributes we read respelled canonically."""
    if not isinstance(xml, str) or not xml.strip():
        raise ProjectConfigError("the config is empty")
    try:
        root = etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise ProjectConfigError(f"the XML does not parse: {exc}") from exc
    for el in root.iter(tag=etree.Element):
        el.tag = _CANONICAL.get(el.tag.lower(), el.tag)
        for key in [k for k in el.attrib if k.lower() in _CANONICAL_ATTRS and k not in _CANONICAL_ATTRS.values()]:
            el.attrib[_CANONICAL_ATTRS[key.lower()]] = el.attrib.pop(key)
    return root


def _options(root: etree._Element, control: str, names: set[str]) -> tuple[list[Option], list[str]]:
    """A control's options in config order, with duplicates (the SDK keys them by stored value, so it drops
    repeats): nested options count for their nearest named control ancestor, as in the SDK."""
    element = next(el for el in root.iter(tag=etree.Element) if el.get("name") == control)
    options, problems = [], []
    for el in element.iter(*_OPTION_TAGS):
        owner = next(a for a in el.iterancestors() if a.get("name") in names)
        if owner is not element:
            continue
        if not (el.get("value") or el.get("alias")):
            problems.append(f"a <{el.tag}> in {control!r} has no value")
            continue
        options.append(Option(value=el.get("value") or el.get("alias"), alias=el.get("alias") or None))
    return options, problems


def _repeats(options: list[Option]) -> list[str]:
    """Strings that name two options: a repeated value or stored string, or one option's alias another's value."""
    seen: dict[str, int] = {}
    for i, option in enumerate(options):
        for text in {option.value, option.stored}:
            seen.setdefault(text, i)
    return sorted({t for i, o in enumerate(options) for t in {o.value, o.stored} if seen[t] != i})


def _pick_class_control(candidates: list, choices: list, class_control: str | None, images: set[str]) -> str:
    """The name of the Choices holding the classes (rule in ``parse_project_config``); raises with the reason."""
    if class_control is not None:
        if class_control not in {c.name for c in choices}:
            raise ProjectConfigError(
                f"class_control={class_control!r} is not a Choices in the config (Choices: {[c.name for c in choices]})"
            )
        if class_control not in {c.name for c in candidates}:
            raise ProjectConfigError(f"Choices {class_control!r} is not over an Image (images: {sorted(images)})")
        return class_control
    if not candidates:
        elsewhere = [
            f"Choices {c.name!r} points at {c.to_name} (not an Image)"
            for c in choices
            if c.name not in OUR_OTHER_CHOICES
        ]
        missing = (
            'no Choices control over an Image to hold the classes (add e.g. <Choices name="choice" '
            'toName="image"> with one <Choice value="..."/> per class)'
        )
        raise ProjectConfigError(*(elsewhere or [missing]))
    if len(candidates) > 1:
        # A one-Choice Choices is a checkbox (a flag such as "unsure"), not a class list.
        lists = [c for c in candidates if len(c.labels or []) != 1]
        candidates = lists if len(lists) == 1 else candidates
    if len(candidates) > 1:
        raise ProjectConfigError(
            f"several Choices over an Image could hold the classes: "
            f"{[c.name for c in candidates]}; pass class_control=<name>"
        )
    return candidates[0].name


def parse_project_config(xml: str, *, class_control: str | None = None) -> ProjectConfig:
    """Parse a labelling config into the view the backend, push, pull and the rasteriser share.

    The class control is the Choices over an Image that is not one of our own non-class Choices
    (``OUR_OTHER_CHOICES``); when several qualify, a one-Choice Choices (a checkbox) is passed over, and if
    several still qualify the config is refused unless ``class_control`` names one. Region tools are optional.
    Raises ``ProjectConfigError`` (a ValueError) naming what is missing or wrong.
    """
    root = _canonical_tree(xml)
    try:
        # Imported here: the data layer reaches this module (csv: of a Label Studio export), and the benchmarks
        # run on a GPU machine without label-studio-sdk (scripts/offline_cli.py); only parsing a config needs it.
        from label_studio_sdk.label_interface import LabelInterface

        interface = LabelInterface(etree.tostring(root, encoding="unicode"))
    except Exception as exc:  # the SDK raises bare Exception subclasses
        raise ProjectConfigError(f"label-studio-sdk could not parse the config: {exc}") from exc
    names = [el.get("name") for el in root.iter(tag=etree.Element) if el.get("name") and el.tag not in _OPTION_TAGS]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # the SDK keys tags by name and would silently keep the last one
        raise ProjectConfigError(f"names used by more than one tag: {repeated}")
    objects = {o.name: o for o in (interface.objects or [])}
    images = tuple(
        ImageObject(o.name, o.value_name if o.value_is_variable else None, "valueList" in o.attr)
        for o in objects.values()
        if o.tag.lower() == "image"
    )
    if not images:
        raise ProjectConfigError(
            f'no Image object (add e.g. <Image name="image" value="$image"/>); objects: {sorted(objects)}'
        )
    image_names = {i.name for i in images}
    controls = list(interface.controls or [])
    choices = [c for c in controls if c.tag.lower() == "choices"]
    candidates = [c for c in choices if c.name not in OUR_OTHER_CHOICES and c.to_name[0] in image_names]
    picked_name = _pick_class_control(candidates, choices, class_control, image_names)
    picked = next(c for c in choices if c.name == picked_name)
    control_names = {c.name for c in controls}
    options, problems = _options(root, picked.name, control_names)
    if picked.dynamic_value:
        problems.append(
            f"Choices {picked.name!r} takes its options from task data ({picked.attr['value']}); "
            "the classes must be written in the config as <Choice> tags"
        )
    elif not options:
        problems.append(f"Choices {picked.name!r} has no <Choice> (no classes)")
    if _repeats(options):
        problems.append(f"Choices {picked.name!r} names classes more than once: {_repeats(options)}")
    image = next(i for i in images if i.name == picked.to_name[0])
    if image.data_key is None:
        problems.append(f'Image {image.name!r} reads no task-data key (expected value="$<key>")')
    if problems:
        raise ProjectConfigError(*problems)
    regions = tuple(
        RegionControl(c.name, c.tag.lower(), c.to_name[0], tuple(_options(root, c.name, control_names)[0]))
        for c in controls
        if c.tag.lower() in REGION_TAGS and c.to_name[0] in image_names
    )
    classes = ClassControl(picked.name, picked.to_name[0], tuple(options), bool(picked.is_multiple_choice))
    return ProjectConfig(images=images, classes=classes, regions=regions, interface=interface)


def choices_result(config: ProjectConfig, class_index: int, score: float | None = None) -> dict[str, Any]:
    """The ``choices`` result item that predicts class ``class_index`` (its stored string), built by the SDK."""
    options = config.classes.options
    if not isinstance(class_index, int) or not 0 <= class_index < len(options):
        raise ValueError(f"class_index must be an int in [0, {len(options)}), got {class_index!r}")
    region = config.interface.get_control(config.classes.name).label(options[class_index].stored)
    item = {
        "from_name": region.from_tag.name,
        "to_name": region.to_tag.name,
        "type": region.from_tag.tag.lower(),
        "value": {"choices": list(region.value.choices)},
    }  # no random region id: choices need none
    if score is not None:
        item["score"] = float(score)
    return item


def classes_from_result(config: ProjectConfig, result: list[dict]) -> tuple[int, ...]:
    """Every class index an annotation's ``result`` chose in the class control, in first-seen order."""
    if not isinstance(result, list) or not all(isinstance(item, dict) for item in result):
        raise ValueError(f"result must be a list of result items, got {str(result)[:60]!r}")
    found: dict[int, None] = {}
    for item in result:
        if item.get("from_name") == config.classes.name:
            for label in (item.get("value") or {}).get("choices") or []:
                found[config.classes.index(label)] = None
    return tuple(found)


def class_from_result(config: ProjectConfig, result: list[dict]) -> int | None:
    """The one class an annotation's ``result`` chose, None when it chose none; ValueError on an unknown label
    (named) or on several classes."""
    chosen = classes_from_result(config, result)
    if len(chosen) > 1:
        raise ValueError(
            f"{config.classes.name!r}: several classes chosen: {[config.classes.options[i].stored for i in chosen]}"
        )
    return chosen[0] if chosen else None
