"""A team's own project, from the stock image-classification template, as a run's dataset: ``hitl init RUN
--dataset labelstudio:ID``, ``hitl train``, and "Start Training" pressed through Label Studio's API.

The real server; images as Local Files and as uploads; labels given through the API as a person's browser does.
"""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.labelstudio.test_image_only import serve_backend
from tests.ls_backend.test_with_label_studio import _poll
from trainer.app.cli import main
from trainer.labelstudio.client import ensure_local_storage, local_file_url
from trainer.runs.run import Run

pytestmark = pytest.mark.labelstudio

TEAM_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image"><Choice value="A"/><Choice value="B"/></Choices>
  <RectangleLabels name="irrelevant_area" toName="image"><Label value="Irrelevant"/></RectangleLabels>
</View>"""
CLASSES = ["A", "B"]
LABELLED, UPLOADS, UNLABELLED = 60, 2, 5
_PROJECTS = iter(range(1000))


def picture(label: int, seed: int) -> Image.Image:
    """28 px grey: class A bright on the left, B on the right, with noise."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((28, 28)) * 80
    pixels[:, :14] += 150 if label == 0 else 0
    pixels[:, 14:] += 150 if label == 1 else 0
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L")


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def choice(label: str) -> dict:
    return {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}


def make_team_project(label_studio, ls_client, *, flip: bool = False, config: str = TEAM_CONFIG,
                      classes: list[str] = CLASSES) -> tuple[int, dict[int, int], list[int]]:  # fmt: skip
    """(project id, task id -> class given, unlabelled task ids): ``LABELLED`` tasks labelled through the API,
    ``UPLOADS`` of them uploaded files and the rest Local Files, and ``UNLABELLED`` tasks nobody labelled.
    ``flip``: a team that calls the left-bright pictures ``classes[1]`` (the same images, the other labels).
    ``config``: the project's labelling config, whose Choices named ``choice`` are ``classes`` (two)."""
    n = next(_PROJECTS)
    project = ls_client.projects.create(title=f"team project {n}", label_config=config)
    folder = label_studio.document_root / f"team-{n}"
    folder.mkdir(parents=True)
    truth = [k % 2 for k in range(LABELLED + UNLABELLED)]
    urls = []
    for k, label in enumerate(truth[UPLOADS:], UPLOADS):
        picture(label, k).save(folder / f"{k:03d}.png")
        urls.append(local_file_url(folder / f"{k:03d}.png", label_studio.document_root))
    ensure_local_storage(ls_client, project.id, folder, label_studio.document_root)
    files = {f"upload{k}": (f"up{k}.png", png(picture(truth[k], k)), "image/png") for k in range(UPLOADS)}
    answer = httpx.post(f"{label_studio.url}/api/projects/{project.id}/import", files=files,
                        headers={"Authorization": f"Token {label_studio.token}"}, timeout=60)  # fmt: skip
    answer.raise_for_status()
    uploaded = sorted(t.id for t in ls_client.tasks.list(project=project.id))
    ids = ls_client.projects.import_tasks(id=project.id, request=[{"data": {"image": u}} for u in urls],
                                          return_task_ids=True).task_ids  # fmt: skip
    task_ids = uploaded + list(ids)
    assert len(task_ids) == LABELLED + UNLABELLED
    given = {}
    for task_id, label in zip(task_ids[:LABELLED], truth):
        label = 1 - label if flip else label
        ls_client.annotations.create(id=task_id, result=[choice(classes[label])])
        given[task_id] = label
    return project.id, given, task_ids[LABELLED:]


@pytest.fixture
def ls_env(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)


def init_run(directory, project_id: int) -> Run:
    args = ["init", str(directory), "--dataset", f"labelstudio:{project_id}", "--epochs", "1", "--seed", "3"]
    assert main(args) == 0
    return Run.open(directory)


def dataset_labels(run: Run) -> dict[int, int]:
    """Task id -> label of every task in the run's train and test sets."""
    return {t: int(y) for part in run.datasets for t, y in zip(part.task_ids, part.labels)}


