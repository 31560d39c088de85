"""Class names the labelling config's XML cannot carry are refused by the class check, naming the class."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from label_config.config import build_config, check_classes
from label_config.grid import Grid


@pytest.mark.parametrize(
    "name, what",
    [
        ("a\ufffe", "U+FFFE (a noncharacter)"),
        ("a\uffff", "U+FFFF (a noncharacter)"),
        ("a\ufdd0", "U+FDD0 (a noncharacter)"),
        ("a\U0001fffe", "U+1FFFE (a noncharacter)"),
        ("a\ud800", "U+D800 (a lone surrogate)"),
        ("b\udfff", "U+DFFF (a lone surrogate)"),
        ("a\x7f", "U+007F (a control character)"),
        ("a\x85b", "U+0085 (a control character)"),
    ],
)
def test_characters_xml_cannot_carry_are_refused_naming_the_class(name, what):
    with pytest.raises(ValueError) as info:
        check_classes(["ok", name])
    assert f"class name {name!r} holds {what}" in str(info.value)


@pytest.mark.parametrize("name", ["café", "猫", 'naïve & <odd> "quoted"', "emoji 🐈", "a\u00a0b"])
def test_ordinary_unicode_names_still_make_a_config_that_parses(name):
    config = build_config(["ok", name], Grid(28, 28, 7, 7))
    values = [c.get("value") for c in ET.fromstring(config).iter("Choice")]
    assert name in values
