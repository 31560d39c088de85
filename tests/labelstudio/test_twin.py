"""The paper's protocol on a team's own files: ``hitl init --train-fraction`` on ISIC-2017 and APTOS-2019
layouts, ``hitl run --twin`` against the real Label Studio (simulated annotator), ``hitl compare RUN RUN-twin``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.app.cli import main
from trainer.data.files import APTOS_CLASSES, ISIC_CLASSES, mask_path
from trainer.data.registry import load_dataset
from trainer.labelstudio.link import LINK_FILE
from trainer.runs.run import Run

pytestmark = [pytest.mark.labelstudio, pytest.mark.usefixtures("one_torch_thread")]
SIDE = 28


def _picture(path: Path, label: int, rng: np.random.Generator) -> None:
    """A noisy lesion-like blob with a planted shortcut: a bright patch whose corner tells the label; its
    ``<stem>.mask.png`` marks the patch (the true irrelevant region the simulated annotator marks)."""
    pixels = rng.integers(60, 120, (SIDE, SIDE, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    pixels[(yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 < 36] = (150, 70, 50)
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    r, c = divmod(label % 4, 2)
    mask[r * (SIDE - 6) : r * (SIDE - 6) + 6, c * (SIDE - 6) : c * (SIDE - 6) + 6] = 255
    pixels[mask > 0] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    Image.fromarray(mask).save(mask_path(path))


def isic_files(root: Path, per_class: int = 10) -> Path:
    """ISIC-2017 Part 3: the ground-truth CSV and ``ISIC-2017_Training_Data/<image_id>.jpg``."""
    rng = np.random.default_rng(0)
    rows = ["image_id,melanoma,seborrheic_keratosis"]
    for k in range(len(ISIC_CLASSES)):
        for i in range(per_class):
            image_id = f"ISIC_{k * 1000 + i:07d}"
            rows.append(f"{image_id},{float(k == 0)},{float(k == 1)}")
            _picture(root / "ISIC-2017_Training_Data" / f"{image_id}.jpg", k, rng)
    csv = root / "ISIC-2017_Training_Part3_GroundTruth.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def aptos_files(root: Path, per_class: int = 6) -> Path:
    """APTOS-2019: ``train.csv`` (id_code, diagnosis) and ``train_images/<id_code>.png``."""
    rng = np.random.default_rng(1)
    rows = ["id_code,diagnosis"]
    for k in range(len(APTOS_CLASSES)):
        for i in range(per_class):
            code = f"{k:02x}{i:010x}"
            rows.append(f"{code},{k}")
            _picture(root / "train_images" / f"{code}.png", k, rng)
    csv = root / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


@pytest.mark.parametrize("make, classes", [(isic_files, ISIC_CLASSES), (aptos_files, APTOS_CLASSES)])
def test_train_fraction_twin_and_compare_on_a_teams_files(make, classes, tmp_path, label_studio, monkeypatch,
                                                          capsys):  # fmt: skip
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.token)
    csv = make(tmp_path / "data")
    run_dir = tmp_path / f"{tmp_path.name}-run"  # unique on the shared server
    assert main(["init", str(run_dir), "--dataset", f"csv:{csv}", "--train-fraction", "0.5", "--model", "small-cnn",
                 "--epochs", "1", "--per-round", "3", "--replay", "2"]) == 0  # fmt: skip
    run = Run.open(run_dir)
    assert run.classes == classes and (run.config.image_size, run.config.channels) == (SIDE, 3)
    c = run.config
    whole, _ = load_dataset(c.dataset, size=c.image_size, seed=c.seed, channels=c.channels)
    train, test = run.datasets  # half of each class of the training split; the test split whole
    assert np.bincount(train.labels.numpy()).tolist() == [max(1, round(n / 2)) for n in np.bincount(whole.labels)]
    assert main(["run", str(run_dir), "--rounds", "1", "--simulate", "--twin",
                 "--document-root", str(label_studio.document_root)]) == 0  # fmt: skip
    twin = Run.open(tmp_path / f"{run_dir.name}-twin")
    assert [h["annotated"] for h in run.history()] == [0, 3]
    assert [h["annotated"] for h in twin.history()] == [0, 0] and twin.config.twin_of == run.name
    assert twin.history()[1]["epochs"][-1]["penalised_rows"] == 0
    assert not (twin.directory / LINK_FILE).exists()  # the twin never talks to Label Studio
    capsys.readouterr()

    assert main(["compare", str(run_dir), str(twin.directory), "--out", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Baseline 50% vs HITL 50%"
    assert [line.split()[1] for line in out[2:4]] == ["hitl", "baseline"]
    assert main(["compare", str(twin.directory), str(run_dir), "--json", "--out", str(tmp_path / "c.png")]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert all(r["source"] == "history" and len(test) > 0 for r in runs)
