"""The one parsed view of any project's config: Label Studio's stock template, aliases, multiple choice, our
own config, the region tools, and every config the backend cannot serve with the message that names why."""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.label_interface import LabelInterface

from label_config.config import build_config
from label_config.grid import Grid
from label_config.interface import (
    ClassControl,
    ImageObject,
    Option,
    ProjectConfigError,
    choices_result,
    class_from_result,
    classes_from_result,
    label_kind,
    parse_project_config,
)
from label_config.names import (
    CELL_POINT,
    CELL_RECT,
    CELL_RECT_LABEL,
    CORRECT_LABEL,
    IMAGE,
    SALIENCY,
    SALIENCY_KEY,
)

# Label Studio's "Image Classification" template as its UI offers it (and the principal issue quotes it).
STOCK = (
    '<View><Image name="image" value="$image"/><Choices name="choice" toName="image">'
    '<Choice value="Cat"/><Choice value="Dog"/></Choices></View>'
)
ALIASES = (
    '<View><Image name="img" value="$url"/><Choices name="species" toName="img" choice="single-radio">'
    '<Choice value="Domestic cat" alias="cat"/><Choice value="Dog"/><Choice value="Red fox" alias="fox"/>'
    "</Choices></View>"
)
MULTIPLE = (
    '<View><Image name="photo" value="$photo"/><Choices name="tags" toName="photo" choice="multiple">'
    '<Choice value="indoor"/><Choice value="outdoor"/><Choice value="person"/></Choices></View>'
)
# Tags and attributes in other cases, Choice tags nested in a View, a literal-text Header in between.
SPELLED = (
    '<view><IMAGE Name="image" VALUE="$image"/><header value="pick"/><choices name="c" toname="image">'
    '<View><choice value="A"/></View><View><Choice value="B"/></View></choices></view>'
)


def _result(name, *choices):
    return {"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": list(choices)}}


@pytest.mark.parametrize(
    "xml, control, to_name, classes, stored, multiple, key",
    [
        (STOCK, "choice", "image", ("Cat", "Dog"), ("Cat", "Dog"), False, "image"),
        (ALIASES, "species", "img", ("Domestic cat", "Dog", "Red fox"), ("cat", "Dog", "fox"), False, "url"),
        (MULTIPLE, "tags", "photo", ("indoor", "outdoor", "person"), ("indoor", "outdoor", "person"), True, "photo"),
        (SPELLED, "c", "image", ("A", "B"), ("A", "B"), False, "image"),
        (
            build_config(["zero", "one", "two"], Grid(28, 28, 7, 7)),
            CORRECT_LABEL,
            IMAGE,
            ("zero", "one", "two"),
            ("zero", "one", "two"),
            False,
            "image",
        ),
    ],
)
def test_parse_finds_the_class_control(xml, control, to_name, classes, stored, multiple, key):
    config = parse_project_config(xml)
    assert (config.classes.name, config.classes.to_name, config.classes.multiple) == (control, to_name, multiple)
    assert config.classes.classes == classes
    assert tuple(o.stored for o in config.classes.options) == stored
    assert config.image.name == to_name and config.image.data_key == key and not config.image.value_list


def test_stock_template_has_no_region_tools():
    config = parse_project_config(STOCK)
    assert config.images == (ImageObject("image", "image", False),)
    assert config.regions == () and config.feedback is None


def test_our_own_config_parses_with_its_images_and_cell_tools():
    config = parse_project_config(build_config(["a", "b"], Grid(28, 28, 7, 7)))
    assert {i.name: i for i in config.images}[SALIENCY] == ImageObject(SALIENCY, SALIENCY_KEY, True)
    assert {r.name for r in config.regions} == {CELL_RECT, CELL_POINT}
    assert config.feedback.name == CELL_RECT and config.feedback.tag == "rectanglelabels"
    assert config.feedback.irrelevant == (Option(CELL_RECT_LABEL),) and config.feedback.relevant == ()
    assert all(r.irrelevant for r in config.regions)


@pytest.mark.parametrize("tag", ["RectangleLabels", "PolygonLabels", "BrushLabels", "KeyPointLabels", "EllipseLabels"])
def test_every_region_tool_over_the_image_is_found(tag):
    xml = STOCK.replace(
        "</View>",
        f'<{tag} name="marks" toName="image"><Label value="Shortcut"/>'
        f'<Label value="Look here" alias="good"/></{tag}></View>',
    )
    config = parse_project_config(xml)
    assert config.feedback.name == "marks" and config.feedback.tag == tag.lower()
    assert config.feedback.irrelevant == (Option("Shortcut"),)
    assert config.feedback.relevant == (Option("Look here", "good"),)


