"""User datasets on disk: a folder per class, or a CSV of image + label.

Shape legend: N images, C channels, H x W pixels (H = W = ``size``).

Datasets yield ``(image (C, H, W) float32 in [0, 1], label int, sample_id int)`` like the built-ins in
``trainer.data.benchmarks``. A sample id is the index in its dataset: files are sorted, so ids are stable while the
set of files (and, for a split, the seed and fraction) is unchanged; ``path_of(sample_id)`` names the file behind one.

CSV formats, detected from the header:
  * ISIC-2017 Part 3: ``image_id,melanoma,seborrheic_keratosis`` (0.0/1.0); images ``<image_id>.jpg`` in the
    sibling folder named after the CSV (``ISIC-2017_Training_Part3_GroundTruth.csv`` ->
    ``ISIC-2017_Training_Data``); classes melanoma, seborrheic_keratosis, nevus (both 0).
  * APTOS-2019 (Kaggle): ``id_code,diagnosis`` (0..4); images ``<id_code>.png`` in the sibling ``train_images``.
  * generic: ``image,label`` (or ``path_col``/``label_col``); paths relative to the CSV's folder; a label is a
    class name, or an int class index when every label is an int.
  * labelstudio: Label Studio's own CSV, JSON or JSON_MIN export of the project (``trainer.data.lsexport``):
    the Choices column and the image URL; ``document_root`` and ``label_config`` say where the images are and
    which classes, in which order (the config's Choices).

A file ``<stem>.mask.png`` beside an image is its known irrelevant region (``decoy_masks``): what a simulated
annotator marks and the irrelevant-share metric reads, never an input of the model. ``write_folder`` writes any
dataset in this layout (``hitl datasets --export``).

Bad files are found when the dataset is built, never mid-epoch: by default a missing or unreadable image
raises ``BadImageError`` naming it; ``on_error="skip"`` drops such files and lists them in ``.skipped``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from trainer.data.lsexport import is_export_header, read_export
from trainer.data.view import (
    BadImageError,
    check_image,
    load_image,
    model_view,
    view_array,
    view_tensor,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm"})
ISIC_CLASSES = ["melanoma", "seborrheic_keratosis", "nevus"]
APTOS_CLASSES = ["no_dr", "mild", "moderate", "severe", "proliferative_dr"]
CSV_FORMATS = ("auto", "isic2017", "aptos2019", "generic", "labelstudio")
MASK_SUFFIX = ".mask.png"  # <stem>.mask.png beside an image: its known irrelevant region, if a team has one


class FileDataset(Dataset):
    """Image files with labels, read through ``model_view``. Base of FolderDataset and CsvDataset.

    paths: N files; labels: N class indices into ``classes``. Bad files are checked here (header verify, or a
    full decode when ``cache``): ``on_error="raise"`` raises BadImageError, ``"skip"`` drops them into
    ``.skipped`` as (path, reason). ``cache=True`` decodes every image once, here, and keeps the (C, H, W)
    views in memory (uint8 for 8-bit files): about N * C * H * W bytes. Built before DataLoader workers start,
    the cache is shared with them.
    """

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        classes: list[str],
        *,
        size: int,
        channels: int = 3,
        on_error: str = "raise",
        cache: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.classes = list(classes)
        self.image_shape = (channels, size, size)
        self.decoy_masks: torch.Tensor | None = None  # from mask files, once the usable files are known
        self.skipped: list[tuple[Path, str]] = []
        self._cache: list[np.ndarray] | None = None
        if cache:  # decoding every view is the check: each file is decoded once
            self.paths, self.labels = list(paths), torch.tensor(labels, dtype=torch.long)
            views, problems = self._decode_all()
            self._keep(paths, labels, problems, on_error)
            self._cache = [v for v in views if v is not None]
        else:
            problems = [(p, why) for p in paths if (why := check_image(p, channels)) is not None]
            self._keep(paths, labels, problems, on_error)
        if not self.paths:
            first = f" (first: {self.skipped[0][0]}: {self.skipped[0][1]})" if self.skipped else ""
            raise ValueError(f"no usable images: all {len(self.skipped)} files were skipped as bad{first}")
        self.decoy_masks = true_masks(self.paths, size)

    def _keep(self, paths: list[Path], labels: list[int], problems: list, on_error: str) -> None:
        if problems and on_error == "raise":
            raise BadImageError(problems)
        self.skipped += problems
        bad = {p for p, _ in problems}
        kept = [(p, y) for p, y in zip(paths, labels) if p not in bad]
        self.paths = [p for p, _ in kept]
        self.labels = torch.tensor([y for _, y in kept], dtype=torch.long)

    def _decode_all(self) -> tuple[list[np.ndarray | None], list[tuple[Path, str]]]:
        views, problems = [], []
        for path in self.paths:
            try:
                views.append(view_array(load_image(path), self.image_shape[1], self.image_shape[0]))
            except BadImageError as exc:
                views.append(None)
                problems += exc.problems
            except ValueError as exc:  # a mode that cannot be shown to the model, as check_image reports it
                views.append(None)
                problems.append((path, str(exc)))
        return views, problems

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, sample_id: int) -> tuple[torch.Tensor, int, int]:
        if self._cache is not None:
            image = view_tensor(self._cache[sample_id])
        else:
            image = model_view(load_image(self.paths[sample_id]), self.image_shape[1], self.image_shape[0])
        return image, int(self.labels[sample_id]), int(sample_id)

    def path_of(self, sample_id: int) -> Path:
        """The file behind a sample id."""
        if not 0 <= sample_id < len(self.paths):
            raise ValueError(f"sample id {sample_id} is out of range 0..{len(self.paths) - 1}")
        return self.paths[sample_id]

    def subset(self, ids) -> DatasetPart:
        """The given rows as a dataset with sample ids renumbered 0..len(ids)-1."""
        return DatasetPart(self, ids)


class FolderDataset(FileDataset):
    """ROOT/<class>/**/<image>: classes are the sorted subfolder names, files sorted by relative path.

    ``classes`` fixes the class list (a test split must use its training split's); a subfolder outside it, no
    class subfolder at all, or a class subfolder without images is a ValueError naming the folder. Hidden
    files and folders and non-image files are ignored.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        size: int,
        channels: int = 3,
        classes: list[str] | None = None,
        on_error: str = "raise",
        cache: bool = False,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ValueError(f"dataset folder {root} does not exist or is not a folder")
        folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise ValueError(f"dataset folder {root} has no class subfolders (expected ROOT/<class>/<image>)")
        classes = folders if classes is None else list(classes)
        if extra := [f for f in folders if f not in classes]:
            raise ValueError(f"class folder(s) {extra} in {root} are not among the classes {classes}")
        paths, labels = [], []
        for k, name in enumerate(classes):
            files = _image_files(root / name) if name in folders else []
            if name in folders and not files:
                raise ValueError(f"class folder {root / name} has no image files ({sorted(IMAGE_EXTENSIONS)})")
            paths += files
            labels += [k] * len(files)
        self.root = root
        super().__init__(paths, labels, classes, size=size, channels=channels, on_error=on_error, cache=cache)


def mask_path(image: Path) -> Path:
    """Where an image's known irrelevant region may lie: ``<stem>.mask.png`` beside it (non-zero = irrelevant)."""
    return image.with_name(image.stem + MASK_SUFFIX)


def true_masks(paths: list[Path], size: int) -> torch.Tensor | None:
    """(N, size, size) bool from the images' mask files, through the same view as the images (an image without
    one: nothing marked); None when no image has a mask file. What a simulated annotator and the irrelevant-share
    metric use; the model never sees it."""
    found = [mask_path(p) for p in paths]
    if not any(m.is_file() for m in found):
        return None
    out = torch.zeros(len(paths), size, size, dtype=torch.bool)
    for i, m in enumerate(found):
        if m.is_file():
            out[i] = model_view(load_image(m), size, 1)[0] > 0.5
    return out


def write_folder(dataset: Dataset, root: str | Path) -> Path:
    """Write ``dataset`` as ROOT/<class>/<sample id>.png (8-bit grey or RGB), with ``<id>.mask.png`` where its
    true mask marks something; file names keep the sample order within each class."""
    root = Path(root)
    masks = getattr(dataset, "decoy_masks", None)
    for i in range(len(dataset)):
        image, label, sid = dataset[i]
        array = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        picture = Image.fromarray(array[0]) if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))
        path = root / dataset.classes[int(label)] / f"{int(sid):05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
        if masks is not None and masks[i].any():
            Image.fromarray(masks[i].numpy().astype(np.uint8) * 255).save(mask_path(path))
    return root


