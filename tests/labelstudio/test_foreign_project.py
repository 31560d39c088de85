"""A team's own project is never changed without being asked (real Label Studio): `hitl push --project-title`
on a project the run did not create refuses, saying what would change; `--force` changes only that; Label
Studio's 400 on a config change is an error naming the project and the annotations that block it."""

from __future__ import annotations

import itertools
import json

import pytest

from trainer.app.cli import main
from trainer.labelstudio.client import ConfigRefused, ForeignProject, annotate_as_browser, ensure_project
from trainer.labelstudio.link import LINK_FILE, connect_project, read_link
from trainer.labelstudio.push import label_config_for

pytestmark = [pytest.mark.labelstudio, pytest.mark.usefixtures("one_torch_thread")]
# Label Studio's image-classification template, as a team starts from it.
TEAM_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image">
    <Choice value="zero"/><Choice value="one"/>
  </Choices>
</View>"""
_titles = itertools.count()


@pytest.fixture
def team_project(ls_client, label_studio, fresh_run):
    """A team's project: the stock config, three tasks of their own images; labelled or not per test."""
    title = f"team digits {fresh_run.name} {next(_titles)}"[:50]
    project = ls_client.projects.create(title=title, label_config=TEAM_CONFIG, description="the team's")
    tasks = [{"data": {"image": f"/data/upload/1/team-{i}.png"}} for i in range(3)]
    ids = ls_client.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True).task_ids
    return ls_client.projects.get(id=project.id), list(ids)


def state(client, project_id):
    """What a change would touch: the config, title, description and every task's data."""
    project = client.projects.get(id=project_id)
    tasks = sorted((t.id, json.dumps(t.data, sort_keys=True)) for t in client.tasks.list(project=project_id))
    return project.label_config, project.title, project.description, tasks


def push_cli(run, title, label_studio, monkeypatch, *extra):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    args = ["push", str(run.directory), "--project-title", title, "--document-root", str(label_studio.document_root)]
    return main(args + list(extra))


def test_push_to_a_teams_unlabelled_project_refuses_and_says_what_would_change(
    fresh_run, team_project, ls_client, label_studio, monkeypatch, capsys
):
    project, _ = team_project
    before = state(ls_client, project.id)
    assert push_cli(fresh_run, project.title, label_studio, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hitl push: error: Label Studio project {project.title!r} (id {project.id}) was not created")
    assert "removes Choices 'choice'" in err and "adds RectangleLabels 'irrelevant_area'" in err
    per_round = fresh_run.config.sampling.per_round
    assert f"add {per_round} tasks to its 3 (0 annotated)" in err and "--force" in err and "Traceback" not in err
    assert state(ls_client, project.id) == before  # nothing of the team's changed
    assert read_link(fresh_run) is None  # and the run is not linked to it


def test_force_changes_only_the_config_and_adds_the_tasks(
    fresh_run, team_project, ls_client, label_studio, monkeypatch
):
    project, team_ids = team_project
    config, title, description, team_tasks = state(ls_client, project.id)
    assert push_cli(fresh_run, project.title, label_studio, monkeypatch, "--force") == 0
    after_config, after_title, after_description, tasks = state(ls_client, project.id)
    assert after_config == label_config_for(fresh_run).strip() != config
    assert (after_title, after_description) == (title, description)
    assert [t for t in tasks if t[0] in team_ids] == team_tasks  # the team's tasks untouched
    assert len(tasks) == 3 + fresh_run.config.sampling.per_round
    assert read_link(fresh_run).project_id == project.id


def test_a_config_change_label_studio_refuses_names_the_project_and_the_annotations(
    fresh_run, team_project, ls_client, label_studio
):
    project, team_ids = team_project
    choice = {"id": "c", "from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["one"]}}
    annotations = [annotate_as_browser(ls_client, t, [choice]) for t in team_ids[:2]]
    before = state(ls_client, project.id)
    with pytest.raises(ForeignProject, match="add 3 tasks to its 3 \\(2 annotated\\)"):
        connect_project(fresh_run, ls_client, label_studio.url, title=project.title, adding=3,
                        document_root=label_studio.document_root)  # fmt: skip
    with pytest.raises(ConfigRefused) as refused:
        connect_project(fresh_run, ls_client, label_studio.url, title=project.title, force=True,
                        document_root=label_studio.document_root)  # fmt: skip
    message = str(refused.value)
    assert f"project {project.title!r} (id {project.id})" in message and "['choice']" in message
    for annotation, task in zip(annotations, team_ids):
        assert f"annotation {annotation} (task {task})" in message
    assert "Nothing was changed" in message and "400" not in message.split("Label Studio said")[0]
    assert state(ls_client, project.id) == before
    assert read_link(fresh_run) is None


def test_a_project_of_another_owner_is_refused_even_with_our_config(ls_client):
    config = label_config_for_test()
    first = ensure_project(ls_client, "owned by run A", config, owner="run A")
    for owner in ("run B", None):
        with pytest.raises(ForeignProject, match="was not created by this run.* add new tasks to its 0"):
            ensure_project(ls_client, "owned by run A", config, owner=owner)
    assert ensure_project(ls_client, "owned by run A", config, owner="run B", force=True) == first


def test_the_runs_own_project_is_found_again_by_title(fresh_run, ls_client, label_studio):
    """A restarted server (the demo's): the link is gone, the project the run created is known by its note."""
    first = connect_project(fresh_run, ls_client, label_studio.url, document_root=label_studio.document_root)
    (fresh_run.directory / LINK_FILE).unlink()
    again = connect_project(fresh_run, ls_client, label_studio.url, document_root=label_studio.document_root)
    assert again.project_id == first.project_id


def label_config_for_test() -> str:
    return (
        '<View><Image name="image" value="$image"/>'
        '<RectangleLabels name="irrelevant_area" toName="image"><Label value="x"/></RectangleLabels></View>'
    )
