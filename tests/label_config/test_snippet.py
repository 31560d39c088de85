"""The feedback snippet a team pastes: merged into the stock template it parses with Label Studio's own parser
and with ours, and its region tool is the one read as the feedback tool."""

from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from label_config.config import build_config
from label_config.grid import Grid
from label_config.interface import Option, parse_project_config
from label_config.snippet import (
    FEEDBACK_CONTROL,
    MUST_NOT_USE,
    SHOULD_USE,
    TOOLS,
    feedback_snippet,
    merge_snippet,
    starter_config,
)

STOCK = (
    '<View><Image name="image" value="$image"/><Choices name="choice" toName="image">'
    '<Choice value="Cat"/><Choice value="Dog"/></Choices></View>'
)
# A team's layout: another image name, a comment and nesting that the merge must keep.
TEAM = """<View>
  <!-- our wildlife project -->
  <View style="display: flex">
    <Image name="photo" value="$url" zoom="true"/>
  </View>
  <Choices name="species" toName="photo" choice="single-radio">
    <Choice value="Red fox" alias="fox"/>
    <Choice value="Badger"/>
  </Choices>
</View>"""


def _assert_feedback(xml, image, tag):
    interface = LabelInterface(xml)
    interface.validate()  # the checks Label Studio runs when a project's config is saved
    config = parse_project_config(xml)
    assert config.feedback.name == FEEDBACK_CONTROL and config.feedback.tag == tag and config.feedback.to_name == image
    assert config.feedback.irrelevant == (Option(MUST_NOT_USE),) and config.feedback.relevant == (Option(SHOULD_USE),)
    return config


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize(
    "xml, image, classes", [(STOCK, "image", ("Cat", "Dog")), (TEAM, "photo", ("Red fox", "Badger"))]
)
def test_merged_config_parses_and_finds_the_feedback_tool(xml, image, classes, tool):
    merged = merge_snippet(xml, tool=tool)
    config = _assert_feedback(merged, image, TOOLS[tool].lower())
    assert config.classes.classes == classes  # the classes are untouched


def test_merge_keeps_the_team_layout_and_puts_the_tool_after_its_image():
    merged = merge_snippet(TEAM)
    assert "<!-- our wildlife project -->" in merged and 'style="display: flex"' in merged
    assert merged.index('name="photo"') < merged.index(FEEDBACK_CONTROL) < merged.index('name="species"')
    assert f'\n      <RectangleLabels name="{FEEDBACK_CONTROL}" toName="photo">' in merged  # indented with the Image


def test_an_explicit_snippet_is_merged_as_given():
    merged = merge_snippet(STOCK, feedback_snippet("image", tool="polygon", name="marks"))
    assert parse_project_config(merged).feedback.name == "marks"


@pytest.mark.parametrize(
    "xml, snippet, match",
    [
        (merge_snippet(STOCK), None, f"already has a feedback tool over 'image': '{FEEDBACK_CONTROL}'"),
        (
            build_config(["a", "b"], Grid(28, 28, 7, 7)),
            None,
            "already has a feedback tool over 'image': 'irrelevant_area'",
        ),
        (STOCK, feedback_snippet("image", name="choice"), r"names \['choice'\] are already used"),
        (STOCK, feedback_snippet("photo"), r"must point at one Image of the config \(images: \['image'\]\)"),
        (STOCK, "<View><RectangleLabels", "snippet is not valid XML"),
        ('<View><Image name="image" value="$image"/></View>', None, "no Choices control over an Image"),
    ],
)
def test_merge_refuses_with_a_reason(xml, snippet, match):
    with pytest.raises(ValueError, match=match):
        merge_snippet(xml, snippet)


def test_snippet_rejects_an_unknown_tool():
    with pytest.raises(ValueError, match=r"tool must be one of \['brush', 'polygon', 'rectangle'\], got 'lasso'"):
        feedback_snippet(tool="lasso")


@pytest.mark.parametrize("classes", [["Cat", "Dog"], ["a & b", '<say "hi">', "it's"]])
def test_starter_config_is_the_stock_template_with_the_tools(classes):
    config = _assert_feedback(starter_config(classes), "image", "rectanglelabels")
    assert config.classes.name == "choice" and config.classes.classes == tuple(classes)
    assert config.image.data_key == "image"


def test_starter_config_checks_the_classes():
    with pytest.raises(ValueError, match="duplicate class names"):
        starter_config(["a", "a"])
