"""What the annotator sees: the image and its saliency overlay, both at display size.

Shape legend: C channels, H x W pixels. Pure: arrays in, PIL images out, no files.

Both pictures go through the same resize, so the grid Label Studio draws in percent of the image
(``gridSize``) covers the same pixels on each. The grid itself is not drawn here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from trainer.core.checks import check_int

CMAPS = ("inferno", "jet")


def image_to_pil(image, display_px: int = 224) -> Image.Image:
    """The plain image (C, H, W) in [0, 1], grey (C=1) or RGB (C=3), as an RGB picture whose longer side is
    ``display_px``."""
    return _resize(Image.fromarray(_to_uint8(_rgb(image))), display_px)


def overlay_image(
    image,
    saliency,
    *,
    display_px: int = 224,
    cmap: str = "inferno",
    alpha: float = 0.6,
) -> Image.Image:
    """The image (C, H, W) in [0, 1] with its saliency (H, W) blended on top, as an RGB picture whose longer
    side is ``display_px``.

    Saliency is scaled by its 99th percentile (one hot pixel must not wash out the rest), coloured with
    ``cmap`` and laid over the image with weight ``alpha``: with 'inferno', unsalient pixels show a dimmed
    image and salient ones glow orange to yellow.
    """
    if cmap not in CMAPS:
        raise ValueError(f"unknown colormap {cmap!r}: use one of {', '.join(CMAPS)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _rgb(image)
    s = _as_array(saliency).astype(np.float64)
    if s.shape != rgb.shape[:2]:
        raise ValueError(f"saliency has shape {s.shape}, the image is {rgb.shape[:2]}")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("saliency must be finite and non-negative")
    level = _normalise(s)
    import matplotlib  # deferred: only the overlay needs it, and it is slow to import

    heat = matplotlib.colormaps[cmap](level)[..., :3]  # (H, W, 3) in [0, 1]
    blended = (1.0 - alpha) * rgb + alpha * heat
    return _resize(Image.fromarray(_to_uint8(blended)), display_px)


def _normalise(s: np.ndarray) -> np.ndarray:
    """(H, W) -> [0, 1], 1 at and above the 99th percentile; all zeros stays all zeros."""
    top = np.percentile(s, 99)
    if top <= 0:
        top = s.max()
    return np.clip(s / top, 0.0, 1.0) if top > 0 else np.zeros_like(s)


def _rgb(image) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) float64."""
    a = _as_array(image).astype(np.float64)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C = 1 or 3, got shape {a.shape}")
    if a.size and (a.min() < -1e-6 or a.max() > 1 + 1e-6):
        raise ValueError(f"image values must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return np.repeat(a, 3, axis=0).transpose(1, 2, 0) if a.shape[0] == 1 else a.transpose(1, 2, 0)


def _resize(picture: Image.Image, display_px: int) -> Image.Image:
    """Scale so the longer side is ``display_px``: nearest neighbour when enlarging (cells stay crisp),
    antialiased when shrinking."""
    check_int(display_px, "display_px", minimum=1)
    w, h = picture.size
    scale = display_px / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return picture
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
    return picture.resize(size, resample)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8))


def _as_array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
