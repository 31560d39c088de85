"""Push a round to Label Studio: pick images, explain them, import one task per image, record it.

Shape legend: N images, C channels, H x W pixels, G_h x G_w grid cells.

Each task shows the image and its saliency overlay as RGB PNGs at ``display_px`` wide, the size the
labelling config pins, so Label Studio's grid falls exactly on the ``Grid``'s cells (LS failed to load
28 x 28 grey data URIs, so pictures are always upscaled RGB). Files live under
``<document_root>/<run name>/round-NNN/`` and are served by a Local Files storage; data URIs are opt-in.

A push is idempotent. Each imported batch is recorded in the ledger as it lands, and before importing, the
project's tasks are reconciled with the ledger: a task that already carries this run's ``model_version`` for
its round is recorded, never imported again, so a crash (or Label Studio going away) between the import and
the ledger write cannot duplicate tasks.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from label_config.config import (
    build_config,
    display_px,
    overlay_value,
    suggestion_result,
)
from label_config.grid import Grid
from label_config.names import (
    IMAGE_KEY,
    LABEL_KEY,
    MODEL_VERSION_KEY,
    PREDICTION_KEY,
    PROBABILITY_KEY,
    ROUND_KEY,
    SALIENCY_KEY,
    SAMPLE_ID_KEY,
)
from trainer.core.checks import check_int
from trainer.core.progress import progress_bar
from trainer.core.sampling import predict_probs
from trainer.explain.attribute import attribute, cell_scores, top_cells
from trainer.explain.overlay import image_to_pil, overlay_image
from trainer.labelstudio.client import (
    ensure_local_storage,
    import_tasks,
    list_task_data,
    local_file_url,
)
from trainer.labelstudio.push_team import is_team_run, push_team, round_model
from trainer.labelstudio.retry import activity
from trainer.runs.atomic import atomic_write
from trainer.runs.run import Run


def label_config_for(run: Run) -> str:
    """The labelling config XML of a run's project (its classes and grid)."""
    return build_config(run.classes, run.grid, display_px=display_px(run.grid))


def push(
    run: Run,
    client,
    project_id: int,
    *,
    round: int | None = None,
    n: int | None = None,
    document_root: str | os.PathLike | None = None,
    data_uri: bool = False,
    progress: bool = False,
) -> list[int]:
    """Push ``n`` images for ``round`` (default: the newest checkpoint's) to a project; the round's task ids.

    The round's checkpoint picks the images (``run.choose_samples``), never one pushed to this project
    in another round. For a run made from this very project (``labelstudio:ID``) the images are its tasks
    already: ``push_team`` adds a prediction to each instead (``document_root`` is not needed). Images already
    pushed for this round are not imported again, so a second call, or
    one after a crash, only completes what is missing. ``document_root`` is Label Studio's
    ``LOCAL_FILES_DOCUMENT_ROOT``; it may be None only with ``data_uri=True``. ``progress``: bars for the
    saliency and the import (on a terminal only).
    """
    if is_team_run(run, project_id):  # the run's images are the project's own tasks: predictions, no import
        return push_team(run, client, project_id, round=round, n=n, progress=progress)
    n = check_int(run.config.sampling.per_round if n is None else n, "n", minimum=1)
    if document_root is None and not data_uri:
        raise ValueError("document_root is needed to serve images from disk (or pass data_uri=True)")
    round, model = round_model(run, round)
    ledger = run.ledger

    def record(task_ids: list[int], batch: list[dict]) -> None:  # each batch as it lands
        ledger.record_pushed(project_id, round, zip(task_ids, (t["data"][SAMPLE_ID_KEY] for t in batch)))

    with activity(f"push of round {round} to project {project_id}"):
        reconcile(run, client, project_id)
        done = ledger.pushed_sample_ids(project_id, round)
        if len(done) < n:
            others = {t.sample_id for t in ledger.pushed_tasks(project_id) if t.round != round}
            todo = [s for s in run.choose_samples(model, round, n, exclude=others) if s not in done]
            if todo:
                tasks = build_tasks(
                    run,
                    model,
                    round,
                    todo,
                    project_id=project_id,
                    client=client,
                    document_root=document_root,
                    data_uri=data_uri,
                    progress=progress,
                )
                with progress_bar(enabled=progress, total=len(tasks), desc="push", unit="task") as bar:
                    import_tasks(client, project_id, tasks, progress=bar.update, on_batch=record)
    ledger.record_round(round, run.model_version(round))
    return [t.task_id for t in ledger.pushed_tasks(project_id, round)]


