"""A team's own Label Studio project as a run's dataset: the snapshot ``trainer.data.snapshot`` reads.

``create_snapshot`` (``hitl init RUN --dataset labelstudio:PROJECT``) reads the project's config, tasks and
annotations, downloads each labelled task's image once into ``RUN/labelstudio/images/``, writes the manifest and
links the run to the project (``RUN/label-studio.json``), so the backend serves it and "Start Training" pulls it.
``sync_snapshot`` runs at every pull of that project: labels changed in Label Studio replace the snapshot's, tasks
labelled since join (their images downloaded then), and the pull maps a task to its sample id through the manifest.

A task's label: per annotator their newest submitted (not cancelled) answer that chose a class; several
annotators by majority. A tie is reported and the task left out (one already in the snapshot keeps its last
label, reported as stale: sample ids never move). An answer with a label outside the classes is reported and
counted as invalid; the other answers still count. The split: tasks whose data carries ``split`` (``"test"``
-> test, anything else -> train) when any labelled task does, else a seeded stratified ``test_fraction``; tasks
that join later go to train unless their data says ``split: test``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from label_config.interface import class_from_result, parse_project_config
from trainer.data.files import stratified_split
from trainer.data.snapshot import MANIFEST, SNAPSHOT_PREFIX, read_manifest, snapshot_dir
from trainer.labelstudio.fetch import TaskImageError, storage_client, task_image
from trainer.labelstudio.link import LINK_FILE, Link
from trainer.runs.atomic import atomic_write, write_json

SPLIT_KEY = "split"
TEST_VALUE = "test"


@dataclass(frozen=True)
class SyncReport:
    """What one snapshot or sync did: the labelled tasks now in train and test, the tasks that joined, the
    labels changed ``(task id, old class, new class)``, and the problems, each a line naming its task."""

    revision: int
    train: int
    test: int
    joined: tuple[int, ...] = ()
    changed: tuple[tuple[int, int, int], ...] = ()
    ties: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    invalid: tuple[dict, ...] = field(default=())  # {"task_id", "annotation_id", "reason"}: unknown labels

    def warnings(self) -> list[str]:
        return [*self.ties, *self.stale, *self.unreadable]

    def lines(self) -> list[str]:
        head = (f"snapshot revision {self.revision}: {self.train} train + {self.test} test tasks, "
                f"{len(self.joined)} joined, {len(self.changed)} labels changed, {len(self.ties)} ties, "
                f"{len(self.invalid)} unknown labels")  # fmt: skip
        return [head] + [f"  {line}" for line in (*self.warnings(), *(i["reason"] for i in self.invalid))]


def parse_project_ref(spec: str, label_studio_url: str | None = None) -> tuple[int, str | None]:
    """(project id, Label Studio URL or None) of ``labelstudio:ID`` or ``labelstudio:<URL of the project>``
    (``http://host:8080/projects/12/data?...``; its base must agree with ``label_studio_url`` when both are given)."""
    ref = spec[len(SNAPSHOT_PREFIX) :] if spec.startswith(SNAPSHOT_PREFIX) else spec
    if ref.isdigit():
        return _project_id(ref, spec), label_studio_url
    parts = urlsplit(ref)
    base, _, rest = parts.path.partition("/projects/")
    if parts.scheme not in ("http", "https") or not rest:
        raise ValueError(f"dataset {spec!r}: expected labelstudio:ID or labelstudio:<Label Studio project URL>")
    url = f"{parts.scheme}://{parts.netloc}{base}".rstrip("/")
    if label_studio_url and label_studio_url.rstrip("/") != url:
        raise ValueError(f"dataset {spec!r} is on {url}, but the Label Studio URL given is {label_studio_url}")
    return _project_id(rest.split("/")[0], spec), url


def _project_id(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) < 2**31:
        raise ValueError(f"dataset {spec!r}: project id {text!r} is not a positive integer")
    return int(text)


def task_labels(config, tasks: list[dict]) -> tuple[dict[int, int], list[str], list[dict]]:
    """(task id -> class index, tie lines, invalid answers) from exported tasks (``client.export_tasks``)."""
    labels, ties, invalid = {}, [], []
    for task in tasks:
        task_id = int(task["id"])
        newest: dict = {}  # annotator -> (updated, annotation id, class)
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            where = f"task {task_id}, annotation {ann.get('id')}"
            try:
                label = class_from_result(config, ann.get("result") or [])
            except ValueError as exc:
                invalid.append({"task_id": task_id, "annotation_id": int(ann["id"]),
                                "reason": f"{where}: {exc}; this answer's label is not used"})  # fmt: skip
                continue
            if label is None:
                continue
            key = (str(ann.get("updated_at") or ann.get("created_at") or ""), int(ann["id"]))
            who = ann.get("completed_by")
            who = who.get("id") if isinstance(who, dict) else who
            if who not in newest or key > newest[who][:2]:
                newest[who] = (*key, label)
        votes = Counter(v[2] for v in newest.values()).most_common()
        if not votes:
            continue
        if len(votes) > 1 and votes[0][1] == votes[1][1]:
            names = [config.classes.classes[k] for k, n in votes if n == votes[0][1]]
            ties.append(f"task {task_id}: annotators are split {votes[0][1]}-{votes[0][1]} between {names}: "
                        "left out of training")  # fmt: skip
            continue
        labels[task_id] = votes[0][0]
    return labels, ties, invalid


def create_snapshot(run_dir: str | Path, client, url: str, project_id: int, tasks: list[dict], *, seed: int = 0,
                    test_fraction: float = 0.2) -> SyncReport:  # fmt: skip
    """Snapshot project ``project_id`` into ``run_dir`` and link the run to it; a run that has its snapshot
    already is synced instead. ValueError when the project has no task with a class label."""
    run_dir = Path(run_dir)
    link_path = run_dir / LINK_FILE
    if link_path.is_file():
        link = Link(**json.loads(link_path.read_text()))
        if (link.url.rstrip("/"), link.project_id) != (url.rstrip("/"), project_id):
            raise ValueError(f"run {run_dir} is linked to project {link.project_id} on {link.url}, "
                             f"not {project_id} on {url}")  # fmt: skip
    project = client.projects.get(id=project_id)
    report = sync_snapshot(run_dir, client, project_id, tasks, url=url, seed=seed, test_fraction=test_fraction,
                           label_config=project.label_config)  # fmt: skip
    write_json(link_path, asdict(Link(url=url.rstrip("/"), project_id=project_id, title=project.title or "")))
    return report


def sync_snapshot(run_dir: str | Path, client, project_id: int, tasks: list[dict], *, url: str | None = None,
                  seed: int = 0, test_fraction: float = 0.2,
                  label_config: str | None = None) -> SyncReport:  # fmt: skip
    """Bring ``run_dir``'s snapshot up to date with the project's ``tasks`` (its export); made when missing.
    The project's classes must stay those of the snapshot (a run's classes are fixed)."""
    run_dir = Path(run_dir)
    exists = (snapshot_dir(run_dir) / MANIFEST).is_file()
    if label_config is None:
        label_config = client.projects.get(id=project_id).label_config
    config = parse_project_config(label_config)
    classes = list(config.classes.classes)
    manifest = read_manifest(run_dir) if exists else _new_manifest(project_id, url, config, seed, test_fraction)
    if int(manifest["project_id"]) != project_id:
        raise ValueError(f"{snapshot_dir(run_dir)} holds project {manifest['project_id']}, not {project_id}")
    if manifest["classes"] != classes:
        raise ValueError(f"project {project_id}'s classes are now {classes}, the snapshot's {manifest['classes']}: a "
                         "run's classes are fixed; start a new run with `hitl init`")  # fmt: skip
    labels, ties, invalid = task_labels(config, tasks)
    known = {t["task_id"]: t for t in manifest["tasks"]}
    changed, stale = [], []
    for task_id, entry in sorted(known.items()):
        new = labels.get(task_id)
        if new is None:
            stale.append(f"task {task_id} has no single label now: it keeps {classes[entry['label']]!r} (sample ids "
                         "never move)")  # fmt: skip
        elif new != entry["label"]:
            changed.append((task_id, entry["label"], new))
            entry["label"] = new
    data = {int(t["id"]): t.get("data") or {} for t in tasks}
    fetched, unreadable = _download(run_dir, client, config.image.data_key, data,
                                    [i for i in sorted(labels) if i not in known])  # fmt: skip
    joined = _place(manifest, fetched, labels, data, first=not exists)
    if changed or joined or not exists:
        manifest["revision"] += 1
        write_json(snapshot_dir(run_dir) / MANIFEST, manifest)
    count = Counter(t["split"] for t in manifest["tasks"])
    return SyncReport(revision=manifest["revision"], train=count["train"], test=count["test"], joined=tuple(joined),
                      changed=tuple(changed), ties=tuple(ties), stale=tuple(stale), unreadable=tuple(unreadable),
                      invalid=tuple(invalid))  # fmt: skip


def train_sample_ids(run_dir: str | Path) -> dict[int, int]:
    """Task id -> sample id of the snapshot's training tasks (what the pull maps a team's task through)."""
    return {int(t["task_id"]): int(t["sample_id"]) for t in read_manifest(run_dir)["tasks"] if t["split"] == "train"}


def test_task_ids(run_dir: str | Path) -> set[int]:
    """The snapshot's test tasks (their feedback is not used)."""
    return {int(t["task_id"]) for t in read_manifest(run_dir)["tasks"] if t["split"] == "test"}


def _new_manifest(project_id: int, url: str | None, config, seed: int, test_fraction: float) -> dict:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    return {"project_id": project_id, "url": url, "classes": list(config.classes.classes),
            "control": config.classes.name, "data_key": config.image.data_key, "split_rule": None,
            "test_fraction": test_fraction, "seed": seed, "revision": 0, "tasks": []}  # fmt: skip


def _download(run_dir: Path, client, key: str, data: dict[int, dict], task_ids: list[int]):
    """({task id: file name under the snapshot}, unreadable lines): each image fetched once."""
    fetched, unreadable = {}, []
    with storage_client() as storage:  # presigned URLs of cloud storage: no credentials (trainer.labelstudio.fetch)
        for task_id in task_ids:
            try:
                blob, ext = task_image(client, task_id, data[task_id].get(key), storage=storage)
            except TaskImageError as exc:
                unreadable.append(f"{exc}: left out")
                continue
            name = f"images/{task_id}{ext}"
            atomic_write(snapshot_dir(run_dir) / name, lambda tmp, blob=blob: tmp.write_bytes(blob))
            fetched[task_id] = name
    return fetched, unreadable


def _place(manifest: dict, fetched: dict[int, str], labels: dict[int, int], data: dict[int, dict], *,
           first: bool) -> list[int]:  # fmt: skip
    """Add the fetched tasks to the manifest with their split and sample id; the task ids added."""
    ids = sorted(fetched)
    marked = {i: str(data[i][SPLIT_KEY]).strip().lower() for i in ids if SPLIT_KEY in data[i]}
    if first:
        manifest["split_rule"] = "task data" if marked else "seeded"
    if manifest["split_rule"] == "seeded" and first and len(ids) > 1:
        _, test_rows = stratified_split([labels[i] for i in ids], manifest["test_fraction"], manifest["seed"])
        test = {ids[r] for r in test_rows}
    else:
        test = {i for i, value in marked.items() if value == TEST_VALUE}
    next_id = Counter(t["split"] for t in manifest["tasks"])
    for task_id in ids:
        split = "test" if task_id in test else "train"
        manifest["tasks"].append({"task_id": task_id, "file": fetched[task_id], "label": labels[task_id],
                                  "split": split, "sample_id": next_id[split]})  # fmt: skip
        next_id[split] += 1
    return ids
