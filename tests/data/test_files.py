"""User datasets on disk: folder tree, ISIC-2017 Part 3, APTOS-2019 and generic CSVs, bad files, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from trainer.data.files import (
    APTOS_CLASSES,
    ISIC_CLASSES,
    BadImageError,
    CsvDataset,
    FolderDataset,
    load_user_dataset,
)

SIZE = 8


def _image(path: Path, value: int, size=(14, 10), mode="RGB") -> Path:
    """A uniform image whose red (or grey) level ``value`` tells which file an item came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value, 40, 80) if mode == "RGB" else value).save(path)
    return path


def _red(image: torch.Tensor) -> int:
    return round(float(image[0].mean()) * 255)


@pytest.fixture
def folder_tree(tmp_path: Path) -> Path:
    """dogs (3 png), cats (2 jpg, one nested), birds (1 bmp); plus files that must be ignored."""
    root = tmp_path / "pets"
    for i in range(3):
        _image(root / "dogs" / f"d{i}.png", 10 + i)
    _image(root / "cats" / "c0.jpg", 100)
    _image(root / "cats" / "sub" / "c1.JPG", 120)
    _image(root / "birds" / "b0.bmp", 200, mode="L")
    (root / "dogs" / "notes.txt").write_text("not an image")
    _image(root / "dogs" / ".hidden.png", 0)
    _image(root / ".ipynb_checkpoints" / "x.png", 0)
    return root


