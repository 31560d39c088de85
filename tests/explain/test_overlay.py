"""Overlays: the saliency heat map blended over the image at display size."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.explain.overlay import image_to_pil, overlay_image


@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_is_display_size_and_blends_the_colormap_over_the_image(channels):
    import matplotlib

    image = np.random.default_rng(0).random((channels, 28, 28))
    sal = np.zeros((28, 28))
    sal[:7, :7] = 1.0  # the top-left cell of a 4 x 4 grid
    plain_pic, over_pic = image_to_pil(image, 224), overlay_image(image, sal, display_px=224, alpha=0.5)
    assert plain_pic.size == over_pic.size == (224, 224) and over_pic.mode == plain_pic.mode == "RGB"
    plain, over = np.asarray(plain_pic, float), np.asarray(over_pic, float)
    cold, hot = (255 * np.array(matplotlib.colormaps["inferno"](v)[:3]) for v in (0.0, 1.0))
    np.testing.assert_allclose(over[:56, :56], 0.5 * plain[:56, :56] + 0.5 * hot, atol=1)
    np.testing.assert_allclose(over[56:], 0.5 * plain[56:] + 0.5 * cold, atol=1)
    np.testing.assert_allclose(over[:, 56:], 0.5 * plain[:, 56:] + 0.5 * cold, atol=1)
    assert np.array_equal(np.asarray(overlay_image(image, sal, alpha=0.0)), np.asarray(plain_pic))


def test_one_hot_pixel_does_not_wash_out_the_rest():
    sal = np.ones((28, 28))
    sal[0, 0] = 1e6  # above the 99th percentile: clipped, so every other pixel still reads as fully salient
    over = np.asarray(overlay_image(np.zeros((1, 28, 28)), sal, display_px=28))
    assert (over == over[0, 0]).all()


@pytest.mark.parametrize("shape, size", [((1, 20, 40), (224, 112)), ((3, 300, 150), (112, 224))])
def test_longer_side_becomes_display_px(shape, size):
    image = np.zeros(shape)
    assert image_to_pil(image, 224).size == overlay_image(image, np.zeros(shape[1:])).size == size


def test_image_to_pil_enlarges_with_nearest_neighbour_so_cells_line_up():
    image = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    pixels = np.asarray(image_to_pil(image, 8))[..., 0]
    assert (pixels[:4, :4] == 0).all() and (pixels[:4, 4:] == 255).all() and (pixels[4:, :4] == 255).all()


@pytest.mark.parametrize(
    "image, sal, match",
    [
        (np.zeros((2, 4, 4)), np.zeros((4, 4)), "C = 1 or 3"),
        (np.full((1, 4, 4), 2.0), np.zeros((4, 4)), r"\[0, 1\]"),
        (np.zeros((1, 4, 4)), np.zeros((3, 3)), "saliency has shape"),
        (np.zeros((1, 4, 4)), -np.ones((4, 4)), "non-negative"),
    ],
)
def test_overlay_refuses_bad_input(image, sal, match):
    with pytest.raises(ValueError, match=match):
        overlay_image(image, sal)
