"""Errors outside the trained range (the seed's generalisation table): `python benchmarks/generalisation.py pose`.

The shipped checkpoints are benchmarked on test samples whose rotation from the canonical pose lies in each range
(task.min_angle_deg / task.max_angle_deg; trained on 0-40 deg), all with the same seed. Writes
DIR/<task>_generalisation.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from feedback_solver import registry
from feedback_solver.bench import run_bench
from feedback_solver.config import load_config


def bench_range(task_name: str, lo: float, hi: float, args: argparse.Namespace) -> dict:
    """One benchmark on rotations in [lo, hi] deg; its report goes to a folder of its own."""
    cls = registry.task_class(task_name)
    cfg = load_config(cls, [f"task.min_angle_deg={lo}", f"task.max_angle_deg={hi}", f"seed={args.seed}"])
    out = Path(args.out) / f"{int(lo)}-{int(hi)}"
    cmd = f"python benchmarks/generalisation.py {task_name} --ranges {args.ranges} --samples {args.samples}"
    return run_bench(cls(cfg), cfg, out, args.methods.split(","), args.samples, args.seed, cmd)


def table(rows: list[tuple[str, dict]], methods: list[str], metrics: list[str]) -> str:
    cells = [f"{m} {k} {s}" for m in methods for k in metrics for s in ("mean", "median")]
    lines = ["| rotation range (deg) | " + " | ".join(cells) + " | "
             + " | ".join(f"{m} outliers %" for m in methods) + " |",
             "|---|" + "---:|" * (len(cells) + len(methods))]
    for label, res in rows:
        vals = [res["methods"][m]["metrics"][k][s] for m in methods for k in metrics for s in ("mean", "median")]
        out = [100 * (res["methods"][m]["outlier_rate"] or 0) for m in methods]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3g}" for v in vals) + " | "
                     + " | ".join(f"{o:.1f}" for o in out) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[tuple[str, dict]], methods: list[str], metric: str, path: Path) -> None:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for m in methods:
        ax.plot([r[0] for r in rows], [r[1]["methods"][m]["metrics"][metric]["median"] for r in rows], "o-", label=m)
    ax.set_xlabel("rotation from the canonical pose (deg)")
    ax.set_ylabel(f"median {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(str(path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task")
    p.add_argument("--ranges", default="0-40,40-45,45-50,50-55,55-60", help="comma-separated lo-hi degrees")
    p.add_argument("--methods", default="feedback,regression")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/generalisation")
    args = p.parse_args()
    spans = [tuple(float(v) for v in r.split("-")) for r in args.ranges.split(",")]
    rows = [(f"{int(lo)}-{int(hi)}", bench_range(args.task, lo, hi, args)) for lo, hi in spans]
    methods = args.methods.split(",")
    metrics = list(rows[0][1]["methods"][methods[0]]["metrics"])
    out = Path(args.out)
    summary = {"task": args.task, "seed": args.seed, "samples": args.samples, "data": rows[0][1]["data"],
               "command": rows[0][1]["command"], "ranges": {label: res["methods"] for label, res in rows}}
    (out / f"{args.task}_generalisation.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = (f"# Generalisation: {args.task}\n\nTrained on rotations of 0-40 deg; each row is a benchmark of the shipped "
          f"checkpoints on {args.samples} test samples (seed {args.seed}) with rotations in that range.\n\n"
          f"Command: `{summary['command']}`\n\n" + table(rows, methods, metrics) +
          f"\n![median {metrics[0]} per range]({args.task}_generalisation.png)\n")
    (out / f"{args.task}_generalisation.md").write_text(md)
    plot(rows, methods, metrics[0], out / f"{args.task}_generalisation.png")
    print(md)


if __name__ == "__main__":
    main()
