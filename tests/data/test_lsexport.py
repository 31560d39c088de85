"""``csv:`` reads Label Studio's own exports (CSV, JSON, JSON_MIN) of a team's classification project, made by the
real server: the Choices column and the image URL; classes from the config's Choices in their order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from trainer.data.files import CsvDataset, load_user_dataset
from trainer.labelstudio.client import annotate_as_browser

pytestmark = pytest.mark.labelstudio
CLASSES = ["zero", "one", "two"]  # config order; sorted they would be one, two, zero
CONFIG = (
    '<View><Image name="picture" value="$img"/><Choices name="digit" toName="picture">'
    + "".join(f'<Choice value="{c}"/>' for c in CLASSES)
    + "</Choices></View>"
)
LABELS = ["one", "zero", "two", "one", "two", "zero"]
_names = itertools.count()


@pytest.fixture
def exports(ls_client, label_studio, tmp_path):
    """(export type -> file, the images in labelled order): six local-file images, one unlabelled task, one
    task annotated twice (the later annotation says 'two')."""
    name = f"team-export-{next(_names)}"
    folder = label_studio.document_root / name
    folder.mkdir(parents=True)
    images = []
    for i in range(len(LABELS) + 1):
        images.append(folder / f"img {i}.png")  # a space: the URL quotes it
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(images[-1])
    project = ls_client.projects.create(title=name, label_config=CONFIG)
    tasks = [{"data": {"img": f"/data/local-files/?d={name}/img%20{i}.png"}} for i in range(len(images))]
    ids = ls_client.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True).task_ids
    for task, label in zip(ids, LABELS[:-1] + ["one"]):
        annotate_as_browser(ls_client, task, [choice(label)])
    annotate_as_browser(ls_client, ids[len(LABELS) - 1], [choice(LABELS[-1])])  # the later one wins
    files = {}
    for kind, suffix in (("CSV", "csv"), ("JSON", "json"), ("JSON_MIN", "json")):
        body = b"".join(ls_client.projects.exports.download_sync(project.id, export_type=kind, download_all_tasks=True))
        files[kind] = tmp_path / f"{kind.lower()}-export.{suffix}"
        files[kind].write_bytes(body)
    config = tmp_path / "config.xml"
    config.write_text(CONFIG)
    return files, images[: len(LABELS)], config


@pytest.mark.parametrize("kind", ["CSV", "JSON", "JSON_MIN"])
def test_a_label_studio_export_is_a_dataset_with_the_configs_classes(exports, kind, label_studio, monkeypatch):
    files, images, config = exports
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    data = CsvDataset(files[kind], size=8, document_root=label_studio.document_root, label_config=config)
    assert data.format == "labelstudio" and data.classes == CLASSES
    got = {data.path_of(i): data.classes[int(data.labels[i])] for i in range(len(data))}
    assert got == {p.resolve(): label for p, label in zip(images, LABELS)}  # the unlabelled task is left out
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(label_studio.document_root))  # Label Studio's own name
    train, test = load_user_dataset(f"csv:{files[kind]}", size=8, val_fraction=0.3, label_config=config)
    assert len(train) + len(test) == len(LABELS) and train.classes == CLASSES


def test_without_the_config_the_classes_are_the_labels_present_and_a_warning_says_so(exports, label_studio):
    files, _, _ = exports
    with pytest.warns(UserWarning, match=r"classes \['one', 'two', 'zero'\] come from the labels present"):
        data = CsvDataset(files["CSV"], size=8, document_root=label_studio.document_root)
    assert data.classes == ["one", "two", "zero"]


def test_images_label_studio_cannot_map_to_files_are_refused(exports, label_studio, monkeypatch, tmp_path):
    files, _, config = exports
    monkeypatch.delenv("LOCAL_FILES_DOCUMENT_ROOT", raising=False)
    with pytest.raises(ValueError, match="pass document_root= or set LOCAL_FILES_DOCUMENT_ROOT"):
        CsvDataset(files["CSV"], size=8, label_config=config)
    upload = tmp_path / "upload.csv"
    upload.write_text(files["CSV"].read_text().replace("/data/local-files/?d=", "/data/upload/3/", 1))
    with pytest.raises(ValueError, match=r"upload.csv, line 2: image '/data/upload/3/.*' is an upload to Label Studio"):
        CsvDataset(upload, size=8, document_root=label_studio.document_root, label_config=config)
    other = tmp_path / "other-config.xml"
    other.write_text(CONFIG.replace('<Choice value="two"/>', ""))
    with pytest.raises(ValueError, match="'two' is not one of the classes"):
        CsvDataset(files["JSON"], size=8, document_root=label_studio.document_root, label_config=other)


def choice(label):
    return {"id": "c", "from_name": "digit", "to_name": "picture", "type": "choices", "value": {"choices": [label]}}
