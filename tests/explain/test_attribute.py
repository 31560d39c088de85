"""Saliency room: captum behind one call, DeepLIFT on ResNets, cells, shares and the overlay picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from label_config.grid import Grid
from trainer.explain.attribute import (
    METHODS,
    attribute,
    cell_scores,
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


def test_gradcam_on_resnet_is_upsampled_to_the_input(resnet18):
    maps = attribute(resnet18, torch.rand(3, 3, 64, 48), target=[0, 1, 2], method="gradcam")
    assert maps.shape == (3, 64, 48) and (maps >= 0).all()


def test_batch_size_and_per_image_targets_do_not_change_the_maps():
    torch.manual_seed(0)
    model, images, target = PlantedNet(), torch.rand(5, 3, SIDE, SIDE), [0, 1, 2, 1, 0]
    one = attribute(model, images, target, method="saliency", batch_size=1)
    done: list[int] = []  # the progress callable hears each batch once it is explained
    torch.testing.assert_close(one, attribute(model, images, target, method="saliency", batch_size=4,
                                              progress=done.append))  # fmt: skip
    assert done == [4, 1]
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
