"""``hitl report``: the page's model from a real tiny run, the pure HTML, and the command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import chromium_page
from trainer.app.cli import main
from trainer.app.report import AskedRow, asked_rows, build_report, render_html
from trainer.runs.ledger import Question
from trainer.runs.run import Run, RunConfig, with_overrides

TINY = {"train.epochs": 2, "train.batch_size": 256, "train.replay": 4}


def annotated_run(directory, n: int = 3) -> Run:
    """decoy-mnist: round 0, then ``n`` images asked after round 0 and answered with their true decoy cells
    (written to the ledger as a pull writes them), one skipped, one pending; round 1 trains with the masks."""
    run = Run.create(directory, with_overrides(RunConfig(), **TINY))
    run.train_next_round()
    masks = run.datasets[0].decoy_masks.numpy()
    ids = list(range(n + 2))
    run.ledger.record_pushed(1, 0, [(100 + i, i) for i in ids])
    for i in ids[:n]:
        run.ledger.upsert_annotation(
            500 + i,
            task_id=100 + i,
            sample_id=i,
            project_id=1,
            updated_at="2024-01-01T00:00:00Z",
            cells=run.grid.mask_to_cells(masks[i]),
        )
    run.ledger.upsert_annotation(600, task_id=100 + n, sample_id=n, project_id=1, updated_at="2024-01-01T00:00:00Z",
                                 skip=True)  # fmt: skip
    run.train_next_round()
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield annotated_run(tmp_path_factory.mktemp("report") / "run")
    finally:
        torch.set_num_threads(threads)


def test_asked_rows_count_answers_skips_and_pending():
    qs = [Question(0, 1, 1, 0, True, False), Question(0, 2, 0, 1, False, False), Question(0, 3, 0, 0, False, False),
          Question(1, 4, 2, 1, True, True)]  # fmt: skip
    assert asked_rows(qs) == [
        AskedRow(0, asked=3, answered=1, skipped=1, pending=1, marked=1, label_fixes=0),
        AskedRow(1, asked=1, answered=1, skipped=0, pending=0, marked=1, label_fixes=1),
    ]


@pytest.mark.slow
def test_report_model_from_a_run(run):
    report = build_report(run)
    assert [r.round for r in report.rounds] == [0, 1]
    assert [r.annotated for r in report.rounds] == [0, 3]
    assert all(r.irrelevant_share is not None for r in report.rounds)  # decoy-mnist has a true mask
    assert report.asked == (AskedRow(0, asked=5, answered=3, skipped=1, pending=1, marked=3, label_fixes=0),)
    assert [x.sample_id for x in report.examples] == [0, 1, 2]
    assert all(x.asked_round == 0 and x.latest_round == 1 and x.marked_cells > 0 for x in report.examples)
    assert all(0 <= x.share_before <= 1 and 0 <= x.share_after <= 1 for x in report.examples)
    assert report.config["train"]["epochs"] == 2


@pytest.mark.slow
def test_html_is_a_pure_function_that_escapes_what_it_shows(run):
    from dataclasses import replace

    report = replace(build_report(run), run_name="<script>alert(1)</script>", generated_at="fixed")
    page = render_html(report)
    assert page == render_html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 1 + 3 * len(report.examples)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)


@pytest.mark.slow
def test_report_command_writes_the_page(run, capsys):
    assert main(["report", str(run.directory)]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(run.directory / "report.html")
    page = (run.directory / "report.html").read_text()
    assert f"Run {run.name}" in page and "<td>5</td><td>3</td><td>1</td><td>1</td>" in page  # asked ... pending


def test_report_refuses_a_run_without_rounds(tmp_path, capsys):
    Run.create(tmp_path / "empty", RunConfig())
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no trained round yet" in capsys.readouterr().err


OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "report"  # gitignored; docs/report.png comes from here
_IMAGES = "() => Array.from(document.images).map(img => ({complete: img.complete, width: img.naturalWidth}))"


@pytest.mark.browser
@pytest.mark.labelstudio
def test_report_of_a_real_run_renders_in_chromium(tmp_path, label_studio, monkeypatch, one_torch_thread):
    """A decoy-mnist run through the real Label Studio with the simulated annotator, its report opened from
    disk in headless Chromium: every picture decodes and the console stays free of errors."""
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    run_dir = tmp_path / f"{tmp_path.name}-run"
    assert main(["init", str(run_dir), "--epochs", "2", "--per-round", "4", "--replay", "4"]) == 0
    assert main(["run", str(run_dir), "--rounds", "2", "--simulate", "--document-root",
                 str(label_studio.document_root)]) == 0  # fmt: skip
    assert main(["report", str(run_dir)]) == 0
    page_path = run_dir / "report.html"

    errors: list[str] = []
    with chromium_page(width=1150, height=900) as page:
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate(_IMAGES)
        headings = page.locator("h2").all_inner_texts()
        OUTPUT.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(OUTPUT / "report.png"), full_page=True)
    assert errors == []
    assert len(images) == 1 + 3 * 6  # the curves, then image / when asked / now for 6 annotated images
    assert all(i["complete"] and i["width"] > 0 for i in images)
    assert headings[:2] == ["Training", "Annotations"]
