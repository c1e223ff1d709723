"""A phone's flash photo rather than our renderer's: the bench's capture conditions (`task.capture`), and the photo's
exposure, estimated per photo so that the solve does not assume the training flash.

Each condition degrades the synthetic photo of the true maps in one way, seeded per sample:

- `exposure_0.5`, `exposure_2`: the flash (or the exposure time) half or twice the nominal, before the sensor clips;
- `white_balance`: the red and blue channels scaled in linear light by gains in [0.85, 1.15];
- `noise`: shot and read noise in linear light, standard deviation sqrt(0.0004 L + 0.002^2) (about 2.5/255 at mid-grey);
- `jpeg75`: 8-bit and JPEG at quality 75 (Pillow);
- `flash_offset`: the flash 10-20 % of the sample's width away from the lens, in a random direction;
- `vignetting`: the cos^4 falloff of the camera's 45 deg field of view (the corners at 0.55).

The exposure is a gauge of one photo: a darker material under a brighter flash takes the same picture. The estimate
fixes it by the photo itself: its median linear luminance over the median of the training photos' (`REFERENCE`), so
that the same material photographed at any exposure gets the same maps, and the answer's renders at the estimated
exposure are the photo's. Render metrics are taken at the estimated exposure over the true one (`task.metrics`).
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from tasks.svbrdf import render

CONDITIONS = ("nominal", "exposure_0.5", "exposure_2", "white_balance", "noise", "jpeg75", "flash_offset",
              "vignetting")
#: the median over 512 training photos (64 px, seed 0) of each photo's median linear luminance; rerun with
#: `python -m tasks.svbrdf.capture` (a test checks it)
REFERENCE = 0.0630


def linear(y: Tensor) -> Tensor:
    """A photo's linear radiance (the inverse of render.to_photo below its clip)."""
    return y.clamp(0, 1).pow(render.GAMMA)


def estimate_exposure(y: Tensor) -> Tensor:
    """Per photo (B,): its median linear luminance over REFERENCE, the flash photo's first 3 channels."""
    lum = linear(y[:, :3]).mean(1).flatten(1)
    return lum.median(1).values.clamp_min(1e-6) / REFERENCE


def degrade(x: Tensor, condition: str, seed: int) -> tuple[Tensor, Tensor]:
    """The flash photo of maps x under `condition` and its true exposure per photo: ((B, 3, H, W), (B,))."""
    if condition not in CONDITIONS:
        raise ValueError(f"task.capture must be one of {', '.join(CONDITIONS)} (or empty), got {condition!r}")
    b = x.shape[0]
    g = torch.Generator().manual_seed(int(seed) + 104729)
    exposure = torch.full((b,), {"exposure_0.5": 0.5, "exposure_2": 2.0}.get(condition, 1.0))
    if condition == "flash_offset":
        radius = torch.empty(b).uniform_(0.2, 0.4, generator=g)  # 10-20 % of the sample's width (2 units)
        phi = torch.empty(b).uniform_(0, 2 * math.pi, generator=g)
        light = torch.stack([radius * phi.cos(), radius * phi.sin(), torch.full((b,), render.CAMERA_HEIGHT)], -1)
        rad = render.shade(x, light[:, None].to(x), render.camera_position(b, x.device, x.dtype))[:, 0]
    else:
        rad = render.flash_shade(x, render.FLASH_INTENSITY * exposure.to(x))
    if condition == "white_balance":
        gains = torch.ones(b, 3)
        gains[:, 0::2] = torch.empty(b, 2).uniform_(0.85, 1.15, generator=g)
        rad = rad * gains.view(b, 3, 1, 1).to(x)
    elif condition == "noise":
        sigma = (0.0004 * rad.clamp(0, 1) + 0.002**2).sqrt()
        rad = rad + sigma * torch.randn(rad.shape, generator=g).to(x)
    elif condition == "vignetting":
        rad = rad * vignette(x.shape[2], x.shape[3]).to(x)
    y = render.to_photo(rad)
    return (jpeg(y, 75) if condition == "jpeg75" else y), exposure


def vignette(h: int, w: int) -> Tensor:
    """cos^4 of each pixel's angle off the axis, for the task's 45 deg field of view: (1, 1, H, W)."""
    p = render.plane(h, w)
    tan2 = (p[0] ** 2 + p[1] ** 2) / render.CAMERA_HEIGHT**2
    return (1 + tan2).pow(-2)[None, None]


def jpeg(y: Tensor, quality: int) -> Tensor:
    """Each photo through an 8-bit JPEG encoder and decoder at `quality`."""
    out = []
    for img in y:
        arr = (img.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(y)


def reference(n: int = 512, size: int = 64, seed: int = 0) -> float:
    """REFERENCE recomputed: the median of the training photos' median linear luminance."""
    from tasks.svbrdf import procedural

    x = procedural.generate(n, size, seed)
    return float((estimate_exposure(render.flash_photo(x)) * REFERENCE).median())


if __name__ == "__main__":
    print(f"REFERENCE = {reference():.4f}")
