"""``hitl config`` prints a config Label Studio and our parser accept, with the feedback tool found."""

from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from label_config.interface import parse_project_config
from label_config.snippet import FEEDBACK_CONTROL
from trainer.app.cli import main
from trainer.app.config_cmd import config_text

TEAM = (
    '<View><Image name="photo" value="$url"/><Choices name="species" toName="photo">'
    '<Choice value="Red fox" alias="fox"/><Choice value="Badger"/></Choices></View>'
)


@pytest.mark.parametrize("tool, tag", [("rectangle", "rectanglelabels"), ("brush", "brushlabels")])
def test_hitl_config_classes_prints_a_whole_config(capsys, tool, tag):
    assert main(["config", "--classes", "cat", "dog & fox", "--tool", tool]) == 0
    xml = capsys.readouterr().out
    LabelInterface(xml).validate()
    config = parse_project_config(xml)
    assert config.classes.classes == ("cat", "dog & fox")
    assert (config.feedback.name, config.feedback.tag) == (FEEDBACK_CONTROL, tag)


def test_hitl_config_project_config_merges_into_the_teams_file(tmp_path, capsys):
    path = tmp_path / "config.xml"
    path.write_text(TEAM, encoding="utf-8")
    assert main(["config", "--project-config", str(path)]) == 0
    config = parse_project_config(capsys.readouterr().out)
    assert config.classes.name == "species" and config.feedback.to_name == "photo"
    assert main(["config", "--project-config", str(path), "--snippet"]) == 0
    out = capsys.readouterr().out
    assert out.lstrip().startswith("<View>") and 'toName="photo"' in out and "species" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["config", "--classes", "a", "a"], "duplicate class names"),
        (["config", "--project-config", "CONFIG"], "already has a feedback tool"),
    ],
)
def test_hitl_config_errors_name_the_problem(tmp_path, capsys, argv, message):
    path = tmp_path / "config.xml"
    path.write_text(config_text(classes=["a", "b"]), encoding="utf-8")
    assert main([str(path) if a == "CONFIG" else a for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_config_text_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of --classes and --project-config"):
        config_text()


def test_hitl_config_takes_several_tools(tmp_path, capsys):
    path = tmp_path / "config.xml"
    path.write_text(TEAM, encoding="utf-8")
    assert main(["config", "--project-config", str(path), "--tool", "polygon", "brush"]) == 0
    xml = capsys.readouterr().out
    LabelInterface(xml).validate()
    config = parse_project_config(xml)
    expected = [(FEEDBACK_CONTROL, "polygonlabels", "photo"), (f"{FEEDBACK_CONTROL}_brush", "brushlabels", "photo")]
    assert [(r.name, r.tag, r.to_name) for r in config.regions] == expected
