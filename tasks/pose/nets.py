"""Pose networks: a LeNet-like CNN over stacked silhouettes, with the current pose appended before the MLP head."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver.update import MLP, ImageUpdate, conv_encoder, pixel_coordinates


class PoseCNN(nn.Module):
    """Images (B x C x H x W) -> a 6-vector (rotation vector, translation), optionally seeing `extra` features (the
    pose x: 7)."""

    def __init__(self, channels: int, extra: int, size: int, model: DictConfig):
        super().__init__()
        levels = tuple(int(c) for c in model.channels)
        self.coords = bool(model.coords)
        self.shrink = int(model.downsample)
        # channels-last weights: oneDNN's convolutions run about 1.5x faster on the CPU, same inputs
        self.encoder = conv_encoder(channels + 2 * self.coords, levels, int(model.kernel)).to(
            memory_format=torch.channels_last)
        side = size // self.shrink // 2 ** len(levels)
        self.extra = extra
        self.head = MLP(levels[-1] * side * side + extra, int(model.hidden), 6, int(model.layers))

    def forward(self, images: Tensor, x: Tensor | None = None) -> Tensor:
        if self.shrink > 1:  # area averaging keeps sub-pixel edge positions as grey levels
            images = nn.functional.avg_pool2d(images, self.shrink)
        if self.coords:
            images = torch.cat([images, pixel_coordinates(images)], 1)
        f = self.encoder(images).flatten(1)
        if self.extra:
            f = torch.cat([f, x], 1)
        return self.head(f)


def pose_update(inputs: list[str], size: int, model: DictConfig) -> ImageUpdate:
    """Residual feedback (y, y_t, y - y_t as image channels) -> tangent update of the pose."""
    return ImageUpdate(inputs, lambda images, extra: PoseCNN(images, extra, size, model), {"state": 7, "tangent": 6})


class PoseInitializer(nn.Module):
    """Regression from the silhouette alone: a tangent step away from the canonical pose."""

    def __init__(self, size: int, model: DictConfig, space):
        super().__init__()
        self.space = space
        self.net = PoseCNN(1, 0, size, model)

    def forward(self, y: Tensor, ctx: dict[str, Any], x0: Tensor) -> Tensor:
        return self.space.retract(x0, self.net(y))
