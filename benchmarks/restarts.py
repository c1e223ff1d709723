"""How `solver.restarts` was chosen, on the validation split: `python benchmarks/restarts.py pose`.

The shipped checkpoint runs from its own start and from each of the task's restart starts alone; then, for a sweep
of energy thresholds, each sample above the threshold keeps the lowest-energy of its runs. Validation samples only
(for pose and illumination: the train objects), never the test split. Writes DIR/<report>_restarts.{json,md}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from feedback_solver import registry
from feedback_solver.config import load_config
from feedback_solver.problem import Batch
from feedback_solver.solver import FeedbackSolver

THRESHOLDS = {"pose": [0.0, 0.002, 0.005, 0.008, 0.015],
              "illumination_point": [0.0, 1e-6, 3e-6, 1e-5, 1e-4],
              "illumination_directional": [0.0, 3e-5, 1e-4, 3e-4, 1e-3]}


def runs(task, batch: Batch, starts: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Final energies (1 + K, B) and metrics of the plain solve and of a solve from each restart start alone."""
    solver = FeedbackSolver.from_checkpoint(task, off=("restarts",))
    first = solver.solve(batch.y, batch.ctx)
    xs, energies = [first.x], [first.trace.energy[-1]]
    for x0 in task.restart_starts(batch, starts):
        trace = solver.run(task.space.project(x0), batch.y, batch.ctx, solver.steps)
        xs.append(trace.x[-1])
        energies.append(trace.energy[-1])
    per = [task.metrics(x, batch.x, batch.ctx) for x in xs]
    return torch.stack(energies), {k: torch.stack([p[k] for p in per]) for k in per[0]}


def summary(task, metrics: dict[str, Tensor]) -> dict[str, float]:
    out = {f"{k} {s}": float(getattr(v, s)()) for k, v in metrics.items() for s in ("mean", "median")}
    flags = task.is_outlier(metrics)
    out["outliers %"] = float("nan") if flags is None else 100 * float(flags.float().mean())
    return out


def pick(energies: Tensor, metrics: dict[str, Tensor], threshold: float) -> tuple[dict[str, Tensor], float]:
    """Each sample above the threshold keeps its lowest-energy run; the others their first."""
    redo = energies[0] > threshold
    choice = torch.where(redo, energies.argmin(0), torch.zeros_like(redo, dtype=torch.long))
    idx = torch.arange(energies.shape[1])
    return {k: v[choice, idx] for k, v in metrics.items()}, 100 * float(redo.float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--light", help="illumination: point or directional")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/restarts")
    args = parser.parse_args()
    cls = registry.task_class(args.task)
    overrides = [f"seed={args.seed}"] + ([f"task.light={args.light}"] if args.light else [])
    task = cls(load_config(cls, overrides))
    starts = int(task.cfg.solver.restarts.starts) or 4
    batch = task.sample(args.samples, "val", args.seed)
    energies, metrics = runs(task, batch, starts)
    rows = [("own start", summary(task, {k: v[0] for k, v in metrics.items()}), 0.0)]
    rows += [(f"restart start {i} alone", summary(task, {k: v[i] for k, v in metrics.items()}), 100.0)
             for i in range(1, starts + 1)]
    configured = float(task.cfg.solver.restarts.energy_above)
    for th in sorted(set(THRESHOLDS.get(task.report_name, [0.0]) + [configured])):
        chosen, redo = pick(energies, metrics, th)
        label = f"restarts above {th:g}" + (" (configured)" if th == configured else "")
        rows.append((label, summary(task, chosen), redo))
    write(task, args, rows, energies)


def write(task, args: argparse.Namespace, rows: list, energies: Tensor) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    light = f" --light {args.light}" if args.light else ""
    cmd = f"python benchmarks/restarts.py {args.task}{light} --samples {args.samples} --seed {args.seed}"
    keys = list(rows[0][1])
    lines = [f"# Restarts: {task.report_name}", "", f"Command: `{cmd}`", "",
             f"Validation split ({task.describe_data('val')}), {args.samples} samples, seed {args.seed}; the shipped "
             "checkpoint. Median final energy of the own start's run: "
             f"{float(energies[0].median()):.3g}.", "",
             "| run | " + " | ".join(keys) + " | solved again % |", "|---|" + "---:|" * (len(keys) + 1)]
    lines += [f"| {label} | " + " | ".join(f"{r[k]:.3g}" for k in keys) + f" | {redo:.0f} |" for label, r, redo in rows]
    (out / f"{task.report_name}_restarts.md").write_text("\n".join(lines) + "\n")
    (out / f"{task.report_name}_restarts.json").write_text(json.dumps(
        {"command": cmd, "rows": [{"run": label, "solved_again_percent": redo, **r} for label, r, redo in rows]},
        indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