def test_the_feedback_tool_prefers_rectangles_and_skips_a_detection_tool():
    tools = (
        '<RectangleLabels name="boxes" toName="image"><Label value="Cat"/></RectangleLabels>'
        '<KeyPointLabels name="pts" toName="image"><Label value="ignore"/></KeyPointLabels>'
        '<PolygonLabels name="poly" toName="image"><Label value="artifacts"/></PolygonLabels>'
    )
    xml = STOCK.replace("</View>", tools + "</View>")
    config = parse_project_config(xml)
    assert [r.name for r in config.regions] == ["boxes", "pts", "poly"]
    assert config.feedback.name == "poly"  # "boxes" marks a class, not feedback


@pytest.mark.parametrize(
    "value, alias, kind",
    [
        ("Irrelevant", None, "irrelevant"),
        ("IGNORE this", None, "irrelevant"),
        ("shortcuts", None, "irrelevant"),
        ("Confounder", None, "irrelevant"),
        ("artefact", None, "irrelevant"),
        ("Spurious cue", None, "irrelevant"),
        ("not here", None, "irrelevant"),
        ("Model must not use this", None, "irrelevant"),
        ("Not relevant", None, "irrelevant"),
        ("Irrelevant object", None, "irrelevant"),
        ("x", "irrelevant", "irrelevant"),
        ("Relevant", None, "relevant"),
        ("look-here", None, "relevant"),
        ("Object", None, "relevant"),
        ("Model should use this", None, "relevant"),
        ("Cat", None, None),
        ("ignored?", None, None),
        ("Background", None, None),
        ("objective", None, None),
    ],
)
def test_label_kind(value, alias, kind):
    assert label_kind(Option(value, alias)) == kind


def test_a_checkbox_is_not_taken_for_the_classes():
    xml = STOCK.replace("</View>", '<Choices name="unsure" toName="image"><Choice value="unsure"/></Choices></View>')
    assert parse_project_config(xml).classes.name == "choice"


def test_class_control_picks_among_several_lists():
    xml = STOCK.replace(
        "</View>",
        '<Choices name="quality" toName="image"><Choice value="sharp"/><Choice value="blurry"/></Choices></View>',
    )
    with pytest.raises(ValueError, match=r"several Choices .*\['choice', 'quality'\].*class_control"):
        parse_project_config(xml)
    assert parse_project_config(xml, class_control="quality").classes.classes == ("sharp", "blurry")


@pytest.mark.parametrize(
    "xml, match",
    [
        ("", "the config is empty"),
        ("<View><Image", "the XML does not parse"),
        ("<View><Text name='t' value='$t'/></View>", r"no Image object .*objects: \['t'\]"),
        ('<View><Image name="image" value="$image"/></View>', "no Choices control over an Image"),
        (
            (
                '<View><Image name="image" value="$image"/><Text name="txt" value="$text"/>'
                '<Choices name="c" toName="txt">'
                '<Choice value="A"/></Choices></View>'
            ),
            r"Choices 'c' points at \['txt'\] \(not an Image\)",
        ),
        (
            '<View><Image name="image" value="$image"/><Choices name="c" toName="image"/></View>',
            r"Choices 'c' has no <Choice> \(no classes\)",
        ),
        (STOCK.replace('value="Dog"', 'value="Cat"'), r"names classes more than once: \['Cat'\]"),
        (STOCK.replace('value="Dog"', 'value="Dog" alias="Cat"'), r"more than once: \['Cat'\]"),
        (
            '<View><Image name="image" value="$image"/><Choices name="c" toName="image" value="$options"/></View>',
            r"takes its options from task data \(\$options\)",
        ),
        (STOCK.replace("</View>", '<Text name="choice" value="$x"/></View>'), r"more than one tag: \['choice'\]"),
        (STOCK.replace('value="$image"', 'value="https://example.org/a.png"'), "Image 'image' reads no task-data key"),
        (STOCK.replace('<Choice value="Dog"/>', "<Choice/>"), "a <Choice> in 'choice' has no value"),
    ],
)
def test_configs_that_cannot_be_served_say_why(xml, match):
    with pytest.raises(ProjectConfigError, match=match) as info:
        parse_project_config(xml)
    assert isinstance(info.value, ValueError) and info.value.problems


