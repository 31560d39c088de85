"""What replacing one labelling config by another changes, in words a project's owner can check. Pure: no I/O.

A command that would reconfigure a team's project says what it would change before it does (``hitl push`` on a
project it did not create): the controls removed, added and changed, by name and tag.
"""

from __future__ import annotations

from lxml import etree

_OPTION_TAGS = ("choice", "label")


def _controls(xml: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (tag, option values) of every control (a tag with ``name`` and ``toName``), tags as written."""
    root = etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    found = {}
    for el in root.iter(tag=etree.Element):
        attrs = {k.lower(): v for k, v in el.attrib.items()}
        if "name" in attrs and "toname" in attrs:
            values = tuple(
                child.get("value", "")
                for child in el.iter(tag=etree.Element)
                if child is not el and child.tag.lower() in _OPTION_TAGS
            )
            found[attrs["name"]] = (el.tag, values)
    return found


def control_changes(current: str, new: str) -> list[str]:
    """What replacing config ``current`` by ``new`` does to its controls, one phrase each ([] when none):
    ``"removes Choices 'choice'"``, ``"adds RectangleLabels 'irrelevant_area'"``, ``"changes the labels of
    Choices 'correct_label'"``. An unreadable ``current`` is one phrase saying so; ``new`` must parse."""
    after = _controls(new)
    try:
        before = _controls(current or "")
    except (etree.XMLSyntaxError, ValueError):
        return ["replaces a config that does not parse"]
    changes = [f"removes {before[n][0]} {n!r}" for n in before if n not in after]
    for name, (tag, values) in after.items():
        if name not in before:
            changes.append(f"adds {tag} {name!r}")
        elif before[name][0].lower() != tag.lower():
            changes.append(f"turns {before[name][0]} {name!r} into {tag}")
        elif before[name][1] != values:
            changes.append(f"changes the labels of {tag} {name!r}")
    return changes


def removed_controls(current: str, new: str) -> set[str]:
    """Names of ``current``'s controls that ``new`` lacks (annotations made with them block the change)."""
    try:
        before = _controls(current or "")
    except (etree.XMLSyntaxError, ValueError):
        return set()
    return set(before) - set(_controls(new))
