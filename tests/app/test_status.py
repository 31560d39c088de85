"""``hitl status``: the pure summary, Label Studio unreachable (the ledger's view), and the real server."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
import pytest

from label_config.names import ANNOTATED, SKIP, SKIP_CHOICE
from tests.labelstudio.test_loop import label_fix, rect
from trainer.app.cli import main
from trainer.app.lsserver import free_port
from trainer.app.status import Answer, LabelStudioStatus, summarise
from trainer.labelstudio.client import annotate_as_browser
from trainer.labelstudio.link import LINK_FILE, Link, connect_project
from trainer.labelstudio.pull import pull
from trainer.labelstudio.push import push
from trainer.runs.atomic import write_json
from trainer.runs.ledger import PushedTask
from trainer.runs.run import Run, RunConfig, with_overrides

OFFLINE = LabelStudioStatus(None, None, False, "offline")


def answer(annotation_id, task_id, annotator, *, skip=False, fix=False, lead=None):
    return Answer(annotation_id, task_id, annotator, skip, fix, lead, "2024-01-01T00:00:00.000000Z")


def test_summary_counts_rounds_annotators_and_budget():
    pushed = [PushedTask(1, t, 100 + t, t // 10, "x") for t in (1, 2, 3, 4, 11, 12)]  # round 0: tasks 1-4; 1: 11-12
    answers = [
        answer(1, 1, 7, lead=4.0),
        answer(2, 1, 8, fix=True, lead=30.0),  # task 1: two annotators
        answer(3, 2, 7, skip=True, lead=2.0),  # task 2: only a skip
        answer(4, 3, 8, skip=True),
        answer(5, 3, 7, fix=True, lead=10.0),  # task 3: a skip and an answer
        answer(6, 11, 7, lead=6.0),
        answer(7, 99, 7, lead=1000.0),  # a task this run did not push: left out
    ]  # task 4 and 12: pending
    trained = [{"round": 0, "model_version": "r-r000", "metrics": {"acc": 0.5}},
               {"round": 1, "model_version": "r-r001", "metrics": {"acc": 0.75}},
               {"round": 2, "model_version": "r-r002", "metrics": {}}]  # fmt: skip
    s = summarise(run="r", pushed=pushed, answers=answers, counts_from="ledger", trained=trained, per_round=4,
                  budget_rounds=None, label_studio=OFFLINE, users={7: "ann@example.org"})  # fmt: skip
    rows = [(r.round, r.pushed, r.annotated, r.skipped, r.pending, r.label_corrections, r.acc) for r in s.rounds]
    assert rows == [(0, 4, 2, 1, 1, 2, 0.5), (1, 2, 1, 0, 1, 0, 0.75), (2, 0, 0, 0, 0, 0, None)]
    people = [(a.annotator, a.name, a.annotations, a.skipped, a.label_corrections, a.median_lead_time_s)
              for a in s.annotators]  # fmt: skip
    assert people == [(7, "ann@example.org", 4, 1, 1, 5.0), (8, None, 2, 1, 1, 30.0)]
    # images 101, 103 and 111 have feedback; the budget is 4 per round x the 2 rounds pushed
    assert (s.budget.annotated_images, s.budget.images, s.budget.spent) == (3, 8, 3 / 8)
    assert not s.training
    planned = summarise(run="r", pushed=pushed, answers=answers, counts_from="ledger", trained=[], per_round=4,
                        budget_rounds=5, label_studio=OFFLINE, training_pid=123)  # fmt: skip
    assert planned.budget.images == 20 and planned.training and planned.training_pid == 123
    assert json.loads(json.dumps(planned.to_dict()))["budget"]["spent"] == 3 / 20


@pytest.fixture
def offline_run(tmp_path, monkeypatch):
    """A run linked to a Label Studio that is not there (a closed port), with a ledger from earlier pulls."""
    run = Run.create(tmp_path / "offline", with_overrides(RunConfig(), **{"sampling.per_round": 3}))
    url = f"http://127.0.0.1:{free_port()}"
    write_json(run.directory / LINK_FILE, asdict(Link(url=url, project_id=5, title="hitl offline")))
    ledger = run.ledger
    ledger.record_pushed(5, 0, [(50, 0), (51, 1), (52, 2)])
    ledger.record_round(0, run.model_version(0), metrics={"acc": 0.9})
    stamp = "2024-01-01T00:00:00Z"
    ledger.upsert_annotation(1, task_id=50, sample_id=0, updated_at=stamp, cells=np.ones((7, 7), bool),
                             annotator=3, project_id=5)  # fmt: skip
    ledger.upsert_annotation(2, task_id=51, sample_id=1, updated_at=stamp, was_cancelled=True, annotator=3,
                             project_id=5)  # fmt: skip
    ledger.upsert_annotation(3, task_id=52, sample_id=2, updated_at=stamp, label_fix=4, annotator=4, project_id=5)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    return run, url


@pytest.mark.slow
def test_status_without_label_studio_shows_the_ledger(offline_run, capsys):
    run, url = offline_run
    assert main(["status", str(run.directory)]) == 0
    out, err = capsys.readouterr()
    assert f"Label Studio at {url} is unreachable" in out and "counts are from the ledger" in out
    assert "Traceback" not in out + err
    assert "training now: no" in out
    assert main(["status", str(run.directory), "--json", "--rounds", "2"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts_from"] == "ledger" and status["label_studio"]["reachable"] is False
    r0 = status["rounds"][0]
    assert (r0["pushed"], r0["annotated"], r0["skipped"], r0["pending"], r0["label_corrections"]) == (3, 2, 1, 0, 1)
    assert r0["acc"] == 0.9
    assert [(a["annotator"], a["annotations"], a["median_lead_time_s"]) for a in status["annotators"]] == [
        (3, 2, None),
        (4, 1, None),
    ]
    assert (status["budget"]["annotated_images"], status["budget"]["images"]) == (2, 6)


def test_status_sees_a_round_training(offline_run, capsys):
    run, _ = offline_run
    with run.exclusive():
        assert run.training_pid() == os.getpid()
        assert main(["status", str(run.directory), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["training"] is True and status["training_pid"] == os.getpid()
    assert run.training_pid() is None


def test_status_without_a_key_says_what_to_set(offline_run, monkeypatch, capsys):
    run, _ = offline_run
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    assert main(["status", str(run.directory)]) == 0
    assert "set LABEL_STUDIO_API_KEY" in capsys.readouterr().out


def skip_choice():
    return [{"id": "skip", "from_name": SKIP, "to_name": ANNOTATED, "type": "choices",
             "value": {"choices": [SKIP_CHOICE]}}]  # fmt: skip


@pytest.mark.labelstudio
def test_status_against_label_studio(fresh_run, ls_client, label_studio, monkeypatch, capsys):
    run = fresh_run
    link = connect_project(run, ls_client, label_studio.url, document_root=label_studio.document_root)
    task_ids = push(run, ls_client, link.project_id, n=5, document_root=link.document_root)
    g = run.grid
    annotate_as_browser(ls_client, task_ids[0], [rect(g, [(0, 0)])], lead_time=4.0)
    annotate_as_browser(ls_client, task_ids[1], [], was_cancelled=True, lead_time=2.0)  # the Skip button
    annotate_as_browser(ls_client, task_ids[2], [rect(g, [(1, 1)]), *label_fix(run.classes[3])], lead_time=30.0)
    annotate_as_browser(ls_client, task_ids[3], skip_choice(), lead_time=6.0)  # "ambiguous, skip"
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)

    assert main(["status", str(run.directory), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["counts_from"] == "label-studio" and before["label_studio"]["not_pulled"] == 4

    report = pull(run, ls_client, link.project_id)
    assert (report.new, report.skipped, len(report.feedback.labels)) == (4, 2, 1)
    assert main(["status", str(run.directory), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["label_studio"]["reachable"] and status["label_studio"]["not_pulled"] == 0
    r0 = status["rounds"][0]
    assert (r0["pushed"], r0["annotated"], r0["skipped"], r0["pending"], r0["label_corrections"]) == (5, 2, 2, 1, 1)
    assert r0["acc"] == run.history()[0]["acc"] is not None
    (person,) = status["annotators"]
    assert person["name"] == label_studio.username
    assert (person["annotations"], person["skipped"], person["label_corrections"]) == (4, 2, 1)
    assert person["median_lead_time_s"] == 5.0  # of 2, 4, 6, 30
    assert (status["budget"]["annotated_images"], status["budget"]["images"]) == (2, 3)  # 3 per round x 1 round
    assert status["model_version"] == run.model_version(0) and status["training"] is False

    assert main(["status", str(run.directory)]) == 0  # the text view
    text = capsys.readouterr().out
    print(text)
    assert "0 annotations not pulled yet" in text
    assert "budget: 2 of 3 images annotated (67%): 3 per round x 1 round" in text


@pytest.mark.slow
def test_status_shows_the_last_pull_and_its_invalid_annotations(offline_run, capsys):
    run, _ = offline_run
    assert main(["status", str(run.directory)]) == 0
    assert "last pull: none yet" in capsys.readouterr().out
    invalid = [{"task_id": 50 + i, "annotation_id": 70 + i, "reason": f"task {50 + i}, annotation {70 + i}: bad x"}
               for i in range(23)]  # fmt: skip
    counts = dict(new=3, updated=0, unchanged=0, skipped=1, deleted=0, ignored=0, invalidated=0)
    run.ledger.record_pull(5, started_at="2024-01-01T00:00:00Z", counts=counts, invalid=invalid,
                           warnings=["task 52, annotation 3: polygonlabels regions mark no cells"])  # fmt: skip
    assert main(["status", str(run.directory)]) == 0
    text = capsys.readouterr().out
    assert "(project 5): 3 new, 0 updated, 0 unchanged, 0 deleted, 23 invalid, 1 warnings" in text
    assert "  invalid annotation: task 50, annotation 70: bad x" in text and "annotation 89: bad x" in text
    assert "annotation 90:" not in text and "... and 3 more (hitl pull lists them all)" in text
    assert "  warning: task 52, annotation 3: polygonlabels regions mark no cells" in text
    assert main(["status", str(run.directory), "--json"]) == 0
    last = json.loads(capsys.readouterr().out)["last_pull"]
    assert last == run.ledger.last_pull(5) and last["counts"]["invalid"] == 23 and len(last["invalid"]) == 20
