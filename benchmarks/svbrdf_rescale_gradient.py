"""A fine-tuning start for another gradient compression (`model.grad_scale`).

`python benchmarks/svbrdf_rescale_gradient.py --scale S --out F`.

The update net reads the energy gradient as sign(g) log(1 + s g) (`model.grad_scale` s). With the shipped s = 10 most
of it lies in the log's linear part, an order of magnitude smaller than the maps it is read beside (the sizes are
in benchmarks/svbrdf/svbrdf_oracles.md). This writes the checkpoint with s changed and the update net's weights on
the gradient channels (conv1, and conv3's skip from the inputs) multiplied by s_old / s_new, so small gradients read
exactly as before;
`fbsolve train svbrdf train.init_from=F model.grad_scale=S ...` then fine-tunes from it (README: SVBRDF benchmark,
What was tried).
"""
from __future__ import annotations

import argparse

import torch

from feedback_solver import registry
from feedback_solver.checkpoints import read_model, save_model
from feedback_solver.config import load_config
from feedback_solver.solver import FeedbackSolver

MAPS = 9  # the update net's inputs: maps R_t (9 channels), then the compressed gradient (9)


def rescale(net: torch.nn.Module, new: float) -> float:
    """Change the net's gradient scale in place, keeping its response to small gradients; returns the old scale."""
    old = float(net.grad_scale)
    hidden = net.conv1.out_channels
    with torch.no_grad():
        net.conv1.weight[:, MAPS:2 * MAPS] *= old / new
        if net.conv3.in_channels > hidden:  # stride > 1: conv3 also reads the inputs after the upsampled state
            net.conv3.weight[:, hidden + MAPS:hidden + 2 * MAPS] *= old / new
    net.grad_scale = new
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, required=True, help="the new model.grad_scale")
    ap.add_argument("--out", required=True, help="checkpoint to write")
    ap.add_argument("--checkpoint", default=None, help="start (default: the shipped feedback checkpoint)")
    args = ap.parse_args()
    cls = registry.task_class("svbrdf")
    task = cls(load_config(cls, []))
    solver = FeedbackSolver.from_checkpoint(task, "feedback", args.checkpoint)
    if list(solver.stages.net(0).inputs) != ["x", "gradient"]:
        raise SystemExit("svbrdf_rescale_gradient: the checkpoint's update net must read (x, gradient)")
    path = args.checkpoint or task.checkpoint_dir / "feedback.safetensors"
    _, cfg, meta = read_model(path, "svbrdf")
    old = rescale(solver.stages.net(0), args.scale)
    cfg.model.grad_scale = args.scale
    save_model(args.out, solver, "svbrdf", cfg, meta | {"rescaled_from_grad_scale": old})
    print(f"wrote {args.out}: model.grad_scale {old:g} -> {args.scale:g}, "
          f"gradient-channel weights x {old / args.scale:g}")


if __name__ == "__main__":
    main()