def _isic(tmp_path: Path, split: str = "Training") -> Path:
    rows = [
        ("ISIC_0000000", "0.0", "0.0"),
        ("ISIC_0000001", "1.0", "0.0"),
        ("ISIC_0000002", "0.0", "1.0"),
        ("ISIC_0000003", "0.0", "0.0"),
        ("ISIC_0000004", "1.0", "0.0"),
    ]
    csv = tmp_path / f"ISIC-2017_{split}_Part3_GroundTruth.csv"
    csv.write_text("image_id,melanoma,seborrheic_keratosis\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    for i, (image_id, _, _) in enumerate(rows):
        _image(tmp_path / f"ISIC-2017_{split}_Data" / f"{image_id}.jpg", 20 * i + 10, size=(20, 15))
    _image(tmp_path / f"ISIC-2017_{split}_Data" / "ISIC_0000000_superpixels.png", 0)  # shipped beside the jpgs
    return csv


def _aptos(tmp_path: Path) -> Path:
    ids = ["000c1434d8d7", "001639a390f0", "0024cdab0c1e", "002c21358ce6", "005b95c28852", "0083ee8054ee"]
    diagnosis = [2, 4, 1, 0, 0, 3]
    csv = tmp_path / "train.csv"
    csv.write_text("id_code,diagnosis\n" + "".join(f"{i},{d}\n" for i, d in zip(ids, diagnosis)))
    for k, image_id in enumerate(ids):
        _image(tmp_path / "train_images" / f"{image_id}.png", 30 * k + 5, size=(16, 12))
    return csv


def _generic(tmp_path: Path, header="image,label", labels=("cat", "dog", "cat", "dog")) -> Path:
    csv = tmp_path / "labels.csv"
    lines = [header]
    for i, label in enumerate(labels):
        _image(tmp_path / "imgs" / f"{i}.png", 50 + i)
        lines.append(f"imgs/{i}.png,{label}")
    csv.write_text("\n".join(lines) + "\n")
    return csv


def _maker(kind: str, tmp_path: Path):
    """Writes one small dataset of ``kind`` once; returns ``build(**opts)`` that reads it."""
    if kind == "folder":
        root = tmp_path / "pets"
        for i in range(3):
            _image(root / "dogs" / f"d{i}.png", 10 + i)
        _image(root / "cats" / "c0.jpg", 100)
        return lambda **opts: FolderDataset(root, size=SIZE, **opts)
    csv = {"isic": _isic, "aptos": _aptos, "generic": _generic}[kind](tmp_path)
    return lambda **opts: CsvDataset(csv, size=SIZE, **opts)


# ---------------------------------------------------------------- the shared view


# ---------------------------------------------------------------- formats


def test_folder_dataset_classes_labels_shapes_and_stable_ids(folder_tree):
    ds = FolderDataset(folder_tree, size=SIZE)
    assert ds.classes == ["birds", "cats", "dogs"]
    assert ds.labels.tolist() == [0, 1, 1, 2, 2, 2] and ds.labels.dtype == torch.long
    assert ds.image_shape == (3, SIZE, SIZE) and ds.decoy_masks is None and ds.skipped == []
    assert [p.name for p in ds.paths] == ["b0.bmp", "c0.jpg", "c1.JPG", "d0.png", "d1.png", "d2.png"]
    image, label, sample_id = ds[4]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32 and (label, sample_id) == (2, 4)
    assert _red(image) == 11 and ds.path_of(4).name == "d1.png"
    assert [p.name for p in FolderDataset(folder_tree, size=SIZE).paths] == [p.name for p in ds.paths]
    assert FolderDataset(folder_tree, size=SIZE, channels=1)[0][0].shape == (1, SIZE, SIZE)


def test_isic_2017_part3_csv(tmp_path):
    ds = CsvDataset(_isic(tmp_path), size=SIZE)
    assert ds.format == "isic2017" and ds.classes == ISIC_CLASSES == ["melanoma", "seborrheic_keratosis", "nevus"]
    assert ds.labels.tolist() == [2, 0, 1, 2, 0]
    assert [p.name for p in ds.paths] == [f"ISIC_000000{i}.jpg" for i in range(5)]
    assert all(p.parent.name == "ISIC-2017_Training_Data" for p in ds.paths)
    image, label, sample_id = ds[1]
    assert image.shape == (3, SIZE, SIZE) and (label, sample_id) == (0, 1) and abs(_red(image) - 30) <= 3


def test_isic_images_folder_follows_the_csv_name(tmp_path):
    ds = CsvDataset(_isic(tmp_path, split="Validation"), size=SIZE)
    assert all(p.parent.name == "ISIC-2017_Validation_Data" for p in ds.paths)


def test_aptos_2019_csv(tmp_path):
    ds = CsvDataset(_aptos(tmp_path), size=SIZE)
    assert ds.format == "aptos2019" and ds.classes == APTOS_CLASSES and len(ds.classes) == 5
    assert ds.labels.tolist() == [2, 4, 1, 0, 0, 3]
    assert ds.path_of(0) == tmp_path / "train_images" / "000c1434d8d7.png"
    assert _red(ds[5][0]) == 155


@pytest.mark.parametrize(
    "labels, classes, expected",
    [
        (("cat", "dog", "cat", "dog"), ["cat", "dog"], [0, 1, 0, 1]),
        (("2", "0", "1", "2"), ["0", "1", "2"], [2, 0, 1, 2]),
        (("1", "1", "3", "0"), ["0", "1", "2", "3"], [1, 1, 3, 0]),
    ],
)
def test_generic_csv_labels_by_name_or_index(tmp_path, labels, classes, expected):
    ds = CsvDataset(_generic(tmp_path, labels=labels), size=SIZE)
    assert ds.format == "generic" and ds.classes == classes and ds.labels.tolist() == expected
    assert _red(ds[2][0]) == 52


def test_generic_csv_with_own_columns_and_images_dir(tmp_path):
    csv = _generic(tmp_path, header="file,diagnosis")
    csv.write_text(csv.read_text().replace("imgs/", ""))
    ds = CsvDataset(csv, size=SIZE, path_col="file", label_col="diagnosis", images_dir=tmp_path / "imgs")
    assert ds.classes == ["cat", "dog"] and len(ds) == 4


# ---------------------------------------------------------------- validation and bad files


@pytest.mark.parametrize(
    "header, labels, opts, needle",
    [
        ("image,label", ("cat", "dog", "cow", "dog"), {"classes": ["cat", "dog"]}, "'cow'"),
        ("image,klass", ("cat", "dog", "cat", "dog"), {}, "['label']"),
        ("file,label", ("cat", "dog", "cat", "dog"), {"path_col": "path"}, "['path']"),
    ],
)
def test_generic_csv_errors_name_the_bad_value(tmp_path, header, labels, opts, needle):
    with pytest.raises(ValueError, match="labels.csv") as err:
        CsvDataset(_generic(tmp_path, header=header, labels=labels), size=SIZE, **opts)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "make, old, new, needle",
    [
        (_isic, "ISIC_0000002,0.0,1.0", "ISIC_0000002,1.0,1.0", "ISIC_0000002"),
        (_isic, "ISIC_0000002,0.0,1.0", "ISIC_0000002,0.5,0.0", "'0.5'"),
        (_isic, "seborrheic_keratosis\n", "seborrheic_keratosis,\n", None),
        (_aptos, "0083ee8054ee,3", "0083ee8054ee,7", "'7'"),
        (_aptos, "0083ee8054ee,3", "0083ee8054ee,", "''"),
    ],
)
def test_official_csv_errors_name_the_row(tmp_path, make, old, new, needle):
    csv = make(tmp_path)
    csv.write_text(csv.read_text().replace(old, new))
    if needle is None:  # a trailing empty column is harmless
        assert len(CsvDataset(csv, size=SIZE)) == 5
        return
    with pytest.raises(ValueError, match=csv.name) as err:
        CsvDataset(csv, size=SIZE)
    assert needle in str(err.value)


