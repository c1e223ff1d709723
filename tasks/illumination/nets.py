"""Illumination networks: a small U-Net-style encoder-decoder over stacked RGB images (Ma et al. 2020, Sec. 4.2).

The light update is read from the bottleneck (with the current light appended); the decoder, fed by skip
connections, predicts the object's depth as an auxiliary task that shapes the encoder's features during training
and is skipped at inference.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver.update import MLP, ImageUpdate, pixel_coordinates


def block(a: int, b: int, stride: int) -> nn.Sequential:
    """Two 3x3 convs with group norm and leaky ReLU (without the norm, point-light training sat on a plateau and
    its ReLUs died)."""
    return nn.Sequential(nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.GroupNorm(4, b), nn.LeakyReLU(0.1),
                         nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(4, b), nn.LeakyReLU(0.1))


class EncoderDecoder(nn.Module):
    """Images (B x C x H x W) and `extra` features (the light, its energy gradient) -> a 3-vector (light update), plus
    `aux["depth"]` (B x 1 x H' x W') while training."""

    def __init__(self, channels: int, extra: int, size: int, model: DictConfig, traced: bool = False):
        super().__init__()
        self.traced = traced
        self._inference: dict[tuple, Any] = {}
        levels = [int(c) for c in model.channels]
        self.shrink, self.coords = int(model.downsample), bool(model.coords)
        self.depth_head = bool(model.depth_head)
        dims = [channels + 2 * self.coords] + levels
        self.down = nn.ModuleList(block(a, b, 2) for a, b in zip(dims[:-1], dims[1:]))
        side = size // self.shrink // 2 ** len(levels)
        self.extra = extra
        self.head = MLP(levels[-1] * side * side + extra, int(model.hidden), 3, int(model.layers))
        if self.depth_head:  # up path: upsample, concatenate the skip of the same size, two 3x3 convs
            ups = list(zip(levels[::-1][:-1], levels[::-1][1:]))
            self.up = nn.ModuleList(block(a + b, b, 1) for a, b in ups)
            self.depth = nn.Conv2d(levels[0], 1, 3, padding=1)
        self.aux: dict[str, Tensor] = {}

    def forward(self, images: Tensor, vector: Tensor | None = None) -> Tensor:
        if self.traced and not self.training and not torch.is_grad_enabled():
            self.aux = {}
            return self.inference(images, vector)(*([images] if vector is None else [images, vector]))
        return self.eager(images, vector)

    def inference(self, images: Tensor, vector: Tensor | None) -> Any:
        """This net traced and optimised for inference (torch.jit.optimize_for_inference: prepacked MKL-DNN convs,
        1.6x faster on 32 px inputs on the CPU, the same outputs to 1e-6), per input shape and weights' version,
        so that a trained step or loaded weights are never served stale."""
        key = (tuple(images.shape[1:]), None if vector is None else tuple(vector.shape[1:]),
               sum(p._version for p in self.parameters()), images.dtype, images.device)
        if key not in self._inference:
            args = (images,) if vector is None else (images, vector)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on shape checks that hold for this shape
                traced = torch.jit.trace(Eager(self), args, check_trace=False)
                self._inference = {key: torch.jit.optimize_for_inference(traced.eval())}
        return self._inference[key]

    def eager(self, images: Tensor, vector: Tensor | None = None) -> Tensor:
        if self.shrink > 1:
            images = area_average(images, self.shrink)
        if self.coords:
            images = torch.cat([images, pixel_coordinates(images)], 1)
        skips = []
        f = images
        for down in self.down:
            f = down(f)
            skips.append(f)
        self.aux = self.decode(skips) if self.training and self.depth_head else {}
        code = f.flatten(1)
        if self.extra:
            code = torch.cat([code, vector], 1)
        return self.head(code)

    def decode(self, skips: list[Tensor]) -> dict[str, Tensor]:
        """Depth at half the encoder's input size (the first level's resolution)."""
        f = skips[-1]
        for up, skip in zip(self.up, skips[::-1][1:]):
            f = nn.functional.interpolate(f, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            f = up(torch.cat([f, skip], 1))
        return {"depth": self.depth(f)}


class Eager(nn.Module):
    """The net's eager forward, for the tracer (which must not meet the traced path)."""

    def __init__(self, net: EncoderDecoder):
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, vector: Tensor | None = None) -> Tensor:
        return self.net.eager(images, vector)


def area_average(images: Tensor, k: int) -> Tensor:
    """avg_pool2d(images, k) as sums of strided views: the same means (to float rounding) in 40 % of its CPU time."""
    if images.shape[-1] % k or images.shape[-2] % k:
        return nn.functional.avg_pool2d(images, k)
    rows = sum(images[..., i::k, :] for i in range(k))
    return sum(rows[..., j::k] for j in range(k)) * (1.0 / (k * k))


def light_update(inputs: list[str], size: int, model: DictConfig, traced: bool = False) -> ImageUpdate:
    """Residual feedback (y, y_t, y - y_t, grey images stacked as channels) and the current light -> the light's
    update; `traced`: inference through the traced, optimised net."""
    make = lambda images, extra: EncoderDecoder(images, extra, size, model, traced)  # noqa: E731
    return ImageUpdate(inputs, make, {"state": 3, "tangent": 3}, {"gradient": model.get("gradient_scale", 1.0)})


class LightInitializer(nn.Module):
    """Regression from the image alone: one step away from the constant start light."""

    def __init__(self, size: int, model: DictConfig, space):
        super().__init__()
        self.space = space
        self.net = EncoderDecoder(1, 0, size, model)

    @property
    def aux(self) -> dict[str, Tensor]:
        return self.net.aux

    def forward(self, y: Tensor, ctx: dict[str, Any], x0: Tensor) -> Tensor:
        return self.space.retract(x0, self.net(y))
