"""``hitl report RUN``: one static page about a run for operators and teams, ``RUN/report.html``.

Shape legend: N images, C channels, H x W pixels, G_h x G_w grid cells.

It shows test accuracy and loss per epoch with the feedback rounds marked, the irrelevant share per round
(data with a true mask), the annotated images' saliency when they were asked and with the newest checkpoint
with the marked cells drawn, what annotators were asked and answered (from the ledger), and the run's config.
The page needs no server: every picture is a PNG data URI.

I/O at the edges: ``build_report`` reads the run (history, ledger, checkpoints) and draws the pictures into a
``Report``; ``render_html`` is a pure function of that model; ``write_report`` writes the file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from label_config.grid import Grid
from trainer.app import plots
from trainer.explain.attribute import attribute, irrelevant_share
from trainer.explain.overlay import image_to_pil, overlay_image
from trainer.runs.atomic import atomic_write
from trainer.runs.checkpoint import checkpoint_path, load_checkpoint
from trainer.runs.ledger import Question
from trainer.runs.run import Run

REPORT_FILE = "report.html"
DISPLAY_PX = 160  # side of each saliency picture on the page
EXAMPLES = 6  # annotated images shown before/after


@dataclass(frozen=True)
class Picture:
    src: str  # a data URI
    alt: str


@dataclass(frozen=True)
class RoundRow:
    round: int
    model_version: str
    annotated: int
    label_fixes: int
    acc: float | None
    min_loss: float | None
    irrelevant_share: float | None


@dataclass(frozen=True)
class AskedRow:
    """One round's questions: tasks pushed, answered (at least one answer that was not a skip), skipped (only
    skips), pending (nothing yet); answers that marked cells; answers that fixed the label."""

    round: int
    asked: int
    answered: int
    skipped: int
    pending: int
    marked: int
    label_fixes: int


@dataclass(frozen=True)
class Example:
    """An annotated image: its saliency with the model of the round it was asked, and with the newest one;
    ``share_*``: the share of that saliency inside the cells the annotators marked."""

    sample_id: int
    label: str
    asked_round: int
    latest_round: int
    marked_cells: int
    image: Picture
    before: Picture
    after: Picture
    predicted_before: str
    predicted_after: str
    share_before: float
    share_after: float


@dataclass(frozen=True)
class Report:
    run_name: str
    generated_at: str
    dataset: str
    classes: tuple[str, ...]
    train_images: int
    test_images: int
    rounds: tuple[RoundRow, ...]
    curves: Picture
    asked: tuple[AskedRow, ...]
    examples: tuple[Example, ...]
    config: dict


# --- The model from a run (I/O) ----------------------------------------------------------------------------


def build_report(run: Run, *, examples: int = EXAMPLES) -> Report:
    history = sorted(run.history(), key=lambda h: h["round"])
    if not history:
        raise ValueError(f"run {run.directory} has no trained round yet: nothing to report (train round 0 first)")
    train, test = run.datasets
    questions = run.ledger.questions()
    curve_rounds = [{"round": h["round"], "annotated": h["annotated"], "irrelevant_share": h.get("irrelevant_share"),
                     "val_acc": [e.get("val_acc") for e in h["epochs"]],
                     "val_loss": [e.get("val_loss") for e in h["epochs"]]} for h in history]  # fmt: skip
    return Report(
        run_name=run.name, generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        dataset=run.config.dataset, classes=tuple(run.classes), train_images=len(train), test_images=len(test),
        rounds=tuple(RoundRow(h["round"], h["model_version"], h["annotated"], h.get("label_fixes", 0), h.get("acc"),
                              h.get("min_loss"), h.get("irrelevant_share")) for h in history),
        curves=Picture(_png_uri(lambda f: plots.plot_epochs(curve_rounds, f)), "test accuracy and loss per epoch"),
        asked=tuple(asked_rows(questions)), examples=tuple(_examples(run, questions, examples)),
        config=asdict(run.config),
    )  # fmt: skip


def asked_rows(questions: list[Question]) -> list[AskedRow]:
    """Per round: how many tasks were asked, answered, skipped, still pending, marked, label-fixed."""
    out = []
    for r in sorted({q.round for q in questions}):
        qs = [q for q in questions if q.round == r]
        out.append(AskedRow(
            round=r, asked=len(qs), answered=sum(q.answers > 0 for q in qs),
            skipped=sum(q.answers == 0 and q.skips > 0 for q in qs),
            pending=sum(q.answers == 0 and q.skips == 0 for q in qs), marked=sum(q.marked for q in qs),
            label_fixes=sum(q.label_fix for q in qs)))  # fmt: skip
    return out


def _examples(run: Run, questions: list[Question], n: int) -> list[Example]:
    """Up to ``n`` images with marked cells, oldest question first."""
    cells = run.feedback().cells  # sample id -> (G_h, G_w) bool
    asked = {}
    for q in questions:
        asked.setdefault(q.sample_id, q.round)
    ids = sorted((i for i in cells if i in asked), key=lambda i: (asked[i], i))[:n]
    if not ids:
        return []
    train, _ = run.datasets
    latest = run.current_round()
    images = torch.stack([train[i][0] for i in ids])  # (n, C, H, W)
    marked = torch.from_numpy(np.stack([run.grid.cells_to_mask(cells[i]) > 0 for i in ids]))  # (n, H, W)
    maps, preds = {}, {}
    for r in sorted({asked[i] for i in ids} | {latest}):
        model, _ = load_checkpoint(checkpoint_path(run.checkpoint_dir, r))
        with torch.no_grad():
            preds[r] = model(images).argmax(1)
        maps[r] = attribute(model, images, preds[r], method=run.config.saliency)  # (n, H, W)
    out = []
    for k, i in enumerate(ids):
        before, after = asked[i], latest
        pictures = [_overlay(images[k], maps[r][k], run.grid, cells[i]) for r in (before, after)]
        shares = [float(irrelevant_share(maps[r][k : k + 1], marked[k : k + 1])[0]) for r in (before, after)]
        out.append(Example(
            sample_id=i, label=run.classes[int(train[i][1])], asked_round=before, latest_round=after,
            marked_cells=int(cells[i].sum()),
            image=Picture(_pil_uri(image_to_pil(images[k], DISPLAY_PX)), f"image {i}"),
            before=Picture(pictures[0], f"saliency of image {i}, round {before}"),
            after=Picture(pictures[1], f"saliency of image {i}, round {after}"),
            predicted_before=run.classes[int(preds[before][k])], predicted_after=run.classes[int(preds[after][k])],
            share_before=shares[0], share_after=shares[1]))  # fmt: skip
    return out


def _overlay(image: torch.Tensor, saliency: torch.Tensor, grid: Grid, cells: np.ndarray) -> str:
    """The saliency overlay with the marked cells outlined (cells: (G_h, G_w) bool), as a data URI."""
    picture = overlay_image(image, saliency, display_px=DISPLAY_PX)
    sy, sx = picture.height / grid.height, picture.width / grid.width
    rows, cols = grid.row_edges(), grid.col_edges()
    draw = ImageDraw.Draw(picture)
    for r, c in np.argwhere(cells):
        draw.rectangle((cols[c] * sx, rows[r] * sy, cols[c + 1] * sx - 1, rows[r + 1] * sy - 1), outline=(0, 255, 255))
    return _pil_uri(picture)


def _pil_uri(picture: Image.Image) -> str:
    return _png_uri(lambda f: picture.save(f, format="PNG"))


def _png_uri(draw) -> str:
    buffer = io.BytesIO()
    draw(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- The page (pure) ---------------------------------------------------------------------------------------

_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}.muted{color:#777}.ex{display:flex;gap:10px;margin:8px 0}
figure{margin:0}figcaption{font-size:12px;color:#555;max-width:160px}pre{background:#f6f6f6;padding:10px}"""