def test_missing_columns_images_folder_and_rows(tmp_path):
    csv = _aptos(tmp_path)
    csv.write_text("id_code\nabc\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['diagnosis'\]"):
        CsvDataset(csv, size=SIZE, format="aptos2019")
    csv.write_text("id_code,diagnosis\n")
    with pytest.raises(ValueError, match="no data rows"):
        CsvDataset(csv, size=SIZE)
    csv.write_text("id_code,diagnosis\nabc,1\n")
    with pytest.raises(ValueError, match="nowhere"):
        CsvDataset(csv, size=SIZE, images_dir=tmp_path / "nowhere")


@pytest.mark.parametrize("layout", ["no class folders", "empty class folder", "missing root"])
def test_folder_errors_name_the_folder(tmp_path, layout):
    root = tmp_path / "data"
    if layout == "no class folders":
        _image(root / "loose.png", 1)
        needle = "no class subfolders"
    elif layout == "empty class folder":
        _image(root / "a" / "x.png", 1)
        (root / "b").mkdir()
        (root / "b" / "readme.txt").write_text("")
        needle = str(root / "b")
    else:
        needle = "does not exist"
    with pytest.raises(ValueError, match="data") as err:
        FolderDataset(root, size=SIZE)
    assert needle in str(err.value)


def _break(ds, problem: str) -> Path:
    """Corrupt or delete the second file of a freshly built dataset; returns its path."""
    path = ds.paths[1]
    if problem == "missing":
        path.unlink()
    elif problem == "corrupt":
        path.write_bytes(b"this is not an image at all")
    else:  # truncated inside the pixel data: a JPEG's header still verifies, decoding fails
        noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        with Image.open(path) as img:
            fmt = img.format
        Image.fromarray(noise).save(path, format=fmt)
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 4 // 5])
    return path


@pytest.mark.parametrize(
    "kind, problem",
    [
        (k, p)
        for k in ("folder", "isic", "aptos", "generic")
        for p in ("missing", "corrupt", "truncated")
        if (k, p) != ("folder", "missing")
    ],  # a folder dataset lists only files that exist
)
def test_bad_file_raises_naming_it_or_is_skipped(tmp_path, kind, problem):
    build = _maker(kind, tmp_path)
    n = len(build())
    bad = _break(build(), problem)
    cache = problem == "truncated"  # a truncated file passes the header check; the cache decodes every file
    with pytest.raises(BadImageError, match=str(bad)) as err:
        build(cache=cache)
    assert err.value.problems[0][0] == bad and isinstance(err.value, ValueError)
    ds = build(on_error="skip", cache=cache)
    assert len(ds) == n - 1 and bad not in ds.paths and [p for p, _ in ds.skipped] == [bad]
    assert len(ds.labels) == n - 1
    assert sum(1 for _ in DataLoader(ds, batch_size=2)) == (n - 1 + 1) // 2