def _image_files(folder: Path) -> list[Path]:
    found = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
             and not p.name.endswith(MASK_SUFFIX)]  # fmt: skip
    visible = [p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(visible, key=lambda p: p.relative_to(folder).as_posix())


class CsvDataset(FileDataset):
    """A CSV of image + label in the ISIC-2017 Part 3, APTOS-2019 or generic format (see the module doc).

    images_dir: where the images are (default per format, relative to the CSV's folder); format: one of
    ``CSV_FORMATS`` ("auto" reads the header); path_col/label_col: the generic format's columns; classes: fixes
    the generic class list (a label outside it is a ValueError naming it). Rows keep the CSV's order.
    document_root, label_config: a Label Studio export's (``trainer.data.lsexport.read_export``).
    """

    def __init__(
        self,
        csv_path: str | Path,
        *,
        size: int,
        channels: int = 3,
        images_dir: str | Path | None = None,
        format: str = "auto",
        path_col: str | None = None,
        label_col: str | None = None,
        classes: list[str] | None = None,
        on_error: str = "raise",
        cache: bool = False,
        document_root: str | Path | None = None,
        label_config: str | Path | None = None,
    ) -> None:
        csv_path = Path(csv_path).expanduser()
        self.csv_path = csv_path
        self.format, paths, labels, classes = read_label_csv(
            csv_path, images_dir=images_dir, format=format, path_col=path_col, label_col=label_col, classes=classes,
            document_root=document_root, label_config=label_config,
        )  # fmt: skip
        super().__init__(paths, labels, classes, size=size, channels=channels, on_error=on_error, cache=cache)


def read_label_csv(
    csv_path: Path, *, images_dir=None, format="auto", path_col=None, label_col=None, classes=None,
    document_root=None, label_config=None,
) -> tuple[str, list[Path], list[int], list[str]]:  # fmt: skip
    """(format, N image paths, N labels, classes) from a label CSV (or a Label Studio JSON export); no image
    is opened."""
    if format not in CSV_FORMATS:
        raise ValueError(f"CSV format must be one of {CSV_FORMATS}, got {format!r}")
    if not csv_path.is_file():
        raise ValueError(f"label CSV {csv_path} does not exist or is not a file")
    if format == "auto" and csv_path.suffix.lower() == ".json":
        format = "labelstudio"
    if format == "labelstudio":
        return format, *read_export(csv_path, document_root=document_root, label_config=label_config)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(f, skipinitialspace=True)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        if format == "auto":
            format = _detect_format(header, path_col, label_col)
        if format == "labelstudio":
            return format, *read_export(csv_path, document_root=document_root, label_config=label_config)
        rows = [(reader.line_num, row) for row in reader if any((v or "").strip() for v in row.values())]
    if not rows:
        raise ValueError(f"label CSV {csv_path} has no data rows")
    if format == "generic":
        paths, labels, classes = _parse_generic(
            csv_path, header, rows, images_dir, path_col or "image", label_col or "label", classes
        )
    else:
        parse = _parse_isic if format == "isic2017" else _parse_aptos
        paths, labels, classes = parse(csv_path, header, rows, images_dir)
    return format, paths, labels, classes


def _detect_format(header: list[str], path_col, label_col) -> str:
    if path_col or label_col:
        return "generic"
    if is_export_header(header):
        return "labelstudio"
    if {"image_id", "melanoma", "seborrheic_keratosis"} <= set(header):
        return "isic2017"
    if {"id_code", "diagnosis"} <= set(header):
        return "aptos2019"
    return "generic"


def _require(csv_path: Path, header: list[str], columns: list[str]) -> None:
    if missing := [c for c in columns if c not in header]:
        raise ValueError(f"label CSV {csv_path} lacks column(s) {missing}; its header is {header}")


def _images_dir(csv_path: Path, images_dir, default: str) -> Path:
    folder = Path(images_dir).expanduser() if images_dir is not None else csv_path.parent / default
    if not folder.is_dir():
        raise ValueError(f"images folder {folder} for {csv_path.name} does not exist (pass images_dir=)")
    return folder


def _parse_isic(csv_path, header, rows, images_dir):
    _require(csv_path, header, ["image_id", "melanoma", "seborrheic_keratosis"])
    # ISIC-2017_<Split>_Part3_GroundTruth.csv sits beside ISIC-2017_<Split>_Data/ once the zips are extracted
    stem = re.sub(r"_Part3_GroundTruth$", "", csv_path.stem)
    folder = _images_dir(csv_path, images_dir, f"{stem}_Data" if stem != csv_path.stem else "ISIC-2017_Training_Data")
    paths, labels = [], []
    for line, row in rows:
        mel, sk = (_binary(csv_path, line, row, c) for c in ("melanoma", "seborrheic_keratosis"))
        if mel and sk:
            raise ValueError(f"{csv_path}:{line}: image {row['image_id']} is both melanoma and seborrheic_keratosis")
        paths.append(_find(folder, _inside(csv_path, line, row["image_id"].strip()), ".jpg"))
        labels.append(0 if mel else 1 if sk else 2)
    return paths, labels, list(ISIC_CLASSES)


def _binary(csv_path, line, row, column) -> bool:
    value = (row[column] or "").strip()
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number not in (0.0, 1.0):
        raise ValueError(f"{csv_path}:{line}: {column} must be 0 or 1, got {value!r}")
    return number == 1.0


def _parse_aptos(csv_path, header, rows, images_dir):
    _require(csv_path, header, ["id_code", "diagnosis"])
    folder = _images_dir(csv_path, images_dir, "train_images")
    paths, labels = [], []
    for line, row in rows:
        label = _int_or_none(row["diagnosis"])
        if label is None or not 0 <= label < len(APTOS_CLASSES):
            raise ValueError(f"{csv_path}:{line}: unknown diagnosis {row['diagnosis']!r} (expected 0..4)")
        paths.append(_find(folder, _inside(csv_path, line, row["id_code"].strip()), ".png"))
        labels.append(label)
    return paths, labels, list(APTOS_CLASSES)


def _parse_generic(csv_path, header, rows, images_dir, path_col, label_col, classes):
    _require(csv_path, header, [path_col, label_col])
    base = Path(images_dir).expanduser() if images_dir is not None else csv_path.parent
    names = [(row[label_col] or "").strip() for _, row in rows]
    ints = [_int_or_none(n) for n in names]
    as_index = all(i is not None for i in ints) and classes is None
    if as_index:  # int labels are class indices 0..max
        if min(ints) < 0:
            raise ValueError(f"label CSV {csv_path}: negative label {min(ints)} in column {label_col!r}")
        classes = [str(k) for k in range(max(ints) + 1)]
    classes = sorted(set(names)) if classes is None else list(classes)
    index = {name: k for k, name in enumerate(classes)}
    labels = []
    for (line, _), name, i in zip(rows, names, ints):
        if not as_index and name not in index:
            raise ValueError(f"{csv_path}:{line}: unknown label {name!r}; classes are {classes}")
        labels.append(i if as_index else index[name])
    paths = [base / _inside(csv_path, line, (row[path_col] or "").strip()) for line, row in rows]
    return paths, labels, classes


def _inside(csv_path: Path, line: int, name: str) -> str:
    """``name`` from a CSV row, refused when it is absolute or climbs out with ``..``: a label CSV names files in
    its images folder (the CSV's own, or ``images_dir``), so a shared CSV cannot point the run at other files."""
    path = Path(name)
    if path.is_absolute() or path.anchor or ".." in path.parts:
        raise ValueError(f"{csv_path}:{line}: image path {name!r} leaves the images folder: name files relative "
                         "to it (or pass images_dir= for another folder)")  # fmt: skip
    return name


def _int_or_none(text: str | None) -> int | None:
    try:
        number = float((text or "").strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _find(folder: Path, stem: str, ext: str) -> Path:
    """folder/<stem><ext>, or a file with that stem and another image extension (re-encoded copies)."""
    path = folder / f"{stem}{ext}"
    if path.exists():
        return path
    others = [folder / f"{stem}{e}" for e in sorted(IMAGE_EXTENSIONS) if (folder / f"{stem}{e}").exists()]
    return others[0] if others else path  # a missing path is reported by the file check


# ---------------------------------------------------------------- what the files are

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
MAX_NATIVE_SIZE = 224  # larger photos are shown to the model at 224 px, as torchvision's ResNets expect


def probe_shape(paths: list[Path], *, sample: int = 64) -> tuple[int, int]:
    """``(channels, size)`` the files themselves suggest, from the headers of up to ``sample`` of them spread
    over the list: 1 channel when every one is greyscale, else 3; the median shorter side, at most 224."""
    if not paths:
        raise ValueError("no image files to read the image size from")
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int)]
    modes, sides = set(), []
    for path in picked:
        with Image.open(path) as img:  # headers only: no decode
            modes.add(img.mode)
            sides.append(min(img.size))
    channels = 1 if modes <= GREY_MODES else 3
    return channels, int(min(MAX_NATIVE_SIZE, np.median(sides)))


