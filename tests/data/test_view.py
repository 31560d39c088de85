"""The model view: decode, resize and crop, as torchvision's Resize + CenterCrop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from trainer.data.view import (
    BadImageError,
    decode_image,
    load_image,
    model_view,
    view_box,
)

SIZE = 8


@pytest.mark.parametrize("wh", [(40, 20), (20, 40), (33, 17), (16, 16), (5, 7)])
@pytest.mark.parametrize("channels", [1, 3])
def test_model_view_is_torchvision_resize_then_center_crop(wh, channels):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    ref = img if channels == 3 else img.convert("L")
    expected = TF.to_tensor(TF.center_crop(TF.resize(ref, SIZE), SIZE))
    got = model_view(img, SIZE, channels)
    assert got.shape == (channels, SIZE, SIZE) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize(
    "wh, size, box",
    [
        ((40, 20), 10, (10.0, 0.0, 30.0, 20.0)),
        ((20, 40), 10, (0.0, 10.0, 20.0, 30.0)),
        ((16, 16), 8, (0.0, 0.0, 16.0, 16.0)),
    ],
)
def test_view_box_locates_the_crop_in_the_original(wh, size, box):
    assert view_box(*wh, size) == pytest.approx(box)
    # a white block on the box's left half shows on the view's left half (edges blend with their neighbours)
    img = Image.new("L", wh, 0)
    left, top, right, bottom = (int(v) for v in box)
    img.paste(255, (left, top, (left + right) // 2, bottom))
    view = model_view(img, size, 1)[0]
    assert view[1:-1, 1 : size // 2 - 1].min() > 0.9 and view[:, size // 2 + 1 :].max() < 0.1


def test_model_view_scales_16_bit_grayscale(tmp_path):
    path = tmp_path / "xray.png"
    Image.fromarray(np.full((12, 12), 1000, dtype=np.uint16)).save(path)
    img = load_image(path)
    assert img.mode.startswith("I")
    for channels in (1, 3):
        assert torch.allclose(model_view(img, SIZE, channels), torch.full((channels, SIZE, SIZE), 1000 / 65535))


def test_load_image_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (20, 10)).save(path, exif=exif)
    assert load_image(path).size == (10, 20)


def test_decode_image_of_bytes_equals_load_image_of_the_file(tmp_path):
    """The backend decodes fetched bytes, training decodes files: one decoder, the same picture."""
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(path)
    from_bytes, from_file = decode_image(path.read_bytes(), "x.png"), load_image(path)
    assert from_bytes.size == from_file.size and np.array_equal(np.asarray(from_bytes), np.asarray(from_file))
    with pytest.raises(BadImageError, match="broken.png"):
        decode_image(b"not an image", "broken.png")


def test_a_long_strip_costs_only_the_cropped_region():
    """1 x 5000 pixels at 224: resizing the whole strip first makes a 224 x 1,120,000 RGB image (750 MB). PIL
    allocates outside Python's allocator, so the peak resident memory of a fresh process is what is measured."""
    import subprocess
    import sys

    code = """
import resource, numpy as np
from PIL import Image
from trainer.data.view import model_view
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
strip = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5000, 1), dtype=np.uint8))
assert model_view(strip, 224, 3).shape == (3, 224, 224)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    grown_kib = int(done.stdout.strip().splitlines()[-1])
    assert grown_kib < 100 * 1024, f"viewing the strip grew the process by {grown_kib / 1024:.0f} MiB"


def test_a_decompression_bomb_is_an_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # warns above 100 pixels, refuses above 200
    buffer = __import__("io").BytesIO()
    Image.new("L", (12, 12)).save(buffer, format="PNG")  # 144 pixels: only a warning before
    with pytest.raises(BadImageError, match="bomb"):
        decode_image(buffer.getvalue(), "big.png")


@pytest.mark.parametrize("mode", ["LAB", "La"])
def test_a_mode_that_cannot_be_shown_is_a_value_error_naming_it(mode):
    """PIL converts LAB to RGB but not to L: a grey model's backend answered such an image with a 500."""
    with pytest.raises(ValueError, match=f"image mode {mode} cannot be converted to L"):
        model_view(Image.new(mode, (8, 8)), 8, 1)