def test_truncated_file_without_cache_is_found_when_the_dataset_is_built(tmp_path):
    """A JPEG's header still verifies when its pixel data is cut: the check decodes the whole file, so the
    dataset refuses it (or skips it) up front instead of failing mid-epoch."""
    build = _maker("isic", tmp_path)
    bad = _break(build(), "truncated")
    with pytest.raises(BadImageError, match=str(bad)):
        build()


def test_on_error_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="'ignore'"):
        _maker("aptos", tmp_path)(on_error="ignore")


# ---------------------------------------------------------------- cache, loader, splits


@pytest.mark.parametrize("kind", ["folder", "isic", "aptos", "generic"])
def test_cache_returns_the_same_items(tmp_path, kind):
    build = _maker(kind, tmp_path)
    plain, cached = build(), build(cache=True)
    for i in range(len(plain)):
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_epoch_over_split(folder_tree, num_workers):
    train, test = load_user_dataset(f"folder:{folder_tree}", size=SIZE, val_fraction=0.4, seed=1)
    seen = []
    for images, labels, ids in DataLoader(train, batch_size=2, shuffle=True, num_workers=num_workers):
        assert images.shape[1:] == (3, SIZE, SIZE) and images.dtype == torch.float32
        assert torch.equal(labels, train.labels[ids])
        seen += ids.tolist()
    assert sorted(seen) == list(range(len(train)))


@pytest.mark.parametrize("spec_kind", ["folder", "csv"])
def test_stratified_split_is_seeded_disjoint_and_remaps_ids(tmp_path, spec_kind):
    root = tmp_path / "d"
    for k, n in enumerate([10, 5, 1]):
        for i in range(n):
            _image(root / f"class{k}" / f"{i:02d}.png", 10 * k + i)
    if spec_kind == "csv":
        rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
        (root / "labels.csv").write_text("image,label\n" + "\n".join(rows))
        spec = f"csv:{root / 'labels.csv'}"
    else:
        spec = f"folder:{root}"
    train, test = load_user_dataset(spec, size=SIZE, val_fraction=0.2, seed=3)
    again, _ = load_user_dataset(spec, size=SIZE, val_fraction=0.2, seed=3)
    assert train.paths == again.paths and len(train) + len(test) == 16
    assert not set(train.paths) & set(test.paths)
    assert np.bincount(test.labels.numpy(), minlength=3).tolist() == [2, 1, 0]  # the lone class stays in train
    assert train.classes == test.classes == ["class0", "class1", "class2"] and test.image_shape == (3, SIZE, SIZE)
    for part in (train, test):
        for sample_id in range(len(part)):
            image, label, got_id = part[sample_id]
            assert got_id == sample_id and label == int(part.labels[sample_id])
            assert _red(image) == 10 * label + int(part.path_of(sample_id).stem)
    sub = train.subset([3, 0])
    assert sub.paths == [train.paths[3], train.paths[0]] and sub[1][2] == 1 and sub.decoy_masks is None


def test_train_test_subfolders_share_the_training_classes(tmp_path):
    for split, names in [("train", ["a", "b", "c"]), ("val", ["b"])]:
        for name in names:
            _image(tmp_path / split / name / "0.png", 7)
    train, test = load_user_dataset(f"folder:{tmp_path}", size=SIZE)
    assert train.classes == test.classes == ["a", "b", "c"] and test.labels.tolist() == [1]
    _image(tmp_path / "val" / "zebra" / "0.png", 7)
    with pytest.raises(ValueError, match="zebra"):
        load_user_dataset(f"folder:{tmp_path}", size=SIZE)


def test_official_test_csv(tmp_path):
    train_csv, test_csv = _isic(tmp_path), _isic(tmp_path, split="Test_v2")
    train, test = load_user_dataset(f"csv:{train_csv}", size=SIZE, test_csv=test_csv)
    assert len(train) == len(test) == 5 and test.path_of(0).parent.name == "ISIC-2017_Test_v2_Data"


