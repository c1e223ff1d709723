"""How often the SVBRDF solve's flash-photo warnings fire: `python benchmarks/svbrdf_flash_check.py`.

On 64 validation materials at 128 px (seed 0), their flash photos and the same materials lit by 4 lamps around them
(no flash): how many each threshold of tasks/svbrdf/photos.py flags, and the measures' margins. The thresholds'
comment there quotes this output.
"""
from __future__ import annotations

import torch

from feedback_solver.config import load_config
from tasks.svbrdf import render
from tasks.svbrdf.photos import flash_warnings, highlight
from tasks.svbrdf.task import SVBRDFTask


def validation_margins(n: int = 64, size: int = 128) -> str:
    """How often the thresholds flag validation flash photos, and the same materials lit by 4 lamps around them."""
    task = SVBRDFTask(load_config(SVBRDFTask, [f"task.size={size}", f"task.crop={size}", "task.exposure=nominal"]))
    batch = task.sample(n, "val", 0)
    lamps = torch.tensor([[[3.0, 0, 2.4], [-3.0, 0, 2.4], [0, 3.0, 2.4], [0, -3.0, 2.4]]])
    lit = render.to_photo(2 * render.shade(batch.x, lamps, render.camera_position(1).expand(1, 4, 3)).mean(1))
    lines = []
    for name, ys in (("flash photos", batch.y), ("lamp-lit photos", lit)):
        flagged = sum(bool(flash_warnings(ys[i:i + 1], "")) for i in range(n))
        slope, offset = torch.tensor([highlight(ys[i:i + 1]) for i in range(n)]).T
        lines.append(f"{name}: {flagged} of {n} flagged; slope min {slope.min():.2f}, 5th percentile "
                     f"{slope.quantile(0.05):.2f}; offset max {offset.max():.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(validation_margins())
