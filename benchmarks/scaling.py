"""Training throughput against torchrun processes: `python benchmarks/scaling.py TASK --runs 1x2,1x1,2x1`.

Each run (processes x intra-op threads per process) is the same short training, `fbsolve train TASK` under
`torchrun --standalone`; samples per second come from the checkpoint's metadata (time in training steps only).
Writes DIR/<task>_scaling.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from feedback_solver.checkpoints import read_model


def train(task: str, ranks: int, threads: int, out: Path, variant: str, overrides: list[str]) -> dict:
    """One run under torchrun with OMP_NUM_THREADS=threads; its checkpoint's metadata."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "feedback_solver.cli", "train", task, "--variant", variant, "--out", str(out), *overrides]
    print(f"$ OMP_NUM_THREADS={threads} torchrun", " ".join(cmd[4:]), flush=True)
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    return read_model(out, task)[2]


def table(rows: list[dict]) -> str:
    head = "| processes | threads per process | samples / s | speed-up | training seconds | val distance |\n"
    head += "|---:|---:|---:|---:|---:|---:|\n"
    base = rows[0]["samples_per_second"]  # speed-up against the first run
    return head + "".join(
        f"| {r['ranks']} | {r['threads_per_rank']} | {r['samples_per_second']:.0f} | "
        f"{r['samples_per_second'] / base:.2f}x | {r['train_seconds']:.1f} | {r['val_distance']:.4f} |\n"
        for r in rows)


def plot(rows: list[dict], path: Path, task: str) -> None:
    fig = Figure(figsize=(4, 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar([f"{r['ranks']}x{r['threads_per_rank']}" for r in rows], [r["samples_per_second"] for r in rows],
           color="tab:blue")
    ax.set_xlabel("processes x threads per process")
    ax.set_ylabel("training samples / s")
    ax.set_title(f"{task}: data-parallel throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("task")
    p.add_argument("--runs", default=f"1x{os.cpu_count()},1x1,2x1",
                   help="comma-separated PROCESSESxTHREADS (default: 1 process on all cores, 1x1, 2x1)")
    p.add_argument("--variant", default="feedback")
    p.add_argument("--out", default="benchmarks/scaling")
    args, overrides = p.parse_known_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs.split(","):
        r, t = (int(v) for v in run.split("x"))
        path = out / f"{args.task}_{r}x{t}.safetensors"
        meta = train(args.task, r, t, path, args.variant, overrides)
        rows.append({"ranks": r} | {k: meta[k] for k in
                                    ("threads_per_rank", "samples_per_second", "train_seconds", "val_distance")})
        path.unlink()
    cmd = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
    report = {"task": args.task, "variant": args.variant, "command": cmd, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "runs": rows}
    (out / f"{args.task}_scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    md = f"# {args.task}: training throughput against torchrun processes\n\n`{cmd}` on {os.cpu_count()} CPU cores.\n\n"
    (out / f"{args.task}_scaling.md").write_text(md + table(rows) + f"\n![throughput]({args.task}_scaling.png)\n")
    plot(rows, out / f"{args.task}_scaling.png", args.task)
    print(table(rows))


if __name__ == "__main__":
    main()
