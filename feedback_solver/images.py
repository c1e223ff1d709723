"""Reading a user's image file: one place that turns a missing or unreadable file into a clear error."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def open_image(path: str | Path, what: str) -> Image.Image:
    """The decoded image at `path`; `what` names it in errors ("photo", "silhouette", ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        img = Image.open(path)
        img.load()
    except Exception as err:
        raise ValueError(f"{what} {path} is not an image ({err})") from err
    return img
