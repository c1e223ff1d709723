"""Reading a user's image file: one place that turns a missing, unreadable or unsuitable file into a clear error."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from feedback_solver.errors import one_line

# colour modes that convert to RGB without losing what a photo means (palette, CMYK and YCbCr JPEGs, RGBX)
COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr")


def open_image(path: str | Path, what: str) -> Image.Image:
    """The decoded image at `path`; `what` names it in errors ("photo", "mask", ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a huge image is refused, not decoded
            img = Image.open(path)
            img.load()
    except Exception as err:  # PIL raises many types for a broken or hostile file
        raise ValueError(f"{what} {path} is not an image ({type(err).__name__}: {one_line(err)})") from err
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{what} {path} has no pixels ({img.width}x{img.height})")
    return img


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (img.mode == "P" and "transparency" in img.info)


def opaque_rgb(img: Image.Image, path: Path, what: str) -> Image.Image:
    """An RGB version of a colour image; refused when its mode is not colour or some pixels are transparent."""
    if img.mode not in COLOUR_MODES:
        raise ValueError(f"{what} {path} has mode {img.mode} ({len(img.getbands())} channel(s)); give an RGB image")
    if has_alpha(img):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            raise ValueError(f"{what} {path} has transparent pixels ({(alpha < 255).mean():.0%}); give an opaque RGB "
                             "image (flatten it onto its background first)")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise ValueError(f"{what} {path}: mode {img.mode} does not convert to RGB ({one_line(err)})") from err
