"""Push a round to the team's own project, for a run made from it (``hitl init RUN --dataset labelstudio:ID``).

Shape legend: N images, C channels, H x W pixels, G_h x G_w grid cells.

The round's images are tasks the project already holds (the snapshot maps sample id <-> task id), so nothing is
imported and the config is left as it is: each chosen task gets one prediction (``predictions.create``) built from
the project's parsed config by the builder the backend's ``/predict`` uses (``label_config.suggest``), with the
round's model_version and the model's probability of its class as the score. The choice it pre-fills is the
task's own label, not the model's class: these tasks are labelled already, so an annotator who accepts the
prediction unread changes nothing; the model's class and probability are in the regions' text and the score.
A Data Manager tab per round ("<run> round R", a filter on the round's task ids) is where annotators find them.

Resumable and idempotent like ``push.push``: the round picks the same samples whenever it is asked; before creating
a prediction the task's predictions are read, and one this push made (this round's model_version, the choice item
``LABEL_ITEM_ID``) is recorded instead of made again; each prediction is recorded in the ledger as it lands, with
Label Studio's ``created_at`` as its push time (the server's clock, which annotations are stamped by too).
"""

from __future__ import annotations

import torch

from label_config.config import display_px
from label_config.interface import ProjectConfig, parse_project_config
from label_config.suggest import prediction_result
from trainer.core.checks import check_int
from trainer.core.progress import progress_bar
from trainer.core.sampling import predict_probs
from trainer.data.snapshot import SNAPSHOT_PREFIX
from trainer.explain.attribute import attribute, cell_scores, top_cells
from trainer.labelstudio.retry import activity
from trainer.runs.checkpoint import checkpoint_path
from trainer.runs.run import Run

LABEL_ITEM_ID = "hitl-task-label"  # the id of a pushed prediction's choice item: how a push knows its own


def is_team_run(run: Run, project_id: int) -> bool:
    """Whether ``run`` was made from project ``project_id`` (its tasks are the project's own)."""
    return run.config.dataset == f"{SNAPSHOT_PREFIX}{project_id}"


def round_model(run: Run, round: int | None) -> tuple[int, torch.nn.Module]:
    """(round, its model on the training device): the newest checkpoint's by default; ValueError naming what is
    missing."""
    current = run.current_round()
    if current < 0:
        raise ValueError(f"run {run.directory} has no checkpoint yet: train round 0 first (`hitl train`)")
    round = current if round is None else round
    if not checkpoint_path(run.checkpoint_dir, round).is_file():
        raise ValueError(f"round {round!r} has no checkpoint in {run.checkpoint_dir} (newest: round {current})")
    model, _ = run.load_checkpoint(round)
    return round, model.to(run.config.train.device)


def push_team(run: Run, client, project_id: int, *, round: int | None = None, n: int | None = None,
              progress: bool = False) -> list[int]:  # fmt: skip
    """Ask about ``n`` of the run's training tasks after ``round`` (default: the newest checkpoint's) in the team's
    project; the round's task ids. Adds one prediction per chosen task and never a task or a config change."""
    if not is_team_run(run, project_id):
        raise ValueError(f"run {run.directory} was not made from project {project_id} ({run.config.dataset})")
    n = check_int(run.config.sampling.per_round if n is None else n, "n", minimum=1)
    round, model = round_model(run, round)
    ledger, version = run.ledger, run.model_version(round)
    with activity(f"push of round {round} to project {project_id}"):
        config = parse_project_config(client.projects.get(id=project_id).label_config)
        if list(config.classes.classes) != run.classes:
            raise ValueError(f"project {project_id}'s classes are now {list(config.classes.classes)}, the run's "
                             f"{run.classes}: a run's classes are fixed")  # fmt: skip
        done = ledger.pushed_sample_ids(project_id, round)
        if len(done) < n:
            others = {t.sample_id for t in ledger.pushed_tasks(project_id) if t.round != round}
            task_of = dict(enumerate(run.datasets[0].task_ids))  # the snapshot's: sample id -> task id
            todo = [s for s in run.choose_samples(model, round, n, exclude=others) if s not in done]
            todo = [s for s in todo if not _record_existing(client, ledger, project_id, round, task_of[s], s, version)]
            predictions = team_predictions(run, model, config, todo, version, progress=progress)
            with progress_bar(enabled=progress, total=len(todo), desc="push", unit="task") as bar:
                for sample_id, prediction in zip(todo, predictions):
                    made = client.predictions.create(task=task_of[sample_id], **prediction)
                    ledger.record_pushed(project_id, round, [(task_of[sample_id], sample_id)],
                                         pushed_at=made.created_at)  # fmt: skip
                    bar.update(1)
        task_ids = [t.task_id for t in ledger.pushed_tasks(project_id, round)]
        round_view(client, project_id, run, round, task_ids)
    ledger.record_round(round, version)
    return task_ids


