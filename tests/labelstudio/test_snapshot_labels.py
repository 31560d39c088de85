"""The snapshot's rules without a server: a task's label from its answers, and project references."""

from __future__ import annotations

import pytest

from label_config.interface import parse_project_config
from trainer.labelstudio.snapshot import parse_project_ref, task_labels

CONFIG = parse_project_config(
    '<View><Image name="image" value="$image"/><Choices name="choice" toName="image">'
    '<Choice value="cat"/><Choice value="dog" alias="D"/></Choices></View>'
)


def answer(ann_id: int, label: str | None, *, by: int = 1, at: str = "2026-01-01T00:00:00Z", cancelled=False):
    result = [] if label is None else [{"from_name": "choice", "to_name": "image", "type": "choices",
                                        "value": {"choices": [label]}}]  # fmt: skip
    return {"id": ann_id, "result": result, "completed_by": by, "updated_at": at, "was_cancelled": cancelled}


@pytest.mark.parametrize(
    "annotations, label",
    [
        ([answer(1, "cat")], 0),
        ([answer(1, "D")], 1),  # the alias is what Label Studio stores
        ([answer(1, "cat", at="2026-01-01T00:00:00Z"), answer(2, "D", at="2026-01-02T00:00:00Z")], 1),  # newest
        ([answer(1, "cat"), answer(2, "D", cancelled=True)], 0),  # a skip is no answer
        ([answer(1, "cat", by=1), answer(2, "cat", by=2), answer(3, "D", by=3)], 0),  # majority
        ([answer(1, None)], None),  # only regions: no label
    ],
)
def test_a_tasks_label(annotations, label):
    labels, ties, invalid = task_labels(CONFIG, [{"id": 7, "annotations": annotations}])
    assert labels.get(7) == label and not ties and not invalid


def test_a_tie_is_reported_and_left_out():
    labels, ties, _ = task_labels(CONFIG, [{"id": 7, "annotations": [answer(1, "cat", by=1), answer(2, "D", by=2)]}])
    assert labels == {} and ties == ["task 7: annotators are split 1-1 between ['cat', 'dog']: left out of training"]


def test_an_unknown_label_is_reported_and_the_other_answers_count():
    tasks = [{"id": 7, "annotations": [answer(1, "cat", by=1), answer(2, "horse", by=2)]},
             {"id": 8, "annotations": [answer(3, "D")]}]  # fmt: skip
    labels, ties, invalid = task_labels(CONFIG, tasks)
    assert labels == {7: 0, 8: 1} and not ties
    (bad,) = invalid
    assert (bad["task_id"], bad["annotation_id"]) == (7, 2) and "'horse'" in bad["reason"]


@pytest.mark.parametrize(
    "spec, given, expected",
    [
        ("labelstudio:12", None, (12, None)),
        ("labelstudio:12", "http://ls:8080", (12, "http://ls:8080")),
        ("labelstudio:http://ls:8080/projects/12/data?tab=3", None, (12, "http://ls:8080")),
        ("labelstudio:https://example.org/ls/projects/4/", "https://example.org/ls/", (4, "https://example.org/ls")),
    ],
)
def test_project_refs(spec, given, expected):
    assert parse_project_ref(spec, given) == expected


@pytest.mark.parametrize(
    "spec, given, message",
    [
        ("labelstudio:0", None, "not a positive integer"),
        ("labelstudio:abc", None, "expected labelstudio:ID"),
        ("labelstudio:http://ls:8080/projects/12", "http://other:8080", "is on http://ls:8080"),
    ],
)
def test_bad_project_refs(spec, given, message):
    with pytest.raises(ValueError, match=message):
        parse_project_ref(spec, given)
