"""Models: a small CNN for 28 x 28 digits and torchvision ResNets for larger RGB images.

The model knows nothing about training. No weights are fetched from a hub: a ResNet starts from random
initialisation or from a local state-dict file the user provides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from trainer.core.checks import check_choice

MODELS = ("small-cnn", "resnet18", "resnet50")
SMALL_STEM_MAX = 32  # ResNets on images up to this side get a 3 x 3 stride-1 stem and no max-pool
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The forward passes' precision, one setting for training, benchmarks and the backend: ``fp32`` runs as
    is; ``bf16`` runs under ``torch.autocast`` (matmuls and convolutions in bfloat16, weights, gradients and
    the optimizer in float32, so no loss scaling is needed)."""
    dtype = PRECISIONS[check_choice(precision, "precision", PRECISIONS)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then give each back the mode it had (a frozen BN stays frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class SmallCNN(nn.Module):
    """Two conv blocks and a two-layer head. Input (N, C, H, W), output (N, K) logits.

    Every activation is its own module (captum's DeepLIFT refuses a module used twice).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 49, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 224,
    *,
    weights_path: str | Path | None = None,
) -> nn.Module:
    """A fresh model by name; ``weights_path`` loads a local state dict (the classifier head may differ)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    check_choice(name, "model", MODELS)
    if name == "small-cnn":
        model: nn.Module = SmallCNN(num_classes, in_channels)
    else:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if image_size <= SMALL_STEM_MAX:
            # At MNIST sizes the stem's stride-2 conv and max-pool leave almost no spatial resolution. Above
            # 32 px the standard stem stays: without its 4x downsampling a 56 px image costs what 224 px does.
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
    if weights_path is not None:
        load_pretrained(model, weights_path)
    return model


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict, keeping the model's own tensors where shapes differ (e.g. the head)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"weights file {path} shares no tensor with this model")
    model.load_state_dict(usable, strict=False)
