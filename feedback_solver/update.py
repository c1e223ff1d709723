"""Update-network building blocks and the Stages container (shared weights or one net per step)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from feedback_solver.feedback import shaped_like, width
from feedback_solver.settings import Mode


class MLP(nn.Sequential):
    """Fully connected net; the last layer starts small so an untrained update is a small step."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int = 2, last_scale: float = 0.1):
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers):
            mods += [nn.Linear(dim, hidden), nn.LeakyReLU(0.1)]
            dim = hidden
        last = nn.Linear(dim, out_dim)
        with torch.no_grad():
            last.weight.mul_(last_scale)
            last.bias.zero_()
        super().__init__(*mods, last)


class FlatUpdate(nn.Module):
    """An MLP on the feedback components stacked: the update net of a task whose x and y are vectors."""

    def __init__(self, inputs: list[str], sizes: dict[str, int], out_dim: int, hidden: int, layers: int = 2):
        super().__init__()
        self.inputs = list(inputs)
        self.mlp = MLP(width(self.inputs, sizes), hidden, out_dim, layers)

    def forward(self, fb: dict[str, Tensor], h: Any = None) -> tuple[Tensor, Any]:
        return self.mlp(torch.cat([fb[k] for k in self.inputs], 1)), h


class FlatInitializer(nn.Module):
    """Regression from a vector observation: x0' = x0 + MLP(y)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int = 2):
        super().__init__()
        self.mlp = MLP(in_dim, hidden, out_dim, layers, last_scale=1.0)

    def forward(self, y: Tensor, ctx: dict[str, Any], x0: Tensor) -> Tensor:
        return x0 + self.mlp(y)


class ImageUpdate(nn.Module):
    """The update of an image task: a net on the observation-shaped feedback stacked as channels, seeing the
    vector-shaped inputs (x, the gradient) appended after its encoder, each times its `scales` entry (a gradient of a
    per-pixel mean is small). `make(channels, vector)` builds the net for that many stacked observations and that
    many vector features (`sizes`: each shape's width, see feedback.width)."""

    def __init__(self, inputs: list[str], make: Callable[[int, int], nn.Module], sizes: dict[str, int],
                 scales: dict[str, float] | None = None):
        super().__init__()
        self.images = shaped_like(inputs, "observation")
        self.vectors = [k for k in inputs if k not in self.images]
        self.scales = {k: float(v) for k, v in (scales or {}).items() if k in self.vectors and float(v) != 1.0}
        self.net = make(len(self.images), width(self.vectors, sizes))

    @property
    def aux(self) -> dict[str, Tensor]:
        return getattr(self.net, "aux", {})

    def forward(self, fb: dict[str, Tensor], h: Any = None) -> tuple[Tensor, Any]:
        vectors = [fb[k].flatten(1) * self.scales.get(k, 1.0) for k in self.vectors]
        vector = torch.cat(vectors, 1) if vectors else None
        return self.net(torch.cat([fb[k] for k in self.images], 1), vector), h


class ConvGRUCell(nn.Module):
    """Convolutional GRU (Ballas et al. 2016): a recurrent state per pixel for shared-weight image updates."""

    def __init__(self, in_ch: int, hidden_ch: int, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.hidden_ch = hidden_ch
        self.gates = nn.Conv2d(in_ch + hidden_ch, 2 * hidden_ch, kernel, padding=pad)
        self.cand = nn.Conv2d(in_ch + hidden_ch, hidden_ch, kernel, padding=pad)

    def forward(self, x: Tensor, h: Tensor | None) -> Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_ch, *x.shape[2:])
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        c = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * c


def conv_encoder(in_ch: int, channels: tuple[int, ...] = (16, 32, 64), kernel: int = 5) -> nn.Sequential:
    """LeNet-like encoder for image feedback, sized for the CPU: a strided kernel x kernel conv, then a 3x3 conv,
    ReLU and 2x max-pool per further level (so the output side is the input's / 2 ** len(channels))."""
    mods: list[nn.Module] = [nn.Conv2d(in_ch, channels[0], kernel, stride=2, padding=kernel // 2), nn.ReLU()]
    for a, b in zip(channels[:-1], channels[1:]):
        mods += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*mods)


def pixel_coordinates(images: Tensor) -> Tensor:
    """Two channels of x and y in [-1, 1] (CoordConv): where a shape lies is what the translation update needs."""
    b, _, h, w = images.shape
    ys = torch.linspace(-1, 1, h, device=images.device, dtype=images.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=images.device, dtype=images.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([xs, ys], 1)


class Stages(nn.Module):
    """The update nets of the T steps: one shared net, or one per step (steps past T reuse the last)."""

    def __init__(self, make: Callable[[], nn.Module], steps: int, mode: Mode | str = Mode.stagewise):
        super().__init__()
        if mode not in list(Mode):  # a checkpoint's config holds the plain string
            raise ValueError(f"solver.mode must be one of {', '.join(Mode)}, got {mode!r}")
        self.mode = Mode(mode)
        self.nets = nn.ModuleList([make() for _ in range(1 if self.mode == Mode.shared else max(steps, 1))])

    def net(self, t: int) -> nn.Module:
        return self.nets[min(t, len(self.nets) - 1)]

    def forward(self, t: int, inputs: dict[str, Tensor], h: Any = None) -> tuple[Tensor, Any]:
        return self.net(t)(inputs, h)