@pytest.mark.parametrize("name, match", [("nope", "is not a Choices in the config"), ("c", "is not over an Image")])
def test_a_named_class_control_must_be_a_choices_over_an_image(name, match):
    xml = STOCK.replace(
        "</View>", '<Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="x"/></Choices></View>'
    )
    with pytest.raises(ValueError, match=match):
        parse_project_config(xml, class_control=name)


@pytest.mark.parametrize("xml", [STOCK, ALIASES, MULTIPLE, build_config(["a", "b"], Grid(28, 28, 7, 7))])
def test_choices_result_round_trips_and_label_studio_accepts_it(xml):
    config = parse_project_config(xml)
    for k in range(len(config.classes.options)):
        item = choices_result(config, k, score=0.25)
        assert item["value"] == {"choices": [config.classes.options[k].stored]} and item["score"] == 0.25
        names = (config.classes.name, config.image.name, "choices")
        assert (item["from_name"], item["to_name"], item["type"]) == names
        assert LabelInterface(xml).validate_prediction({"result": [item], "score": 0.25})
        assert class_from_result(config, [{"from_name": "other", "value": {"choices": ["x"]}}, item]) == k


@pytest.mark.parametrize("bad", [-1, 3, 1.0, None])
def test_choices_result_rejects_a_bad_index(bad):
    with pytest.raises(ValueError, match="class_index must be an int in"):
        choices_result(parse_project_config(ALIASES), bad)


@pytest.mark.parametrize(
    "labels, expected", [((), None), (("cat",), 0), (("Domestic cat",), 0), (("fox",), 2), (("Dog", "Dog"), 1)]
)
def test_class_from_result_reads_aliases_and_shown_values(labels, expected):
    config = parse_project_config(ALIASES)
    result = [_result("species", *labels)] if labels else []
    assert class_from_result(config, result) == expected


@pytest.mark.parametrize(
    "result, error",
    [
        ([_result("species", "wolf")], r"'wolf' is not one of the classes \['cat', 'Dog', 'fox'\]"),
        ([_result("species", "cat"), _result("species", "fox")], r"several classes chosen: \['cat', 'fox'\]"),
        ({"result": []}, "result must be a list"),
        (["not an item"], "result must be a list"),
    ],
)
def test_class_from_result_names_what_is_wrong(result, error):
    with pytest.raises(ValueError, match=error):
        class_from_result(parse_project_config(ALIASES), result)


def test_classes_from_result_keeps_every_choice_of_a_multiple_control():
    config = parse_project_config(MULTIPLE)
    assert classes_from_result(config, [_result("tags", "person", "indoor")]) == (2, 0)
    with pytest.raises(ValueError, match="several classes"):
        class_from_result(config, [_result("tags", "person", "indoor")])


def test_class_control_index_prefers_stored_strings():
    # "B" is one option's shown value and another's stored alias: results carry stored strings.
    control = ClassControl("c", "image", (Option("A", "B"), Option("C")))
    assert control.index("B") == 0 and control.index("A") == 0 and control.index("C") == 1


# Names check_classes accepts: it refuses what the config's XML cannot carry (tests/label_config/test_class_names.py).
NAMES = (
    st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="$"), min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
    .filter(lambda name: not any(_refused(ch) for ch in name))
)


def _refused(ch: str) -> bool:
    """Noncharacters (U+FDD0..U+FDEF, U+xFFFE/U+xFFFF in every plane), DEL and the C1 controls."""
    code = ord(ch)
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE or 0x7F <= code <= 0x9F


@settings(max_examples=60, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=6, unique=True))
def test_random_class_names_survive_build_and_parse_in_order(names):
    stock = (
        '<View><Image name="image" value="$image"/><Choices name="choice" toName="image">'
        + "".join(f"<Choice value={quoteattr(n)}/>" for n in names)
        + "</Choices></View>"
    )
    for xml in (stock, build_config(names, Grid(28, 28, 7, 7))):
        config = parse_project_config(xml)
        assert config.classes.classes == tuple(names)
        assert [class_from_result(config, [choices_result(config, k)]) for k in range(len(names))] == list(
            range(len(names))
        )