def test_init_takes_exactly_the_labelled_tasks_and_trains_on_them(label_studio, ls_client, ls_env, tmp_path,
                                                                   one_torch_thread):  # fmt: skip
    project_id, given, unlabelled = make_team_project(label_studio, ls_client)
    run = init_run(tmp_path / "run", project_id)
    train, test = run.datasets
    assert dataset_labels(run) == given  # every labelled task, with its label; no unlabelled one
    assert not set(unlabelled) & set(train.task_ids + test.task_ids)
    assert len(test) == round(0.2 * LABELLED) and sorted(np.bincount(test.labels.numpy())) == [6, 6]  # stratified
    assert run.classes == CLASSES and run.image_shape == (1, 28, 28) and run.config.model == "small-cnn"
    link = json.loads((run.directory / "label-studio.json").read_text())
    assert link["project_id"] == project_id and link["url"] == label_studio.url
    assert main(["train", str(run.directory)]) == 0
    (record,) = Run.open(run.directory).history()
    assert record["train_images"] == LABELLED - len(test) and record["data_revision"] == 1
    # The same seed gives the same split: a second run of the same project sees the same test tasks.
    again = init_run(tmp_path / "again", project_id)
    assert again.datasets[1].task_ids == test.task_ids


def test_start_training_learns_a_label_changed_in_label_studio(label_studio, ls_client, ls_env, tmp_path,
                                                               one_torch_thread):  # fmt: skip
    project_id, given, unlabelled = make_team_project(label_studio, ls_client)
    run = init_run(tmp_path / "run", project_id)
    run.train_next_round()
    train = run.datasets[0]
    task_id, sample_id = train.task_ids[5], 5
    old = given[task_id]
    (annotation,) = ls_client.annotations.list(id=task_id)
    ls_client.annotations.update(id=annotation.id, result=[choice(CLASSES[1 - old])])
    ls_client.annotations.create(id=unlabelled[0], result=[choice("A")])  # labelled after init: joins
    with serve_backend(run, label_studio.url, label_studio.token) as (url, _):
        ml = ls_client.ml.create(project=project_id, url=url, title="hitl")
        ls_client.ml.train(id=ml.id)  # "Start Training", through Label Studio's API
        health = _poll(url, lambda h: h["training"]["state"] == "idle" and h["training"]["rounds"] >= 1, timeout=300)
    assert health["training"]["last_error"] is None and health["model_version"] == run.model_version(1)
    reopened = Run.open(run.directory)
    new_train = reopened.datasets[0]
    assert int(new_train.labels[sample_id]) == 1 - old and new_train.task_ids[sample_id] == task_id
    assert new_train.task_ids[-1] == unlabelled[0] and len(new_train) == len(train) + 1
    first, second = reopened.history()
    assert (first["data_revision"], second["data_revision"]) == (1, 2)
    assert second["train_images"] == len(train) + 1
    last = reopened.ledger.last_pull()
    n_test = len(reopened.datasets[1])
    assert any(w.startswith(f"{n_test} annotations on {n_test} test tasks") for w in last["warnings"])


def test_a_rectangle_on_a_team_task_becomes_w_and_an_unknown_label_is_reported(label_studio, ls_client, ls_env,
                                                                               tmp_path, one_torch_thread):  # fmt: skip
    project_id, given, _ = make_team_project(label_studio, ls_client)
    run = init_run(tmp_path / "run", project_id)
    task_id = run.datasets[0].task_ids[2]
    box = {"x": 0, "y": 0, "width": 25, "height": 25, "rotation": 0, "rectanglelabels": ["Irrelevant"]}
    rect = {"from_name": "irrelevant_area", "to_name": "image", "type": "rectanglelabels", "value": box}
    ls_client.annotations.create(id=task_id, result=[choice(CLASSES[given[task_id]]), rect])
    odd_task = run.datasets[0].task_ids[3]
    ls_client.annotations.create(id=odd_task, result=[choice("C")])  # not a class of the project
    assert main(["pull", str(run.directory)]) == 0
    run = Run.open(run.directory)
    feedback = run.feedback()
    assert feedback.annotated_ids() == [2] and feedback.cells[2][0, 0] and feedback.cells[2].sum() == 4
    last = run.ledger.last_pull()
    assert last["counts"]["invalid"] == 1 and f"task {odd_task}" in last["invalid"][0]["reason"]
    assert "'C'" in last["invalid"][0]["reason"]
    assert dataset_labels(run) == given  # the rest kept: the odd task keeps its own answer's label
    record = run.train_next_round()
    assert record["annotated"] == 1
