"""The model view: the one decode, resize and crop from an image file or its bytes to the tensor a model sees.

Shape legend: C channels, H x W pixels (H = W = ``size``).

Training (``trainer.data.files``), the images pushed to annotators, the ML backend and ``hitl bench predict``
all decode with ``decode_image`` / ``load_image`` and go through ``model_view``, so cells drawn on a pushed
image map back to the same pixels the model saw, and the benchmark times what the backend does.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

_HIGH_BIT_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


class BadImageError(ValueError):
    """Image files that are missing or cannot be decoded. ``problems``: list of (path, reason)."""

    def __init__(self, problems: list[tuple[Path, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"{p} ({why})" for p, why in problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} bad image file(s): {shown}{more}; pass on_error='skip' to drop them")


# ---------------------------------------------------------------- the one view of an image the model sees


def view_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The region ``(left, top, right, bottom)`` of a ``width x height`` original that ``model_view`` shows.

    Continuous pixel coordinates (pixel i spans [i, i + 1)). A model-view pixel (u, v), 0 <= u, v < size, covers
    original x in [left + u * s_x, left + (u + 1) * s_x) with s_x = (right - left) / size, y likewise; so a mask
    drawn on the pushed image maps back to the original through this box (s_x and s_y can differ by < 1 pixel).
    """
    resized_w, resized_h = _resized_size(width, height, size)
    left, top = _crop_offset(resized_w, size), _crop_offset(resized_h, size)
    sx, sy = width / resized_w, height / resized_h
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def model_view(pil_image: Image.Image, size: int, channels: int = 3) -> torch.Tensor:
    """THE resize/crop used by training, by the overlay pushed to annotators and by the ML backend.

    pil_image: any PIL image, as decoded (``load_image`` also applies the EXIF orientation).
    Returns (C, size, size) float32 in [0, 1], C = ``channels`` (3: RGB, 1: grayscale/luma).
    Steps: convert to RGB or L (alpha dropped; 16-bit and float images scaled to [0, 1] first), resize with PIL
    bilinear (antialiased) so the shorter side is ``size`` and the longer ``int(size * long / short)``, then
    crop ``size x size`` at offset ``int(round((resized - size) / 2))`` on each axis. This is the geometry of
    ``torchvision.transforms.Resize(size)`` + ``CenterCrop(size)``; ``view_box`` gives it in original pixels.
    """
    return view_tensor(view_array(pil_image, size, channels))


def load_image(path: str | Path) -> Image.Image:
    """Decode one file fully, upright per its EXIF orientation; any failure is a BadImageError naming it."""
    path = Path(path)
    return _decode(lambda: Image.open(path), path)


def decode_image(data: bytes, source: str = "<bytes>") -> Image.Image:
    """Decode encoded image bytes (a fetched task image) as ``load_image`` decodes a file; ``source`` names
    them in the BadImageError."""
    return _decode(lambda: Image.open(io.BytesIO(data)), Path(source))


def _decode(opener: Callable[[], Image.Image], source: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is an error, not a warning
            with opener() as img:
                img.load()
                return ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise BadImageError([(source, "missing file")]) from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadImageError([(source, f"cannot decode: {exc}")]) from exc


def check_image(path: Path, channels: int = 3) -> str | None:
    """Why ``path`` is not a usable image (missing, truncated, corrupt, a bomb, a mode that cannot be shown to
    a model of ``channels`` channels), or None. Decodes the whole file, once, so nothing fails mid-epoch."""
    if not path.is_file():
        return "missing file"
    try:
        view_array(load_image(path), 1, channels)  # the conversion the dataset will make: LAB goes to RGB, not L
    except BadImageError as exc:
        return exc.problems[0][1]
    except ValueError as exc:
        return str(exc)
    return None


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    if size < 1 or width < 1 or height < 1:
        raise ValueError(f"sizes must be positive, got image {width}x{height} and size {size}")
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _crop_offset(resized: int, size: int) -> int:
    return int(round((resized - size) / 2.0))  # torchvision's center_crop rounding


def view_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """The view before scaling: (C, size, size) uint8 for 8-bit sources (exact, 4x smaller to cache), float32
    in [0, 1] otherwise; ``view_tensor`` turns it into what ``model_view`` returns."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode in _HIGH_BIT_MODES:  # 16-bit grayscale (medical PNG/TIFF) would clip at 255 via convert("L")
        scaled = np.asarray(img, dtype=np.float32) / _HIGH_BIT_MODES[img.mode]
        img = Image.fromarray(np.clip(scaled, 0.0, 1.0).astype(np.float32))
    elif img.mode != ("RGB" if channels == 3 else "L"):
        img = _convert(img, "RGB" if channels == 3 else "L")
    resized_w, resized_h = _resized_size(img.width, img.height, size)
    if (resized_w, resized_h) != img.size:
        # Resize only the region that survives the crop: the same pixels as resizing the whole image and then
        # cropping (PIL's filter reads past the box's edges), without a 1 x 5000 strip costing a gigabyte.
        img = img.resize((size, size), Image.BILINEAR, box=view_box(img.width, img.height, size))
    else:
        left, top = _crop_offset(resized_w, size), _crop_offset(resized_h, size)
        img = img.crop((left, top, left + size, top + size))
    array = np.asarray(img)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if array.shape[0] != channels:  # a float grayscale source shown as RGB
        array = np.repeat(array, channels, axis=0)
    return np.array(array, order="C")  # a writable copy: PIL's buffer is read-only


def _convert(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode``; a conversion PIL lacks (LAB or La to L) is a ValueError naming the mode."""
    try:
        return img.convert(mode)
    except ValueError as exc:
        raise ValueError(f"image mode {img.mode} cannot be converted to {mode}: {exc}") from None


def view_tensor(array: np.ndarray) -> torch.Tensor:
    """A ``view_array`` result as (C, size, size) float32 in [0, 1]."""
    # numpy, not torch: per-item torch ops in the main process wait on torch's thread pool, which costs
    # ~30 ms per image on a loaded 2-core machine (measured); numpy's division is single-threaded
    if array.dtype == np.uint8:
        return torch.from_numpy(np.divide(array, 255.0, dtype=np.float32))
    return torch.from_numpy(array.astype(np.float32))


# ---------------------------------------------------------------- datasets