def _record_existing(client, ledger, project_id: int, round: int, task_id: int, sample_id: int, version: str) -> bool:
    """Record the task if it holds this push's prediction already (a push cut off before its ledger write)."""
    for prediction in client.predictions.list(task=task_id):
        if is_pushed(prediction.model_version, prediction.result, version):
            ledger.record_pushed(project_id, round, [(task_id, sample_id)], pushed_at=prediction.created_at)
            return True
    return False


def is_pushed(model_version: str | None, result, version: str) -> bool:
    """Whether a prediction (its model_version and result) is the one ``push_team`` made for ``version``: the
    backend's ``/predict`` may store one of the same model_version on the same task, which pre-fills the model's
    class instead of the task's label."""
    return model_version == version and any(isinstance(i, dict) and i.get("id") == LABEL_ITEM_ID for i in result or [])


def team_predictions(run: Run, model, config: ProjectConfig, sample_ids: list[int], version: str, *,
                     progress: bool = False) -> list[dict]:  # fmt: skip
    """One prediction (``result``, ``score``, ``model_version``) per training sample: the task's label pre-filled
    (``prediction_result(..., label=...)``), the model's top-k salient cells as regions of the feedback tool."""
    if not sample_ids:
        return []
    train, _ = run.datasets
    grid = run.grid
    images = torch.stack([train[s][0] for s in sample_ids])  # (N, C, H, W)
    probs = predict_probs(model, images, device=run.config.train.device)  # (N, K)
    preds = probs.argmax(dim=1)
    with progress_bar(enabled=progress, total=len(sample_ids), desc="saliency", unit="image") as bar:
        saliency = attribute(model, images, preds, method=run.config.saliency, progress=bar.update)  # (N, H, W)
    scores = cell_scores(saliency, grid)  # (N, G_h, G_w)
    out = []
    for i, sample_id in enumerate(sample_ids):
        k, label = int(preds[i]), int(train.labels[sample_id])
        cells = top_cells(scores[i], run.config.top_k)
        peak = float(scores[i].max()) or 1.0
        result = prediction_result(config, k, float(probs[i, k]), cells, grid, display_px=display_px(grid),
                                   scores=[float(scores[i][c]) / peak for c in cells],
                                   label=(label, float(probs[i, label])))  # fmt: skip
        result[0]["id"] = LABEL_ITEM_ID
        out.append({"result": result, "score": float(probs[i, k]), "model_version": version})
    return out


def round_view_title(run: Run, round: int) -> str:
    return f"{run.name} round {round}"[:100]


def round_view(client, project_id: int, run: Run, round: int, task_ids: list[int]) -> int:
    """The id of the project's Data Manager tab that shows the round's tasks, made (or its filter brought up to
    ``task_ids``) as needed: a filter on task ids, ``or``-joined (Label Studio 1.23 has no "one of" operator)."""
    title = round_view_title(run, round)
    items = [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(t)}
             for t in sorted(task_ids)]  # fmt: skip
    data = {"title": title, "filters": {"conjunction": "or", "items": items}}
    for view in client.views.list(project=project_id):
        if (view.data or {}).get("title") == title:
            if (view.data or {}).get("filters") != data["filters"]:
                client.views.update(id=str(view.id), data=data, project=project_id)
            return int(view.id)
    return int(client.views.create(project=project_id, data=data).id)


def round_view_id(client, project_id: int, run: Run, round: int) -> int | None:
    """The round's tab made by ``round_view``, or None."""
    title = round_view_title(run, round)
    return next((int(v.id) for v in client.views.list(project=project_id) if (v.data or {}).get("title") == title),
                None)  # fmt: skip