# ---------------------------------------------------------------- splits


class DatasetPart(Dataset):
    """Rows ``indices`` of a FileDataset, with sample ids renumbered 0..n-1 (``indices[i]`` is the base id)."""

    def __init__(self, base: FileDataset, indices) -> None:
        self.base = base
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
        if len(self.indices) and not (0 <= int(self.indices.min()) and int(self.indices.max()) < len(base)):
            raise ValueError(f"indices out of range 0..{len(base) - 1}")
        self.classes = base.classes
        self.image_shape = base.image_shape
        self.labels = base.labels[self.indices]
        self.decoy_masks = None if base.decoy_masks is None else base.decoy_masks[self.indices]
        self.paths = [base.paths[i] for i in self.indices.tolist()]
        self.skipped = base.skipped

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, sample_id: int) -> tuple[torch.Tensor, int, int]:
        image, label, _ = self.base[int(self.indices[sample_id])]
        return image, label, int(sample_id)

    def path_of(self, sample_id: int) -> Path:
        if not 0 <= sample_id < len(self.indices):
            raise ValueError(f"sample id {sample_id} is out of range 0..{len(self.indices) - 1}")
        return self.paths[sample_id]

    def subset(self, ids) -> DatasetPart:
        return DatasetPart(self.base, self.indices[torch.as_tensor(np.asarray(ids), dtype=torch.long)])


