"""The SVBRDF nets (Luo et al. 2024): a U-Net initializer with a global-feature track (Deschaintre et al. 2018) and a
recurrent update net of three convolutions interleaved with ConvGRUs, fed the maps and the energy gradient."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from feedback_solver.feedback import KINDS, width
from feedback_solver.update import ConvGRUCell, pixel_coordinates
from tasks.svbrdf import render
from tasks.svbrdf.layout import CHANNELS, MIN_ROUGHNESS, NORMAL, ROUGHNESS


def channels_last(t: Tensor) -> Tensor:
    """Activations in channels-last order, as the weights (`to_channels_last`): the memory order oneDNN's CPU
    convolutions prefer; same values."""
    return t.contiguous(memory_format=torch.channels_last)


def to_channels_last(net: nn.Module) -> nn.Module:
    return net.to(memory_format=torch.channels_last)


def block(a: int, b: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv, group norm, leaky ReLU: the unit every U-Net level is made of."""
    return nn.Sequential(nn.Conv2d(a, b, 3, stride, 1), nn.GroupNorm(min(8, b // 4), b), nn.LeakyReLU(0.2))


def to_maps(raw: Tensor) -> Tensor:
    """Unbounded net outputs -> maps inside their ranges (sigmoid for albedos and roughness, tanh for normals)."""
    albedo_rough = torch.sigmoid(raw[:, :NORMAL.start])
    rough = MIN_ROUGHNESS + (1 - MIN_ROUGHNESS) * albedo_rough[:, ROUGHNESS]
    return torch.cat([albedo_rough[:, :ROUGHNESS.start], rough, torch.tanh(raw[:, NORMAL])], 1)


class GlobalTrack(nn.Module):
    """Mean-pooled features of a level -> a per-channel bias of the next level (Deschaintre et al.'s global track),
    so a pixel's estimate can use what the whole photo says about light falloff and the material's overall tone."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_ch, out_ch), nn.SELU())

    def forward(self, feat: Tensor) -> Tensor:
        return self.fc(feat.mean((2, 3)))[..., None, None]


class UNetInitializer(nn.Module):
    """Photo (3 ch, gamma) + pixel coordinates -> maps R_0; the coordinates tell it where the flash highlight is."""

    def __init__(self, channels: list[int]):
        super().__init__()
        chans = [5] + list(channels)
        self.down = nn.ModuleList(
            nn.Sequential(block(a, b, 2), block(b, b)) for a, b in zip(chans[:-1], chans[1:]))
        nxt = chans[2:] + chans[-1:]  # level k's summary biases level k + 1 (the last, the bottleneck itself)
        self.glob = nn.ModuleList(GlobalTrack(b, c) for b, c in zip(chans[1:], nxt))
        ups = list(reversed(chans[1:]))
        self.up = nn.ModuleList(block(a + b, b) for a, b in zip(ups[:-1], ups[1:]))
        self.head = nn.Sequential(block(ups[-1] + 5, 32), nn.Conv2d(32, 9, 3, 1, 1))

    def forward(self, y: Tensor, ctx: dict[str, Any], x0: Tensor) -> Tensor:
        y = y[:, :3]  # with several photos, the first: the flash photo
        if ctx.get("exposure") is not None:  # the photo as at the nominal exposure (capture.estimate_exposure)
            y = render.to_photo(y.pow(render.GAMMA) / ctx["exposure"].to(y).view(-1, 1, 1, 1))
        inp = channels_last(torch.cat([y * 2 - 1, pixel_coordinates(y)], 1))
        skips, h = [inp], inp
        g = None
        for down, glob in zip(self.down, self.glob):
            h = down(h)
            h = h if g is None else h + g  # the previous level's global summary biases this level
            g = glob(h)
            skips.append(h)
        h = h + g
        for up, skip in zip(self.up, reversed(skips[1:-1])):
            h = up(torch.cat([F.interpolate(h, size=skip.shape[2:], mode="bilinear", align_corners=False), skip], 1))
        h = F.interpolate(h, size=inp.shape[2:], mode="bilinear", align_corners=False)
        return to_maps(self.head(torch.cat([h, inp], 1)))


def compress(g: Tensor, scale: float) -> Tensor:
    """Signed log of the scaled gradient: its magnitude spans decades between highlights and dark texels."""
    return torch.sign(g) * torch.log1p(g.abs() * scale)


class MapUpdate(nn.Module):
    """conv 5x5 -> ConvGRU -> conv 3x3 -> ConvGRU -> conv 3x3 (tanh, 9 ch), per Luo et al.; `stride` 2 runs the first
    four at 1/stride resolution (CPU) and the last at full resolution on the upsampled features plus the inputs.

    forward(fb, h) -> (dx, h): fb holds "x" (R_t) and, unless ablated, "gradient" (dE/dR_t) or "gradients" (one
    dE_k/dR_t per input photo k, Luo et al.'s multi-image model); h the two GRU states.
    """

    def __init__(self, inputs: list[str], hidden: int = 64, stride: int = 2, step: float = 0.5,
                 grad_scale: float = 10.0, parts: int = 1):
        super().__init__()
        self.inputs = [k for k in inputs if KINDS[k].like != "observation"]  # the maps and their gradients
        in_ch = width(self.inputs, {"state": CHANNELS, "tangent": CHANNELS}, parts)
        self.stride, self.step, self.grad_scale = stride, step, grad_scale
        self.conv1 = nn.Conv2d(in_ch, hidden, 5, stride, 2)
        self.gru1 = ConvGRUCell(hidden, hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, 1, 1)
        self.gru2 = ConvGRUCell(hidden, hidden)
        self.conv3 = nn.Conv2d(hidden + (in_ch if stride > 1 else 0), 9, 3, 1, 1)
        with torch.no_grad():  # an untrained update is a small step
            self.conv3.weight.mul_(0.1)
            self.conv3.bias.zero_()

    def features(self, fb: dict[str, Tensor]) -> Tensor:
        parts = []
        for k in self.inputs:
            v = fb[k].flatten(1, 2) if KINDS[k].per_part else fb[k]  # (B, N, 9, H, W): one gradient per photo
            # dE/dR of a per-pixel mean energy shrinks with the pixel count: undo that, so any size reads the same
            parts.append(v if KINDS[k].like == "state" else compress(v * v.shape[2] * v.shape[3], self.grad_scale))
        return torch.cat(parts, 1)

    def forward(self, fb: dict[str, Tensor], h: Any = None) -> tuple[Tensor, list[Tensor]]:
        inp = channels_last(self.features(fb))
        h1, h2 = h if h is not None else (None, None)
        a = F.leaky_relu(self.conv1(inp), 0.2)
        h1 = self.gru1(a, h1)
        b = F.leaky_relu(self.conv2(h1), 0.2)
        h2 = self.gru2(b, h2)
        c = h2
        if self.stride > 1:
            c = torch.cat([F.interpolate(h2, size=inp.shape[2:], mode="bilinear", align_corners=False), inp], 1)
        return self.step * torch.tanh(self.conv3(c)), [h1, h2]