def reconcile(run, client, project_id: int) -> int:
    """Record in the ledger every task of the project that this run pushed; how many were missing.

    A task is this run's when its data carries ``sample_id``, ``round`` and that round's model_version.
    """
    pairs: dict[int, list[tuple[int, int]]] = {}
    for task_id, data in list_task_data(client, project_id).items():
        try:
            round_, sample_id = int(data[ROUND_KEY]), int(data[SAMPLE_ID_KEY])
        except (KeyError, TypeError, ValueError):
            continue  # not a task of ours
        if data.get(MODEL_VERSION_KEY) == run.model_version(round_):
            pairs.setdefault(round_, []).append((task_id, sample_id))
    with run.ledger.transaction():
        return sum(run.ledger.record_pushed(project_id, r, p) for r, p in sorted(pairs.items()))


def build_tasks(
    run,
    model,
    round: int,
    sample_ids: list[int],
    *,
    project_id: int,
    client=None,
    document_root=None,
    data_uri: bool = False,
    progress: bool = False,
) -> list[dict]:
    """Label Studio tasks (data + one prediction) for ``sample_ids``, their pictures written or inlined."""
    train, _ = run.datasets
    grid, classes, px = run.grid, run.classes, display_px(run.grid)
    images = torch.stack([train[s][0] for s in sample_ids])  # (N, C, H, W)
    probs = predict_probs(model, images, device=run.config.train.device)  # (N, K)
    preds = probs.argmax(dim=1)
    with progress_bar(enabled=progress, total=len(sample_ids), desc="saliency", unit="image") as bar:
        saliency = attribute(model, images, preds, method=run.config.saliency, progress=bar.update)  # (N, H, W)
    scores = cell_scores(saliency, grid)  # (N, G_h, G_w)
    folder = None
    if not data_uri:
        folder = Path(document_root).resolve() / run.name / f"round-{round:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        ensure_local_storage(client, project_id, folder.parent, document_root)
    version = run.model_version(round)
    tasks = []
    for i, sample_id in enumerate(sample_ids):
        pictures = {
            IMAGE_KEY: image_to_pil(images[i], px),
            SALIENCY_KEY: overlay_image(images[i], saliency[i], display_px=px),
        }
        urls = {
            key: _publish(pic, folder, f"sample-{sample_id}-{key}.png", document_root) for key, pic in pictures.items()
        }
        urls[SALIENCY_KEY] = overlay_value(urls[SALIENCY_KEY])
        prob = float(probs[i, preds[i]])
        data = {
            **urls, SAMPLE_ID_KEY: int(sample_id), ROUND_KEY: int(round),
            LABEL_KEY: classes[int(train.labels[sample_id])], PREDICTION_KEY: classes[int(preds[i])],
            PROBABILITY_KEY: f"{prob:.2f}", MODEL_VERSION_KEY: version,
        }  # fmt: skip
        tasks.append({"data": data, "predictions": [_prediction(scores[i], grid, run.config.top_k, prob, version, px)]})
    return tasks


def _prediction(scores: np.ndarray, grid: Grid, k: int, prob: float, version: str, px: int) -> dict:
    """The top-``k`` salient cells as a suggestion; each region scored by its share of the top cell."""
    cells = top_cells(scores, k)
    peak = float(scores.max()) or 1.0
    result = suggestion_result(cells, grid, score=[float(scores[c]) / peak for c in cells], display_px=px)
    return {"model_version": version, "score": prob, "result": result}


def _publish(picture: Image.Image, folder: Path | None, name: str, document_root) -> str:
    """Write ``picture`` as an RGB PNG and return its Local Files URL, or a data URI when ``folder`` is None."""
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    if folder is None:
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    path = atomic_write(folder / name, lambda tmp: tmp.write_bytes(buffer.getvalue()))  # LS may be serving it
    return local_file_url(path, document_root)