def render_html(report: Report) -> str:
    """The whole page as one string; everything shown from the run is escaped."""
    e = html.escape
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>hitl report: {e(report.run_name)}</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Run {e(report.run_name)}</h1><p class=muted>dataset {e(report.dataset)}: {report.train_images} "
        f"training and {report.test_images} test images, classes {e(', '.join(report.classes))}; "
        f"generated {e(report.generated_at)}</p>",
        "<h2>Training</h2>", _img(report.curves), _rounds_table(report.rounds),
        "<h2>Annotations</h2>", _asked_table(report.asked),
        "<h2>Annotated images: saliency when asked and now</h2>", _examples_html(report.examples),
        "<h2>Config</h2>", f"<pre>{e(json.dumps(report.config, indent=2))}</pre>", "</body></html>",
    ]  # fmt: skip
    return "\n".join(parts)


def _img(p: Picture) -> str:
    return f'<img src="{html.escape(p.src)}" alt="{html.escape(p.alt)}">'


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _rounds_table(rows: tuple[RoundRow, ...]) -> str:
    body = "".join(
        f"<tr><td>{r.round}</td><td>{html.escape(r.model_version)}</td><td>{r.annotated}</td><td>{r.label_fixes}</td>"
        f"<td>{_num(r.acc, '.1%')}</td><td>{_num(r.min_loss, '.3f')}</td>"
        f"<td>{_num(r.irrelevant_share, '.3f')}</td></tr>"
        for r in rows)  # fmt: skip
    return ("<table><tr><th>round</th><th>model version</th><th>images with a mask</th><th>label fixes</th>"
            f"<th>test accuracy</th><th>min test loss</th><th>irrelevant share</th></tr>{body}</table>"
            "<p class=muted>irrelevant share: the share of saliency inside the true irrelevant region of the test "
            "images, where the data has one (-: no true mask)</p>")  # fmt: skip


