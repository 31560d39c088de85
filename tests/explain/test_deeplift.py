"""DeepLIFT: the twin for models that reuse activations, and the fast zero-baseline path, against captum."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainer.core.models import build_model
from trainer.explain.attribute import attribute
from trainer.explain.deeplift import NONLINEAR, DeepLiftTwin

from .test_attribute import SIDE, PlantedNet


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
    signed = DeepLift(DeepLiftTwin(model, images[:1]).module).attribute(images, target=2, baselines=0.0)
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


def test_deeplift_twin_shares_the_models_tensors_and_follows_training():
    torch.manual_seed(0)
    model = build_model("resnet18", 5, 3, 32)
    images = torch.rand(2, 3, 32, 32)
    twin = DeepLiftTwin(model.eval(), images[:1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    model.eval()
    target = torch.tensor([1, 1])
    before_training = twin.attribute(images, target).detach()  # the twin built before the step
    built_now = DeepLiftTwin(copy.deepcopy(model), images[:1]).attribute(images, target).detach()
    torch.testing.assert_close(before_training, built_now)  # the step reached the old twin too
    assert not twin.stale()
    model.fc = nn.Linear(512, 5)  # swapping a module makes the twin stale
    assert twin.stale()


def test_our_nonlinearities_are_captums():
    """captum keeps its table private; ours must name the same modules (a new one would be left shared)."""
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    assert set(NONLINEAR) == set(SUPPORTED_NON_LINEAR)


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


class _Times1(torch.nn.Module):
    """A linear no-op: keeps a ReLU and the MaxPool after it apart (see the test below)."""

    def forward(self, x):
        return x * 1.0


def _separated_small_cnn():
    model = build_model("small-cnn", 10, 1, 28)
    f = model.features
    model.features = torch.nn.Sequential(f[0], f[1], _Times1(), f[2], f[3], f[4], _Times1(), f[5], f[6])
    return model.eval(), torch.rand(3, 1, 28, 28)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "make",
    [
        lambda: (build_model("resnet18", 10, 3, 16).eval(), torch.rand(2, 3, 16, 16)),  # residuals, reused ReLUs
        _separated_small_cnn,  # ReLU and MaxPool2d
    ],
)
def test_fast_deeplift_equals_captum(make):
    torch.manual_seed(0)
    model, images = make()
    twin = DeepLiftTwin(model, images[:1])
    logits, fast = twin.zero_baseline(images)
    with torch.no_grad():
        assert torch.allclose(logits, model(images), atol=1e-5)  # one forward gives the prediction too
    reference = twin.attribute(images, logits.argmax(1)).detach().abs().sum(dim=1)  # captum's DeepLift
    assert float((fast - reference).abs().max() / reference.abs().max()) < 1e-5
    with torch.no_grad():  # an in-place update (as an optimizer step) must refresh the cached baseline pass
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    logits, fast = twin.zero_baseline(images)
    reference = twin.attribute(images, logits.argmax(1)).detach().abs().sum(dim=1)
    assert float((fast - reference).abs().max() / reference.abs().max()) < 1e-5


def test_fast_deeplift_does_not_depend_on_a_linear_no_op():
    """captum's hooks interact when a MaxPool2d directly follows a ReLU (its result changes when a x*1
    layer is put between them); the fast path gives the same map either way."""
    torch.manual_seed(0)
    plain = build_model("small-cnn", 10, 1, 28).eval()
    separated = build_model("small-cnn", 10, 1, 28).eval()
    separated.load_state_dict(plain.state_dict())
    f = separated.features
    separated.features = torch.nn.Sequential(f[0], f[1], _Times1(), f[2], f[3], f[4], _Times1(), f[5], f[6])
    images = torch.rand(2, 1, 28, 28)
    fast_plain = DeepLiftTwin(plain, images[:1]).zero_baseline(images)[1]
    assert torch.allclose(fast_plain, DeepLiftTwin(separated, images[:1]).zero_baseline(images)[1])


def test_fast_path_declines_a_model_it_has_no_rule_for():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 26 * 26, 3)).eval()
    assert DeepLiftTwin(model, torch.rand(1, 1, 28, 28)).zero_baseline(torch.rand(2, 1, 28, 28)) is None
