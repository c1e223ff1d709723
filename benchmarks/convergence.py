"""Is the error left a convergence limit? `python benchmarks/convergence.py pose [--split test]`.

The shipped solver (restarts as configured) at its trained step count and past it (stage-wise nets repeat their
last stage), and at the trained count the primary metric per bucket of final data energy. Writes
DIR/<task>_convergence.{json,md}. A diagnostic, not a claim against the issue's bars: those are at the trained T.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from feedback_solver import registry
from feedback_solver.bench import summarise
from feedback_solver.config import load_config
from feedback_solver.problem import Batch
from feedback_solver.progress import bar
from feedback_solver.report import fmt_num
from feedback_solver.solver import FeedbackSolver

EDGES = {"pose": [0.0, 0.001, 0.002, 0.005, 0.01, float("inf")]}


def solve(task, batch: Batch, steps: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Final x and final energy of every sample, solved `chunk` at a time."""
    solver = FeedbackSolver.from_checkpoint(task)
    xs, es = [], []
    for lo in range(0, len(batch), chunk):
        part = batch.index(slice(lo, lo + chunk))
        res = solver.solve(part.y, part.ctx, steps=steps)
        xs.append(res.x)
        es.append(res.trace.energy[-1])
    return torch.cat(xs), torch.cat(es)


def stats(task, batch: Batch, x: torch.Tensor) -> dict[str, float]:
    """The bench's summary, flat: mean and median of every metric, and the outlier rate where the task has one."""
    summary = summarise(task, x, batch)
    out = {f"{k} {q}": v[q] for k, v in summary["metrics"].items() for q in ("mean", "median")}
    if summary["outlier_rate"] is not None:
        out["outliers %"] = 100 * summary["outlier_rate"]
    return out


def buckets(task, batch: Batch, x: torch.Tensor, energy: torch.Tensor, edges: list[float]) -> list[dict]:
    m = task.metrics(x, batch.x, batch.ctx)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (energy >= lo) & (energy < hi)
        if sel.any():
            rows.append({"energy": f"[{lo:g}, {hi:g})", "samples": int(sel.sum())}
                        | {f"{k} median": float(v[sel].median()) for k, v in m.items()})
    return rows


def table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    cell = lambda v: fmt_num(v) if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + [
        "| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=sorted(EDGES))
    ap.add_argument("--split", default="test")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default="5,10,20", help="step counts to run, the trained one first")
    ap.add_argument("--out", default="benchmarks/convergence")
    args = ap.parse_args()
    cls = registry.task_class(args.task)
    task = cls(load_config(cls, []))
    batch = task.sample(args.samples, args.split, args.seed)
    chunk = int(task.cfg.bench.batch_size)
    steps = [int(s) for s in args.steps.split(",")]
    result = {"task": args.task, "split": args.split, "samples": args.samples, "seed": args.seed, "steps": {}}
    for i, t in enumerate(bar(steps, desc=f"convergence {args.task}")):
        x, energy = solve(task, batch, t, chunk)
        result["steps"][t] = stats(task, batch, x)
        if i == 0:
            result["energy_buckets"] = buckets(task, batch, x, energy, EDGES[args.task])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.task}_convergence.json").write_text(json.dumps(result, indent=2) + "\n")
    cmd = (f"python benchmarks/convergence.py {args.task} --split {args.split} --samples {args.samples} "
           f"--seed {args.seed} --steps {args.steps}")
    lines = [f"# Convergence: {args.task}", "", f"Command: `{cmd}` (shipped checkpoint, {args.split} split, "
             f"restarts as configured).", "", "## Error against the number of steps", ""]
    lines += table([{"steps": t} | s for t, s in result["steps"].items()])
    lines += ["", f"## At {steps[0]} steps, by final data energy", ""] + table(result["energy_buckets"])
    (out / f"{args.task}_convergence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
