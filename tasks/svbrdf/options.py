"""The SVBRDF task's command-line flags, kept free of heavy imports so its `--help` is instant."""
from __future__ import annotations

import argparse

DATA = ("procedural", "real")
MIN_SIDE, MAX_SIDE = 64, 2048  # the U-Net needs 4 levels of 2x downsampling with room; memory grows with side^2


def side(text: str) -> int:
    """--size: an integer side in [MIN_SIDE, MAX_SIDE] pixels."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer number of pixels, got {text!r}") from None
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must lie in [{MIN_SIDE}, {MAX_SIDE}] pixels, got {value}")
    return value


def add_cli_options(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "solve":
        parser.add_argument("--image", required=True, help="a flash photo of a flat material (RGB, 8 bit)")
        parser.add_argument("--size", type=side, default=None,
                            help=f"solve at this side in pixels, {MIN_SIDE}-{MAX_SIDE} (default: task.size); the "
                                 "photo's centre square is resized to it")
    if command == "bench":
        parser.add_argument("--data", choices=DATA, help="one test set (default: both)")
        parser.add_argument("--materials", help="folder of real material map sets, one subfolder per material")