def stratified_split(labels, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, test ids), each sorted: about ``val_fraction`` of every class (>= 1 of a class with >= 2)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for k in np.unique(labels):
        ids = np.flatnonzero(labels == k)
        n_test = min(max(round(len(ids) * val_fraction), 1), len(ids) - 1)
        test.extend(rng.permutation(ids)[:n_test].tolist())
    test = np.sort(np.asarray(test, dtype=np.int64))
    return np.setdiff1d(np.arange(len(labels)), test), test


def load_user_dataset(
    spec: str,
    *,
    size: int,
    channels: int = 3,
    val_fraction: float = 0.2,
    seed: int = 0,
    on_error: str = "raise",
    test_csv: str | Path | None = None,
    test_images_dir: str | Path | None = None,
    **opts,
) -> tuple[Dataset, Dataset]:
    """(train, test) for ``folder:PATH`` or ``csv:PATH``.

    A folder with ``train/`` and ``test/`` (or ``val/``) subfolders is used as split (test takes train's
    classes); ``test_csv`` names a labelled CSV to test on (images in ``test_images_dir`` or its format's
    default); otherwise a seeded stratified ``val_fraction`` split of the one dataset, both parts
    ``DatasetPart``. ``opts`` go to the dataset class (cache, classes, images_dir, format, path_col, label_col).
    """
    kind, _, path = spec.partition(":")
    if kind not in ("folder", "csv") or not path:
        raise ValueError(f"dataset spec must be 'folder:PATH' or 'csv:PATH', got {spec!r}")
    root = Path(path).expanduser()
    common = dict(size=size, channels=channels, on_error=on_error, **opts)
    if kind == "folder":
        if test_csv is not None:
            raise ValueError(f"test_csv={test_csv!r} needs a 'csv:PATH' spec, got {spec!r}")
        test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        if (root / "train").is_dir() and test_dir is not None:
            train = FolderDataset(root / "train", **common)
            return train, FolderDataset(test_dir, **{**common, "classes": train.classes})
        full: FileDataset = FolderDataset(root, **common)
    else:
        full = CsvDataset(root, **common)
        if test_csv is not None:
            test_opts = {**common, "images_dir": test_images_dir, "classes": full.classes}
            return full, CsvDataset(test_csv, **test_opts)
    train_ids, test_ids = stratified_split(full.labels.numpy(), val_fraction, seed)
    return full.subset(train_ids), full.subset(test_ids)
