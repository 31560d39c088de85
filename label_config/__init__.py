"""The labelling config room: the grid, the control names and the Label Studio XML (pure: no torch, no HTTP)."""

from label_config.config import (
    build_config,
    check_classes,
    display_px_for,
    display_size,
    suggestion_result,
)
from label_config.controls import ConfigControls, Control, check_config
from label_config.grid import Grid

__all__ = [
    "ConfigControls",
    "Control",
    "Grid",
    "build_config",
    "check_classes",
    "check_config",
    "display_px_for",
    "display_size",
    "suggestion_result",
]
