"""What is the SVBRDF initializer's render error made of? `python benchmarks/svbrdf_oracles.py`.

A diagnostic of the bar "the update net takes 25 % off the initializer's render RMSE". On held-out procedural
materials (the val split by default, never the test split's) it scores the shipped `feedback` solver's initializer
(R_0) and its answer (R_6) with the report's render RMSE, then R_0 changed by fixes of known reach:
- `global_photo`: one offset per map channel and material (diffuse 3, specular 3, roughness 1) fitted to the flash
  photo: what an update that sets each material's overall levels from the photo can do;
- `global_truth`: the same offsets fitted to the truth's re-renders under the 20 evaluation lights (an oracle: about
  the most any per-material level correction can do);
- `true_<map>`: one map (or specular and roughness together) replaced by the truth: which map's error the render
  error comes from.
Beside them, the size of what the update net reads at R_0: its map inputs and its compressed energy gradient.
Writes DIR/svbrdf_oracles.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from feedback_solver import registry
from feedback_solver.config import load_config
from feedback_solver.feedback import energy_gradient
from feedback_solver.problem import Batch
from feedback_solver.progress import bar
from feedback_solver.solver import FeedbackSolver

SWAPS = {"diffuse": slice(0, 3), "specular": slice(3, 6), "roughness": slice(6, 7), "normal": slice(7, 9),
         "specular_roughness": slice(3, 7)}  # the pair a flash photo confounds: a fit trades one for the other
LEVELS = 7  # offsets: diffuse 3, specular 3, roughness 1 (the normal has no overall level to set)


def fit_levels(x0: Tensor, misfit: Callable[[Tensor], Tensor], iterations: int, lr: float = 0.02) -> Tensor:
    """Per-sample offsets of the first 7 channels minimising `misfit` (a sum over samples, so each fits alone)."""
    p = torch.zeros(x0.shape[0], LEVELS, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr)

    def moved() -> Tensor:
        return torch.cat([x0[:, :LEVELS] + p, x0[:, LEVELS:]], 1)

    for _ in range(iterations):
        loss = misfit(moved())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return moved()


def photo_misfit(task, batch: Batch) -> Callable[[Tensor], Tensor]:
    return lambda x: (task.forward(x, batch.ctx) - batch.y).pow(2).flatten(1).mean(1).sum()


def truth_misfit(task, batch: Batch) -> Callable[[Tensor], Tensor]:
    target = task.renders(batch.x)
    return lambda x: (task.renders(x) - target).pow(2).flatten(2).mean(2).mean(1).sum()


def estimates(task, solver, batch: Batch, iterations: int, chunk: int) -> dict[str, Tensor]:
    """R_0, R_6 and each fix of R_0, for every sample of the batch."""
    parts: dict[str, list[Tensor]] = {}
    for lo in bar(range(0, len(batch), chunk), desc="svbrdf oracles"):
        b = batch.index(slice(lo, lo + chunk))
        res = solver.solve(b.y, b.ctx)
        x0 = res.trace.x[0]  # the solve's own R_0
        out = {"initializer": x0, "feedback": res.x}
        out["global_photo"] = fit_levels(x0, photo_misfit(task, b), iterations)
        out["global_truth"] = fit_levels(x0, truth_misfit(task, b), iterations)
        for name, s in SWAPS.items():
            x = x0.clone()
            x[:, s] = b.x[:, s]
            out[f"true_{name}"] = x
        for k, v in out.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def input_sizes(task, solver, batch: Batch) -> dict[str, dict[str, float]]:
    """Median and 90th percentile of |input| of the update net's map and gradient channels at R_0 (first 8 samples)."""
    b = batch.index(slice(0, 8))
    with torch.no_grad():
        x0 = solver.init(b.y, b.ctx)
    grad, _, _ = energy_gradient(task, x0, b.y, b.ctx)  # as the solver computes it
    with torch.no_grad():
        feats = solver.stages.net(0).features({"x": x0, "gradient": grad}).abs()
    q = torch.tensor([0.5, 0.9])
    return {name: dict(zip(("median", "p90"), torch.quantile(feats[:, s].flatten()[::7], q).tolist()))
            for name, s in (("maps", slice(0, 9)), ("gradient", slice(9, 18)))}


def table(task, xs: dict[str, Tensor], truth: Tensor) -> dict[str, dict[str, float]]:
    """Mean and median render RMSE of each estimate, and its change against the initializer's mean."""
    rmses = task.curve_metric(list(xs.values()), truth, {}, "render_rmse")  # renders the truth once per chunk
    rows = {k: {"render_rmse mean": float(r.mean()), "render_rmse median": float(r.median())}
            for k, r in zip(xs, rmses)}
    base = rows["initializer"]["render_rmse mean"]
    for row in rows.values():
        row["gain over initializer %"] = 100 * (1 - row["render_rmse mean"] / base)
    return rows


def write_md(result: dict, cmd: str) -> list[str]:
    lines = ["# SVBRDF: what the initializer's render error is made of", "",
             f"Command: `{cmd}`; data: {result['data']}, {result['samples']} materials, seed {result['seed']}.", "",
             "| estimate | render RMSE mean | median | gain over the initializer (mean) |", "|---|---|---|---|"]
    for k, r in result["methods"].items():
        lines.append(f"| {k} | {r['render_rmse mean']:.4f} | {r['render_rmse median']:.4f} | "
                     f"{r['gain over initializer %']:+.1f} % |")
    lines += ["", "`global_photo` / `global_truth`: the initializer's maps moved by one offset per map channel and "
              "material, fitted to the flash photo / to the truth's re-renders under the 20 evaluation lights (an "
              f"oracle), {result['iterations']} Adam iterations. `true_<map>`: that map (or maps) replaced by the "
              "truth."]
    sizes = result.get("update_net_inputs")
    if sizes:
        lines += ["", "What the update net reads at R_0 (|input|, first 8 materials): maps median "
                  f"{sizes['maps']['median']:.3f} (90 %: {sizes['maps']['p90']:.3f}), compressed gradient median "
                  f"{sizes['gradient']['median']:.4f} (90 %: {sizes['gradient']['p90']:.3f})."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=128, help="solve side in pixels (the training crops: 128)")
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--iterations", type=int, default=100, help="Adam iterations of each offset fit")
    ap.add_argument("--chunk", type=int, default=8, help="materials per fit (memory)")
    ap.add_argument("--out", default="benchmarks/svbrdf")
    args = ap.parse_args()
    cls = registry.task_class("svbrdf")
    task = cls(load_config(cls, [f"task.crop={args.size}", f"task.size={args.size}", "task.data=procedural"]))
    torch.manual_seed(args.seed)
    batch = task.sample(args.samples, args.split, args.seed)
    solver = FeedbackSolver.from_checkpoint(task, "feedback")
    xs = estimates(task, solver, batch, args.iterations, args.chunk)
    result = {"task": "svbrdf", "data": task.describe_data(args.split), "samples": args.samples, "seed": args.seed,
              "size": args.size, "iterations": args.iterations, "methods": table(task, xs, batch.x),
              "update_net_inputs": input_sizes(task, solver, batch)}
    cmd = (f"python benchmarks/svbrdf_oracles.py --samples {args.samples} --seed {args.seed} --size {args.size} "
           f"--split {args.split} --iterations {args.iterations}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "svbrdf_oracles.json").write_text(json.dumps(result | {"command": cmd}, indent=2) + "\n")
    lines = write_md(result, cmd)
    (out / "svbrdf_oracles.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
