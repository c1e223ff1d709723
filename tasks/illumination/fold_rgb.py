"""Fold an RGB-input illumination checkpoint into the grey one the task now runs: `python -m tasks.illumination.fold_rgb
CKPT...` (in place).

The task's images are grey (a grey material under a white light: pyrender's three channels are equal), so the
solver works on one channel. A net trained on the three equal channels of each image gives the same output on one
channel whose first-conv weights are the sum of the three: this rewrites those weights (the last two input channels,
the pixel coordinates, are kept) and notes the fold in the checkpoint's metadata. Run once on the checkpoints trained
before the change; it refuses a checkpoint that is already grey.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from feedback_solver.checkpoints import FORMAT, read_model, write_sealed

FIRST_CONV = "net.down.0.0.weight"


def fold(weight: torch.Tensor) -> torch.Tensor:
    """(out, 3k + 2, h, w) -> (out, k + 2, h, w): each image's three colour channels summed."""
    colour, coords = weight[:, :-2], weight[:, -2:]
    if colour.shape[1] % 3:
        raise ValueError(f"first conv takes {weight.shape[1]} channels: not 3 per image plus 2 coordinates")
    return torch.cat([colour.unflatten(1, (-1, 3)).sum(2), coords], 1)


def main(paths: list[str]) -> int:
    for name in paths:
        path = Path(name)
        tensors, cfg, meta = read_model(path, "illumination")
        if meta.get("folded_to_grey"):
            raise SystemExit(f"{path}: already grey")
        out = {k: fold(v) if k.endswith(FIRST_CONV) else v for k, v in tensors.items()}
        header = {"format": FORMAT, "task": "illumination", "config": OmegaConf.to_yaml(cfg),
                  "meta": json.dumps(meta | {"folded_to_grey": True})}
        write_sealed(path, out, header)
        print(f"{path}: {sum(k.endswith(FIRST_CONV) for k in tensors)} first convs folded to grey")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
