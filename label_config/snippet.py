"""The feedback tools a team pastes into its own labelling config, and the paste itself.

The region tool's labels are sentences about the model ("Model must not use this"), never about the image's
content, so annotators cannot mistake them for a class; ``parse_project_config`` reads them as irrelevant- and
relevant-like (``IRRELEVANT_WORDS`` "must not", ``RELEVANT_WORDS`` "should use"). The third, neutral label
(``MODEL_LOOKS_HERE``) is what the backend pre-fills the most salient cells with: accepted unread, it says
nothing. The control is named for what its regions are (``feedback_regions``): its from_name shows in every export.
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

from lxml import etree

from label_config.config import check_classes
from label_config.interface import parse_project_config
from label_config.names import MODEL_LOOKS_HERE

FEEDBACK_CONTROL = "feedback_regions"
MUST_NOT_USE = "Model must not use this"
SHOULD_USE = "Model should use this"
# tool -> Label Studio tag: the registry, the check of ``tool`` and the dispatch.
TOOLS = {"rectangle": "RectangleLabels", "polygon": "PolygonLabels", "brush": "BrushLabels"}


def _attr(value: str) -> str:
    """A double-quoted attribute value (the SDK's checks match ``name="..."`` literally), as config.py writes."""
    return '"' + escape(value, {'"': "&quot;", "\n": "&#10;", "\t": "&#9;"}) + '"'


def _tool_tag(tool: str) -> str:
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {sorted(TOOLS)}, got {tool!r}")
    return TOOLS[tool]


def feedback_snippet(
    image: str = "image", *, tool: str | Sequence[str] = "rectangle", name: str = FEEDBACK_CONTROL
) -> str:
    """The XML to paste after a config's ``<Image name=image ...>``: one ``<View>`` holding a header and a
    region tool over that image with the two feedback labels. ``tool``: a key of ``TOOLS``, or several (one
    control each: the first named ``name``, the others ``<name>_<tool>``)."""
    tools = [tool] if isinstance(tool, str) else list(tool)
    tags = [_tool_tag(t) for t in tools]
    if not image or not name:
        raise ValueError(f"image and name must be non-empty, got image={image!r}, name={name!r}")
    if not tags or len(set(tools)) != len(tools):
        raise ValueError(f"tool must name one or more different tools of {sorted(TOOLS)}, got {tool!r}")
    controls = "".join(
        f"  <{tag} name={_attr(name if i == 0 else f'{name}_{t}')} toName={_attr(image)}>\n"
        f'    <Label value={_attr(MUST_NOT_USE)} background="#D62728"/>\n'
        f'    <Label value={_attr(SHOULD_USE)} background="#2CA02C"/>\n'
        f'    <Label value={_attr(MODEL_LOOKS_HERE)} background="#1F77B4"/>\n'
        f"  </{tag}>\n"
        for i, (t, tag) in enumerate(zip(tools, tags))
    )
    return (
        "<View>\n"
        '  <Header size="5" value="Feedback for the model (optional): mark what it must not use"/>\n'
        f"{controls}</View>"
    )


def _parse(xml: str, what: str) -> etree._Element:
    try:
        return etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"{what} is not valid XML: {exc}") from exc


def _indent(piece: etree._Element, indent: str) -> None:
    """Shift the snippet's own line breaks (whitespace-only text) right by ``indent``, to sit at the Image's depth."""
    for el in piece.iter():
        for attr in ("text", "tail"):
            text = getattr(el, attr)
            if (el is not piece or attr == "text") and text and not text.strip() and "\n" in text:
                setattr(el, attr, text.replace("\n", "\n" + indent))


def merge_snippet(xml: str, snippet: str | None = None, *, tool: str | Sequence[str] = "rectangle") -> str:
    """``xml`` with ``snippet`` (default: ``feedback_snippet`` over the config's class image) inserted right
    after the Image its region tool points at; comments, order and layout of the rest are kept.

    Raises ValueError when ``xml`` cannot be served (``ProjectConfigError``), when it already has a feedback
    tool over its class image, when the snippet's names clash with the config's, or when the snippet's
    ``toName`` is not an Image there.
    """
    config = parse_project_config(xml)
    if config.feedback is not None:
        raise ValueError(
            f"the config already has a feedback tool over {config.image.name!r}: "
            f"{config.feedback.name!r} (labels {[o.value for o in config.feedback.irrelevant]})"
        )
    snippet = feedback_snippet(config.image.name, tool=tool) if snippet is None else snippet
    root, piece = _parse(xml, "label config"), _parse(snippet, "snippet")
    taken = {el.get("name") for el in root.iter(tag=etree.Element) if el.get("name")}
    ours = [el for el in piece.iter(tag=etree.Element) if el.get("name")]
    clash = sorted(taken & {el.get("name") for el in ours})
    if clash:
        raise ValueError(f"the snippet's names {clash} are already used in the config; rename them in the snippet")
    targets = {t.strip() for el in ours for k, v in el.attrib.items() if k.lower() == "toname" for t in v.split(",")}
    images = {el.get("name"): el for el in root.iter(tag=etree.Element) if el.tag.lower() == "image"}
    if len(targets) != 1 or next(iter(targets)) not in images:
        raise ValueError(
            f"the snippet must point at one Image of the config (images: {sorted(images)}), "
            f"it points at {sorted(targets)}"
        )
    image = images[next(iter(targets))]
    previous = image.getprevious()
    before = (previous.tail if previous is not None else image.getparent().text) or ""
    if "\n" in before and not before.strip():  # sit at the Image's depth, on a line of its own
        _indent(piece, before.rpartition("\n")[2])
        piece.tail, image.tail = image.tail, before
    else:
        piece.tail = image.tail
    image.addnext(piece)
    return etree.tostring(root, encoding="unicode")


def starter_config(classes: Sequence[str], *, tool: str | Sequence[str] = "rectangle") -> str:
    """A whole config for a team starting afresh: Label Studio's image-classification template over these
    classes (``$image``, Choices ``choice``) with the feedback tools merged in."""
    classes = check_classes(classes)
    choices = "\n".join(f"    <Choice value={_attr(c)}/>" for c in classes)
    stock = (
        '<View>\n  <Image name="image" value="$image"/>\n'
        f'  <Choices name="choice" toName="image">\n{choices}\n  </Choices>\n</View>'
    )
    return merge_snippet(stock, tool=tool)