@pytest.mark.parametrize("spec", ["mnist", "folder:", "zip:/data"])
def test_bad_spec(spec):
    with pytest.raises(ValueError, match="folder:PATH"):
        load_user_dataset(spec, size=SIZE)


def test_load_dataset_dispatches_user_specs(folder_tree):
    from trainer.data.registry import load_dataset, train_fraction

    train, test = load_dataset(f"folder:{folder_tree}", size=SIZE, seed=0, cache=True)
    assert train.classes == ["birds", "cats", "dogs"] and train.image_shape == (3, SIZE, SIZE)
    assert len(train) + len(test) == 6
    small = train_fraction(train, 0.5, seed=0)
    assert len(small) < len(train) and small[0][2] == 0


@pytest.mark.parametrize("name", ["watermark-mnist", "frame-mnist-rgb"])
def test_a_written_folder_reads_back_with_its_true_masks(tmp_path, name):
    """``hitl datasets --export`` then ``folder:PATH``: the same images (8-bit) and the same true masks."""
    from trainer.data.files import write_folder
    from trainer.data.registry import load_dataset

    train, _ = load_dataset(name, size=28)
    part = train.subset(np.concatenate([np.flatnonzero(train.labels.numpy() == k)[:3] for k in range(10)]))
    write_folder(part, tmp_path / "train")
    assert not list((tmp_path / "train").rglob("*.mask.mask.png"))
    back = FolderDataset(tmp_path / "train", size=28, channels=part.image_shape[0])
    assert len(back) == 30 and back.decoy_masks is not None  # mask files are not images
    order = [int(p.stem) for p in back.paths]  # <sample id>.png, grouped by class
    assert torch.equal(back.decoy_masks, part.decoy_masks[order])
    for i, sid in enumerate(order):
        assert torch.allclose(back[i][0], part[sid][0], atol=0.5 / 255 + 1e-6) and back[i][1] == part[sid][1]


def test_folder_without_mask_files_has_no_true_masks(folder_tree):
    assert FolderDataset(folder_tree, size=SIZE).decoy_masks is None


# ---------------------------------------------------------------- files the model view cannot take, rows that leave
def test_a_lab_tiff_in_a_grey_dataset_is_refused_when_the_dataset_is_built(tmp_path):
    """PIL converts LAB to RGB (which the check tried) but not to L (which a grey dataset does mid-epoch)."""
    for i in range(2):
        _image(tmp_path / "a" / f"{i}.png", 10 + i, mode="L")
    lab = tmp_path / "a" / "lab.tif"
    Image.new("LAB", (14, 10)).save(lab)
    with pytest.raises(BadImageError, match=r"lab\.tif.*image mode LAB cannot be converted to L"):
        FolderDataset(tmp_path, size=SIZE, channels=1)
    ds = FolderDataset(tmp_path, size=SIZE, channels=1, on_error="skip")
    assert [p for p, _ in ds.skipped] == [lab] and len(ds) == 2
    assert sum(1 for _ in DataLoader(ds, batch_size=2)) == 1  # the epoch runs to its end
    assert len(FolderDataset(tmp_path, size=SIZE, channels=3)) == 3  # shown as RGB it is usable


@pytest.mark.parametrize("name", ["../outside.png", "imgs/../../outside.png", "/etc/outside.png"])
def test_csv_image_paths_outside_the_images_folder_are_refused(tmp_path, name):
    csv = _generic(tmp_path / "d")
    _image(tmp_path / "outside.png", 9)
    csv.write_text(csv.read_text() + f"{name},cat\n")
    with pytest.raises(ValueError, match=rf"labels\.csv:6: image path '{name}' leaves the images folder"):
        CsvDataset(csv, size=SIZE)


def test_official_csv_ids_cannot_leave_the_images_folder(tmp_path):
    csv = _aptos(tmp_path)
    csv.write_text(csv.read_text() + "../../x,0\n")
    with pytest.raises(ValueError, match=r"train\.csv:8: image path '\.\./\.\./x' leaves the images folder"):
        CsvDataset(csv, size=SIZE)