def _asked_table(rows: tuple[AskedRow, ...]) -> str:
    if not rows:
        return "<p>Nothing was pushed to Label Studio for this run.</p>"
    fields = ("asked", "answered", "skipped", "pending", "marked", "label_fixes")
    total = {f: sum(getattr(r, f) for r in rows) for f in fields}
    body = "".join("<tr><td>" + str(r.round) + "</td>" + "".join(f"<td>{getattr(r, f)}</td>" for f in fields) + "</tr>"
                   for r in rows)  # fmt: skip
    body += "<tr><th>all</th>" + "".join(f"<th>{total[f]}</th>" for f in fields) + "</tr>"
    return (
        "<table><tr><th>round asked</th><th>asked</th><th>answered</th><th>skipped</th><th>pending</th>"
        f"<th>marked cells</th><th>label fixes</th></tr>{body}</table>"
    )


def _examples_html(examples: tuple[Example, ...]) -> str:
    if not examples:
        return "<p>No image has marked cells yet.</p>"
    out = ["<p class=muted>cyan boxes: the cells the annotators marked; share: the saliency inside them</p>"]
    for x in examples:
        out.append(
            f'<div class=ex><figure>{_img(x.image)}<figcaption>image {x.sample_id}, label {html.escape(x.label)}, '
            f"asked after round {x.asked_round}, {x.marked_cells} cell{'s' * (x.marked_cells != 1)} marked"
            "</figcaption></figure>"
            f"<figure>{_img(x.before)}<figcaption>round {x.asked_round}: says {html.escape(x.predicted_before)}, "
            f"share {x.share_before:.2f}</figcaption></figure>"
            f"<figure>{_img(x.after)}<figcaption>round {x.latest_round}: says {html.escape(x.predicted_after)}, "
            f"share {x.share_after:.2f}</figcaption></figure></div>")  # fmt: skip
    return "\n".join(out)


# --- Command line ------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path) -> Path:
    """Build and write ``RUN/report.html``; its path."""
    run = Run.open(run_dir)
    page = render_html(build_report(run))
    return atomic_write(run.directory / REPORT_FILE, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def register(sub) -> None:
    p = sub.add_parser("report", help="write RUN/report.html: curves, annotations, saliency before/after, config")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=lambda args: print(write_report(args.run_dir)) or 0)
