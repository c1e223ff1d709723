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



#: a flash photo of a flat sample is brighter in its centre than at its rim (the flash's falloff, and its highlight),
#: and its blurred brightest spot lies near the centre. On 64 val materials at 128 px (`python -m tasks.svbrdf.photos`)
#: the ratio's minimum is 0.95 (5th percentile 1.22) and the offset's maximum 0.34 (95th percentile 0.23): the
#: thresholds flag none of them
HIGHLIGHT_CONTRAST, HIGHLIGHT_OFFSET = 0.9, 0.35


def highlight(y: Tensor) -> tuple[float, float]:
    """One photo (1, 3, H, W): the mean linear luminance within 0.2 of the width from its centre over that beyond
    0.4, and the distance from the centre of its brightest spot (blurred over a quarter of the width), in widths."""
    lum = y[:, :3].clamp(0, 1).pow(render.GAMMA).mean(1, keepdim=True)
    h, w = lum.shape[-2:]
    rows = (torch.arange(h, dtype=lum.dtype) + 0.5) / h - 0.5
    cols = (torch.arange(w, dtype=lum.dtype) + 0.5) / w - 0.5
    r = (rows[:, None] ** 2 + cols[None, :] ** 2).sqrt()
    inner, outer = lum[0, 0][r < 0.2].mean(), lum[0, 0][r > 0.4].mean()
    k = max(w // 4, 1)
    blur = torch.nn.functional.avg_pool2d(lum, k, stride=max(k // 4, 1))
    bh, bw = blur.shape[-2:]
    peak = int(blur.flatten().argmax())
    centre_r = (peak // bw + 0.5) / bh - 0.5
    centre_c = (peak % bw + 0.5) / bw - 0.5
    offset = (centre_r**2 + centre_c**2) ** 0.5 * (h - k) / h  # blurred cells span the centres' range
    return float(inner / outer.clamp_min(1e-6)), float(offset)


def flash_warnings(y: Tensor, path: Path | str) -> list[str]:
    """What makes a photo look unlike a flash photo of a flat sample: no highlight, or one far off centre."""
    contrast, offset = highlight(y)
    out = []
    if contrast < HIGHLIGHT_CONTRAST:
        out.append(f"photo {path}: no flash highlight (its centre is {contrast:.2f}x as bright as its rim; a flash "
                   f"photo of a flat sample has >= {HIGHLIGHT_CONTRAST}x): the maps assume a flash over the centre")
    elif offset > HIGHLIGHT_OFFSET:
        out.append(f"photo {path}: the highlight is {offset:.0%} of the width from the centre (expected within "
                   f"{HIGHLIGHT_OFFSET:.0%}): hold the phone parallel to the sample with the flash over its centre")
    return out


def validation_margins(n: int = 64, size: int = 128) -> str:
    """The highlight measures over validation photos, as the thresholds' comment quotes them."""
    from feedback_solver.config import load_config
    from tasks.svbrdf.task import SVBRDFTask

    batch = SVBRDFTask(load_config(SVBRDFTask, [f"task.size={size}", f"task.crop={size}"])).sample(n, "val", 0)
    contrast, offset = torch.tensor([highlight(batch.y[i:i + 1]) for i in range(n)]).T
    return (f"contrast min {contrast.min():.2f} (5th percentile {contrast.quantile(0.05):.2f}); offset max "
            f"{offset.max():.2f} (95th percentile {offset.quantile(0.95):.2f})")


if __name__ == "__main__":
    print(validation_margins())
