"""A user's side of the SVBRDF task: real test maps, reading a flash photo, writing the maps and re-renders."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from feedback_solver.images import opaque_rgb, open_image
from tasks.svbrdf import materials, options, render
from tasks.svbrdf.layout import DIFFUSE, ROUGHNESS, SPECULAR

MIN_SIDE = options.MIN_SIDE
SATURATED = 0.98


def real_maps(size: int, n: int, seed: int, folder: Path | None, crops: int) -> tuple[Tensor, list[str]]:
    """The real test maps: gk/fantasy (or a user's folder of map sets), `crops` squares per material, first n."""
    if folder is None:
        x, names = materials.real_set(size, crops, seed)
    else:
        x, names = materials.folder_set(Path(folder), size, crops, seed)
    return x[:n], names[:n]


def read_photo(path: str | Path, size: int) -> Tensor:
    """A flash photo as (1, 3, size, size) in [0, 1]: its centre square, area-resized to `size` (stated on stdout)."""
    path = Path(path)
    img = open_image(path, "photo")
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        raise ValueError(f"photo {path} is a {img.mode} (16-bit or float) image; give an 8-bit sRGB RGB photo")
    if img.mode in ("L", "LA", "La", "1"):
        raise ValueError(f"photo {path} is grayscale ({img.mode}); the solver needs an RGB flash photo")
    img = opaque_rgb(img, path, "photo")
    w, h = img.size
    side = min(w, h)
    if side < MIN_SIDE:
        raise ValueError(f"photo {path} is {w}x{h}; the solver needs at least {MIN_SIDE}x{MIN_SIDE} pixels")
    left, top = (w - side) // 2, (h - side) // 2
    if (w, h) != (side, side) or side != size:
        print(f"photo {w}x{h}: using its centre {side}x{side} square, resized to {size}x{size}")
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BOX)
    y = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    check_exposure(y, path)
    return y


def check_exposure(y: Tensor, path: Path) -> None:
    """An all-white (saturated) photo carries no shading to invert; a mostly saturated one is only warned about."""
    sat = (y.min(1).values >= SATURATED).float().mean().item()
    if sat > 0.95:
        raise ValueError(f"photo {path} is saturated ({sat:.0%} of pixels white); retake it with less exposure")
    if sat > 0.2:
        warnings.warn(f"photo {path}: {sat:.0%} of pixels are saturated; maps there are guesses", stacklevel=2)
    if y.max() <= 0.02:
        raise ValueError(f"photo {path} is black: the flash does not light anything")


def save_rgb(img: Tensor, path: Path) -> Path:
    """(3, H, W) in [0, 1] -> 8-bit PNG."""
    arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def write_maps(x: Tensor, y: Tensor, out: Path, relight: Callable[[Tensor], Tensor]) -> list[Path]:
    """diffuse.png, specular.png (gamma, as stored), roughness.png, normal.png ((n + 1) / 2), the re-render under the
    input's flash beside the photo, and a grid of re-renders under the evaluation's new lights."""
    out.mkdir(parents=True, exist_ok=True)
    m = x[0:1]
    n = render.decode(m)[3][0]
    files = [save_rgb(m[0, DIFFUSE], out / "diffuse.png"), save_rgb(m[0, SPECULAR], out / "specular.png"),
             save_rgb(m[0, ROUGHNESS].expand(3, -1, -1), out / "roughness.png"),
             save_rgb((n + 1) / 2, out / "normal.png")]
    flash = render.flash_photo(m)[0]
    files.append(save_rgb(torch.cat([y[0], flash], 2), out / "input_vs_render.png"))
    files.append(save_rgb(render_grid(relight(m)[0]), out / "relit.png"))
    err = float((flash - y[0]).pow(2).mean().sqrt())
    print(f"maps written to {out}; re-render RMSE against the photo: {err:.4f}")
    return files


def render_grid(images: Tensor, cols: int = 5) -> Tensor:
    """(K, 3, H, W) -> one (3, rows * H, cols * W) image."""
    k, c, h, w = images.shape
    rows = -(-k // cols)
    pad = images.new_zeros(rows * cols - k, c, h, w)
    grid = torch.cat([images, pad]).view(rows, cols, c, h, w)
    return grid.permute(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)

