"""Is the pose solver as good and as fast on robots it never saw as on the test objects?

    python benchmarks/pose_unseen.py [--samples 300] [--seed 0] [--checkpoints DIR] [--out benchmarks/pose_unseen]

The shipped solver (restarts and symmetry averaging as configured) on the val_unseen split (robosuite's held-out
robots and hands, `configs/robosuite.yaml`; `make robosuite` fetches them) and on the test objects, in one run:
batches of the two splits alternate, so the time ratio compares like with like on this shared machine (after one
warm-up solve per mesh: what a mesh costs once, its proxy and its upload, is not what a solve costs). Writes
DIR/pose_unseen.{json,md,png}: the metrics of each split, the time per sample and its ratio, the share of samples
re-solved, and the median rotation error per object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from feedback_solver import registry
from feedback_solver.bench import summarise
from feedback_solver.config import load_config
from feedback_solver.problem import Batch
from feedback_solver.report import fmt_num
from feedback_solver.solver import FeedbackSolver

SPLITS = ("val_unseen", "test")


def solve_split(solver: FeedbackSolver, batches: dict[str, Batch], chunk: int) -> dict[str, dict]:
    """Each split solved `chunk` samples at a time, the splits' chunks alternating; answers, seconds, re-solved."""
    out = {s: {"x": [], "seconds": 0.0, "resolved": []} for s in batches}
    n = max(len(b) for b in batches.values())
    for lo in range(0, n, chunk):
        for split, batch in batches.items():
            if lo >= len(batch):
                continue
            part = batch.index(slice(lo, lo + chunk))
            start = time.perf_counter()
            res = solver.solve(part.y, part.ctx)
            out[split]["seconds"] += time.perf_counter() - start
            out[split]["x"].append(res.x)
            resolved = getattr(res.trace, "resolved", None)
            out[split]["resolved"].append(resolved if resolved is not None else torch.zeros(len(part), dtype=bool))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--checkpoints", help="folder of feedback.safetensors (default: the shipped one)")
    p.add_argument("--out", default="benchmarks/pose_unseen")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)
    cls = registry.task_class("pose")
    task = cls(load_config(cls, [f"seed={args.seed}", *args.overrides]))
    solver = FeedbackSolver.from_checkpoint(task, folder=Path(args.checkpoints) if args.checkpoints else None)
    batches = {s: task.sample(args.samples, s, args.seed) for s in SPLITS}
    for batch in batches.values():  # warm-up: each mesh's proxy made or read and uploaded once, as for any user
        first = {m: i for i, m in reversed(list(enumerate(batch.ctx["mesh"])))}
        warm = batch.index(torch.tensor(sorted(first.values())))
        solver.solve(warm.y, warm.ctx)
    raw = solve_split(solver, batches, args.chunk)
    result = {"command": "python " + " ".join(["benchmarks/pose_unseen.py", *(argv if argv is not None
                                                                             else sys.argv[1:])]),
              "seed": args.seed, "samples": args.samples, "splits": {}}
    for split, batch in batches.items():
        x = torch.cat(raw[split]["x"])
        summary = summarise(task, x, batch)
        rot = task.metrics(x, batch.x, batch.ctx)["rotation_deg"]
        groups = {}
        for name in sorted(set(batch.ctx["mesh"])):
            sel = torch.tensor([m == name for m in batch.ctx["mesh"]])
            groups[name] = {"samples": int(sel.sum()), "rotation_deg median": float(rot[sel].median())}
        result["splits"][split] = {
            "data": task.describe_data(split),
            "metrics": {k: {q: v[q] for q in ("mean", "median")} for k, v in summary["metrics"].items()},
            "outliers %": 100 * float(summary["outlier_rate"]),
            "seconds per sample": raw[split]["seconds"] / len(batch),
            "re-solved %": 100 * float(torch.cat(raw[split]["resolved"]).float().mean()),
            "groups": groups}
    s = result["splits"]
    result["time ratio"] = s["val_unseen"]["seconds per sample"] / s["test"]["seconds per sample"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pose_unseen.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result)
    print((out / "pose_unseen.md").read_text())
    return 0


def write_report(out: Path, r: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Pose: unseen robots against the test objects", "", f"- Command: `{r['command']}` (seed {r['seed']}, "
             f"{r['samples']} samples per split, the splits' batches alternating in one run)"]
    lines += [f"- {split}: {v['data']}" for split, v in r["splits"].items()]
    lines += ["", "| split | rotation_deg mean | rotation_deg median | translation mean | translation median | "
              "outliers % | re-solved % | s/sample |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split, v in r["splits"].items():
        m = v["metrics"]
        lines.append(f"| {split} | {fmt_num(m['rotation_deg']['mean'])} | {fmt_num(m['rotation_deg']['median'])} | "
                     f"{fmt_num(m['translation']['mean'])} | {fmt_num(m['translation']['median'])} | "
                     f"{fmt_num(v['outliers %'])} | {fmt_num(v['re-solved %'])} | "
                     f"{1e3 * v['seconds per sample']:.1f} ms |")
    lines += ["", f"Time per sample on val_unseen: {r['time ratio']:.2f}x its time on the test objects (same run).",
              "", "## Median rotation error per object", "", "| split | object | samples | rotation_deg median |",
              "| --- | --- | --- | --- |"]
    for split, v in r["splits"].items():
        for name, g in v["groups"].items():
            lines.append(f"| {split} | {name} | {g['samples']} | {fmt_num(g['rotation_deg median'])} |")
    lines += ["", "![median rotation error per object](pose_unseen.png)", ""]
    (out / "pose_unseen.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, v in r["splits"].items():
        med = sorted(g["rotation_deg median"] for g in v["groups"].values())
        ax.plot(np.linspace(0, 1, len(med)), med, marker="o", ms=3, label=f"{split} ({len(med)} objects)")
    ax.set_xlabel("objects, sorted by median error (fraction)")
    ax.set_ylabel("median rotation error (deg)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pose_unseen.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
