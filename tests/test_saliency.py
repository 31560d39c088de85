"""Saliency room: captum behind one call, DeepLIFT on ResNets, cells, shares and the overlay picture."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from label_config.grid import Grid
from trainer.models import build_model
from trainer.overlay import image_to_pil, overlay_image
from trainer.saliency import (
    METHODS,
    attribute,
    cell_scores,
    deeplift_ready,
    irrelevant_share,
    top_cells,
)

SIDE = 32
GRID = Grid(SIDE, SIDE, 4, 4)
PLANTED = (1, 2)  # the only cell the planted model can see


def planted_mask() -> torch.Tensor:
    """(H, W) bool, True on the planted cell."""
    return torch.from_numpy(GRID.cells_to_mask(np.eye(1, 16, PLANTED[0] * 4 + PLANTED[1]).reshape(4, 4)) > 0)


class PlantedNet(nn.Module):
    """Logits depend only on the pixels of the planted cell: the input is masked before the first conv.

    Positive weights on positive inputs keep every activation and Grad-CAM weight positive."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.register_buffer("region", planted_mask().float())
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(4, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.abs_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu2(self.conv2(self.relu1(self.conv1(x * self.region))))
        return self.head(h.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=5)


@pytest.mark.parametrize("method", METHODS)
def test_saliency_concentrates_on_the_planted_cell(method):
    torch.manual_seed(0)
    model = PlantedNet()
    images = torch.rand(4, 3, SIDE, SIDE)
    sal = attribute(model, images, target=1, method=method, ig_steps=8, batch_size=3)
    assert sal.shape == (4, SIDE, SIDE) and sal.dtype == torch.float32 and not sal.requires_grad
    assert (sal >= 0).all()
    share = irrelevant_share(sal, planted_mask().expand(4, -1, -1))
    # Gradient methods see exactly the planted pixels; Grad-CAM's conv halo leaks a little around them.
    assert (share > (0.6 if method == "gradcam" else 0.999)).all(), share
    for scores in cell_scores(sal, GRID):
        assert top_cells(scores, 1) == [PLANTED]


@pytest.mark.parametrize("method", METHODS)
def test_attribution_restores_every_module_mode(method, resnet18):
    resnet18.train()
    resnet18.layer1[0].bn1.eval()  # a frozen BN must stay frozen
    before = [m.training for m in resnet18.modules()]
    keys = list(resnet18.state_dict())
    attribute(resnet18, torch.rand(1, 3, 32, 32), target=0, method=method, ig_steps=2)
    assert [m.training for m in resnet18.modules()] == before
    assert list(resnet18.state_dict()) == keys  # the original's structure is untouched


@pytest.mark.filterwarnings("ignore::UserWarning")  # captum's own notices when called directly
@pytest.mark.parametrize(
    "arch, channels, side",
    [("resnet18", 3, 64), ("resnet18", 1, 28), ("resnet50", 3, 32)],
)
def test_deeplift_on_project_models_is_complete(arch, channels, side):
    """DeepLIFT's summation-to-delta: attributions add up to f(x) - f(baseline) for the target logit."""
    from captum.attr import DeepLift

    torch.manual_seed(0)
    model = build_model(arch, 5, channels, side).eval()
    images = torch.rand(2, channels, side, side)
    signed = DeepLift(deeplift_ready(model, images[:1])).attribute(images, target=2, baselines=0.0)
    with torch.no_grad():
        delta = model(images)[:, 2] - model(torch.zeros_like(images))[:, 2]
    torch.testing.assert_close(signed.sum(dim=(1, 2, 3)), delta, rtol=1e-3, atol=1e-4)
    maps = attribute(model, images, target=2)
    torch.testing.assert_close(maps, signed.detach().abs().sum(dim=1))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_deeplift_on_a_model_without_reuse_matches_plain_captum():
    """SmallCNN uses each activation once: the twin must change nothing. (Its max-pools break exact
    completeness: captum's max-pool rule is an approximation, so it is not checked here.)"""
    from captum.attr import DeepLift

    torch.manual_seed(0)
    model = build_model("small-cnn", 5, 1, 28).eval()
    images = torch.rand(3, 1, 28, 28)
    plain = DeepLift(model).attribute(images, target=1).detach().abs().sum(dim=1)
    torch.testing.assert_close(attribute(model, images, target=1), plain)


def test_deeplift_twin_is_cached_and_follows_training(resnet18):
    images = torch.rand(2, 3, 32, 32)
    attribute(resnet18, images, target=1)
    twin = deeplift_ready(resnet18, images[:1])
    optimizer = torch.optim.SGD(resnet18.parameters(), lr=0.5)
    resnet18.train()
    nn.functional.cross_entropy(resnet18(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    after = attribute(resnet18, images, target=1)
    assert deeplift_ready(resnet18, images[:1]) is twin
    fresh = copy.deepcopy(resnet18)  # a new object gets a new twin built from the trained weights
    torch.testing.assert_close(after, attribute(fresh, images, target=1))
    resnet18.fc = nn.Linear(512, 5)  # swapping a module rebuilds the twin
    assert deeplift_ready(resnet18, images[:1]) is not twin


class TwoBlocks(nn.Module):
    """Two conv blocks that share one in-place ReLU and one max-pool, or own theirs (``shared=False``)."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act1, self.pool1 = nn.ReLU(inplace=shared), nn.MaxPool2d(2)
        self.act2, self.pool2 = (self.act1, self.pool1) if shared else (nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * 7 * 7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        return self.fc(self.pool2(self.act2(self.conv2(x))).flatten(1))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_deeplift_on_reused_inplace_modules_equals_the_model_written_without_reuse():
    from captum.attr import DeepLift

    torch.manual_seed(1)
    shared, separate = TwoBlocks(shared=True).eval(), TwoBlocks(shared=False).eval()
    separate.load_state_dict(shared.state_dict())
    images, target = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    expected = DeepLift(separate).attribute(images, target=target).detach().abs().sum(dim=1)
    torch.testing.assert_close(attribute(shared, images, target, batch_size=2), expected)


def test_deeplift_baseline_equal_to_the_input_attributes_nothing():
    torch.manual_seed(0)
    images = torch.rand(3, 3, SIDE, SIDE)
    maps = attribute(PlantedNet(), images, target=0, baselines=images.clone(), batch_size=2)
    assert maps.abs().max() < 1e-6


def test_gradcam_on_resnet_is_upsampled_to_the_input(resnet18):
    maps = attribute(resnet18, torch.rand(3, 3, 64, 48), target=[0, 1, 2], method="gradcam")
    assert maps.shape == (3, 64, 48) and (maps >= 0).all()


def test_batch_size_and_per_image_targets_do_not_change_the_maps():
    torch.manual_seed(0)
    model, images, target = PlantedNet(), torch.rand(5, 3, SIDE, SIDE), [0, 1, 2, 1, 0]
    one = attribute(model, images, target, method="saliency", batch_size=1)
    torch.testing.assert_close(one, attribute(model, images, target, method="saliency", batch_size=4))
    assert not torch.allclose(one[0], attribute(model, images[:1], 2, method="saliency")[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "lime"}, "deeplift, integrated_gradients, saliency, gradcam"),
        ({"target": [0, 1]}, "one per image"),
        ({"baselines": torch.zeros(2, 3)}, "baselines"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    args = {"target": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        attribute(PlantedNet(), torch.rand(3, 3, SIDE, SIDE), **args)


def test_cell_scores_average_each_cell():
    sal = torch.zeros(2, SIDE, SIDE)
    sal[1, :8, 24:] = 2.0
    scores = cell_scores(sal, GRID)
    assert scores.shape == (2, 4, 4) and scores[0].sum() == 0
    assert scores[1, 0, 3] == 2.0 and scores[1].sum() == 2.0


@pytest.mark.parametrize(
    "k, expected",
    [(0, []), (1, [(1, 1)]), (3, [(1, 1), (0, 1), (1, 0)]), (9, [(1, 1), (0, 1), (1, 0), (0, 0)])],
)
def test_top_cells_highest_first_ties_in_row_major_order(k, expected):
    assert top_cells(np.array([[0.1, 0.5], [0.5, 0.9]]), k) == expected


@pytest.mark.parametrize(
    "sal, mask, expected",
    [
        (np.ones((1, 2, 2)), np.array([[[True, False], [False, False]]]), 0.25),
        (np.zeros((1, 2, 2)), np.ones((1, 2, 2), bool), 0.0),
        (np.array([[[3.0, 1.0], [0.0, 0.0]]]), np.array([[[True, False], [True, True]]]), 0.75),
    ],
)
def test_irrelevant_share(sal, mask, expected):
    assert irrelevant_share(sal, mask).tolist() == pytest.approx([expected])


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
