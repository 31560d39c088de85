"""Feedback rounds in a team's own project: a run made from it (``labelstudio:ID``) pushes predictions onto the
project's existing tasks, the simulated annotator answers there (polygons, brush strokes, or accepting unread), and
the pull brings the marks back as W. The real server; a built-in set imported into a stock-template project.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import trainer.labelstudio.push_team as push_team_module
from label_config.interface import parse_project_config
from trainer.app.bench_team import builtin_parts, import_builtin, write_truth
from trainer.app.cli import main
from trainer.app.status import gather
from trainer.core.feedback import AnnotatorConfig, simulated_cells
from trainer.labelstudio.annotator import simulate_annotator
from trainer.labelstudio.client import connect
from trainer.labelstudio.loop import asked_at, wait_for_annotations
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push
from trainer.labelstudio.push_team import LABEL_ITEM_ID, round_view_id
from trainer.runs.run import Run

pytestmark = [pytest.mark.labelstudio, pytest.mark.usefixtures("one_torch_thread")]
DATASET, SEED, TRAIN, TEST, PER_ROUND = "texture-mnist", 0, 30, 10, 3
_TITLES = iter(range(1000))


@pytest.fixture
def ls_env(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)


@pytest.fixture
def team(label_studio, ls_env, tmp_path):
    """(client, project id, run with round 0 trained) for a fresh team project made from the first images of a
    built-in set; the snapshot carries each image's true mask (``write_truth``), as the bench's does."""
    client = connect(label_studio.url, label_studio.token)
    parts = builtin_parts(DATASET, SEED, limit_train=TRAIN, limit_test=TEST)
    project, source_of = import_builtin(client, label_studio.document_root, parts,
                                        title=f"team push {next(_TITLES)} {tmp_path.name}")  # fmt: skip
    run_dir = tmp_path / "run"
    assert main(["init", str(run_dir), "--dataset", f"labelstudio:{project}", "--epochs", "1", "--replay", "4",
                 "--per-round", str(PER_ROUND), "--seed", str(SEED)]) == 0  # fmt: skip
    run = Run.open(run_dir)
    assert write_truth(run, source_of, parts) == TRAIN + TEST  # texture: every image has its patch
    assert main(["train", str(run_dir)]) == 0
    return client, project, run


def task_count(client, project: int) -> int:
    return len(list(client.tasks.list(project=project, fields="task_only")))


def test_push_adds_predictions_to_the_chosen_tasks_and_nothing_else(team, capsys):
    client, project, run = team
    config_before = client.projects.get(id=project).label_config
    tasks_before = task_count(client, project)
    assert main(["push", str(run.directory)]) == 0  # no --document-root: nothing is written or imported
    assert f"{PER_ROUND} tasks" in capsys.readouterr().out
    assert task_count(client, project) == tasks_before
    assert client.projects.get(id=project).label_config == config_before
    pushed = run.ledger.pushed_tasks(project, 0)
    train = run.datasets[0]
    assert len(pushed) == PER_ROUND and all(train.task_ids[t.sample_id] == t.task_id for t in pushed)
    config = parse_project_config(config_before)
    for t in pushed:
        (prediction,) = client.predictions.list(task=t.task_id)
        assert prediction.model_version == run.model_version(0) and 0 < prediction.score <= 1
        choice, *regions = prediction.result
        label = run.classes[int(train.labels[t.sample_id])]
        assert choice["id"] == LABEL_ITEM_ID and choice["value"]["choices"] == [label]  # the team's label, not ours
        assert len(regions) == run.config.top_k
        assert all(r["from_name"] == config.feedback.name and r["value"]["polygonlabels"] == ["Model looks here"]
                   for r in regions)  # fmt: skip
        assert "the model looks here" in regions[0]["meta"]["text"][0]
    # Idempotent: a second push (command or function) adds nothing and asks about the same tasks.
    assert main(["push", str(run.directory)]) == 0
    assert sorted(push(run, client, project)) == sorted(t.task_id for t in pushed)
    assert sum(len(client.predictions.list(task=t.task_id)) for t in pushed) == PER_ROUND
    assert task_count(client, project) == tasks_before
    view = round_view_id(client, project, run, 0)
    tabbed = client.tasks.list(project=project, view=view, fields="task_only")
    assert view is not None and sorted(t.id for t in tabbed) == sorted(t.task_id for t in pushed)


def test_a_push_cut_off_before_its_ledger_write_is_recorded_not_repeated(team, monkeypatch):
    client, project, run = team
    real = run.ledger.record_pushed
    calls = []

    def crash_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(run.ledger, "record_pushed", crash_once)
    with pytest.raises(OSError, match="disk gone"):
        push_team_module.push_team(run, client, project)
    monkeypatch.undo()
    assert len(run.ledger.pushed_tasks(project, 0)) == 1  # the second prediction landed, its record did not
    task_ids = push_team_module.push_team(run, client, project)
    assert len(task_ids) == PER_ROUND
    assert [len(client.predictions.list(task=t)) for t in task_ids] == [1] * PER_ROUND


def test_polygon_and_brush_marks_come_back_as_w_of_the_decoy_cells(team):
    client, project, run = team
    task_ids = push(run, client, project)
    labels = [int(y) for y in run.datasets[0].labels]
    truth = run.datasets[0].decoy_masks  # (N, H, W): the built-in masks, by the snapshot's sample id
    made = simulate_annotator(run, client, project, kind="polygon,brush", task_ids=task_ids)
    assert len(made) == PER_ROUND
    kinds = {r["type"] for a in made for r in client.annotations.get(id=a).result if r.get("origin") == "manual"}
    assert kinds == {"polygonlabels", "brushlabels"}
    assert simulate_annotator(run, client, project, kind="polygon", task_ids=task_ids) == []  # answered
    report = pull(run, client, project)
    assert not report.errors and report.new == TRAIN + PER_ROUND  # the labels, then the marks
    rng = np.random.default_rng(0)
    for t in run.ledger.pushed_tasks(project, 0):
        expected = simulated_cells(truth[t.sample_id].numpy(), run.grid, AnnotatorConfig(), rng)
        assert expected.any() and np.array_equal(report.feedback.cells[t.sample_id], expected)
    assert sorted(report.feedback.annotated_ids()) == sorted(t.sample_id for t in run.ledger.pushed_tasks(project))
    reopened = Run.open(run.directory)
    assert [int(y) for y in reopened.datasets[0].labels] == labels  # the answers kept each task's label


def test_accepting_every_prediction_unread_gives_no_w_and_changes_no_label(team):
    client, project, run = team
    task_ids = push(run, client, project)
    status = gather(run)
    assert (status.rounds[0].pushed, status.rounds[0].pending) == (PER_ROUND, PER_ROUND)  # the labels predate it
    labels = [int(y) for y in run.datasets[0].labels]
    asked = asked_at(run, project, 0)
    assert wait_for_annotations(client, project, task_ids, since=asked, deadline_s=0.5, poll_s=0.5, progress=False) == 0
    made = simulate_annotator(run, client, project, kind="accept", task_ids=task_ids)
    assert len(made) == PER_ROUND
    assert wait_for_annotations(client, project, task_ids, since=asked, progress=False) == PER_ROUND
    for a in made:
        annotation = client.annotations.get(id=a)
        prediction = client.predictions.get(id=annotation.parent_prediction)
        assert annotation.result == prediction.result  # submitted unchanged
    report = pull(run, client, project)
    assert not report.errors and report.feedback.annotated_ids() == [] and not report.feedback.labels
    assert report.snapshot.changed == ()
    assert [int(y) for y in Run.open(run.directory).datasets[0].labels] == labels
    status = gather(run)
    assert (status.rounds[0].annotated, status.rounds[0].pending) == (PER_ROUND, 0)


def test_hitl_run_simulated_on_a_team_run(team, capsys):
    client, project, run = team
    tasks_before = task_count(client, project)
    assert main(["run", str(run.directory), "--rounds", "1", "--simulate", "polygon,brush"]) == 0
    out = capsys.readouterr().out
    assert "Data Manager tab" in out and "done: round 1 trained" in out
    reopened = Run.open(run.directory)
    assert reopened.current_round() == 1 and reopened.history()[-1]["annotated"] == PER_ROUND
    assert task_count(client, project) == tasks_before
    assert main(["run", str(run.directory), "--rounds", "1", "--simulate", "accept"]) == 0  # already there
    assert len(run.ledger.pushed_tasks(project)) == PER_ROUND


def test_bench_team_smoke(label_studio, tmp_path, capsys):
    args = ["bench", "team", "--limit-train", "40", "--limit-test", "10", "--per-round", "4", "--rounds", "1",
            "--epochs", "1", "--against", "no-feedback", "--label-studio-url", label_studio.url, "--api-key",
            label_studio.token, "--document-root", str(label_studio.document_root), "--workdir", str(tmp_path),
            "--json"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["team"]["annotated"] == 4 and result["no_feedback"]["annotated"] == 0
    assert len(result["team"]["accuracy_per_round"]) == 2 and result["test_images"] == 10
