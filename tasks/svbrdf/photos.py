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


def write_maps(x: Tensor, y: Tensor, out: Path, relight: Callable[[Tensor], Tensor],
               photo: Callable[[Tensor], Tensor] = render.flash_photo) -> list[Path]:
    """diffuse.png, specular.png (gamma, as stored), roughness.png, normal.png ((n + 1) / 2), the re-render under the
    input's flash (`photo`, at the photo's estimated exposure) beside the photo, and a grid of re-renders under the
    evaluation's new lights."""
    out.mkdir(parents=True, exist_ok=True)
    m = x[0:1]
    n = render.decode(m)[3][0]
    files = [save_rgb(m[0, DIFFUSE], out / "diffuse.png"), save_rgb(m[0, SPECULAR], out / "specular.png"),
             save_rgb(m[0, ROUGHNESS].expand(3, -1, -1), out / "roughness.png"),
             save_rgb((n + 1) / 2, out / "normal.png")]
    flash = photo(m)[0]
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


#: a flash photo of a flat sample falls off from its centre as the flash's cos^3 (and its highlight adds to that),
#: and its blurred brightest spot lies near the centre. `python benchmarks/svbrdf_flash_check.py` measures both on
#: 64 val materials at 128 px and on the same materials lit by 4 lamps around them (no flash): the thresholds flag 1
#: of the 64 flash photos (1.6 %: a texture darker in the middle) and 59 of the 64 lamp-lit ones (92 %)
FALLOFF_SLOPE, HIGHLIGHT_OFFSET = 0.5, 0.35


def highlight(y: Tensor) -> tuple[float, float]:
    """One photo (1, 3, H, W): the slope of its log linear luminance against the flash's log cos^3 falloff (1 for a
    matte sample under the flash, more with a highlight, about 0 without a flash), and the distance from the centre
    of its brightest spot (blurred over a quarter of the width), in widths."""
    lum = y[:, :3].clamp(0, 1).pow(render.GAMMA).mean(1, keepdim=True)
    h, w = lum.shape[-2:]
    p = render.plane(h, w, dtype=lum.dtype)
    falloff = (1.5 * (1 + (p[0] ** 2 + p[1] ** 2) / render.CAMERA_HEIGHT**2).log()).neg().flatten()  # log cos^3
    a, l = falloff - falloff.mean(), lum.clamp_min(1e-4).log().flatten()  # noqa: E741
    slope = float(((l - l.mean()) * a).sum() / (a * a).sum())
    k = max(w // 4, 1)
    blur = torch.nn.functional.avg_pool2d(lum, k, stride=max(k // 4, 1))
    bh, bw = blur.shape[-2:]
    peak = int(blur.flatten().argmax())
    row, col = (peak // bw + 0.5) / bh - 0.5, (peak % bw + 0.5) / bw - 0.5
    return slope, float((row * row + col * col) ** 0.5 * (h - k) / h)  # blurred cells span the centres' range


def flash_warnings(y: Tensor, path: Path | str) -> list[str]:
    """What makes a photo look unlike a flash photo of a flat sample: no flash falloff, or a highlight off centre."""
    slope, offset = highlight(y)
    out = []
    if slope < FALLOFF_SLOPE:
        out.append(f"photo {path} does not look like a flash photo: it does not darken away from its centre as a "
                   f"flash's light does (slope {slope:.2f}, a flash photo's is about 1 or more); the maps assume "
                   "the phone's flash over the sample's centre")
    elif offset > HIGHLIGHT_OFFSET:
        out.append(f"photo {path}: the highlight is {offset:.0%} of the width from the centre (expected within "
                   f"{HIGHLIGHT_OFFSET:.0%}): hold the phone parallel to the sample with the flash over its centre")
    return out
