"""The SVBRDF solve's time per part, this tree against an earlier commit's, on the same samples:
`python benchmarks/svbrdf_speed.py --against REV`.

Each tree runs in its own process (that tree's code first on the path: `git archive REV` unpacked into a temporary
folder), the two alternating, `--repeats` times; the report gives each part's median seconds per sample (init, the
feedback render and gradient, the update net, the damping checks) and the render RMSE of each tree's answer, which
should not move. Test samples (procedural) at `--size`, `--threads` torch threads (the benchmark's one thread by
default). With `--val N`, also this tree's render RMSE after each of 0..8 steps on N validation materials at `--size`
(how the shipped solver's step count was chosen: never on the test set). Writes DIR/svbrdf_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("init", "feedback", "update", "damping", "total")

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from feedback_solver import registry
from feedback_solver.config import load_config
from feedback_solver.solver import FeedbackSolver

cls = registry.task_class("svbrdf")
task = cls(load_config(cls, ["seed=0", f"task.size={sys.argv[2]}"]))
batch = task.sample(int(sys.argv[1]), "test", 0)
solver = FeedbackSolver.from_checkpoint(task)
damping = {"wall": 0.0, "renders": 0.0}
accept = solver.acceptance

def timed(*args, **kwargs):
    start = time.perf_counter()
    out = accept(*args, **kwargs)
    damping["wall"] += time.perf_counter() - start
    damping["renders"] += out.seconds
    return out

solver.acceptance = timed
warm = batch.index(slice(0, 1))
solver.solve(warm.y, warm.ctx)
damping.update(wall=0.0, renders=0.0)
start = time.perf_counter()
res = solver.solve(batch.y, batch.ctx)
total = time.perf_counter() - start
tr, n = res.trace, len(batch)
# the trace counts the damping's renders as forward time and the rest of it as update time: moved to "damping"
out = {"init": tr.init_seconds / n, "damping": damping["wall"] / n,
       "update": (sum(tr.update_seconds) - damping["wall"] + damping["renders"]) / n,
       "feedback": (sum(tr.forward_seconds) - damping["renders"]) / n, "total": total / n,
       "render_rmse": float(task.metrics(res.x, batch.x, batch.ctx)["render_rmse"].mean())}
print(json.dumps(out))
"""


VAL = r"""
import json, sys, torch
from feedback_solver import registry
from feedback_solver.config import load_config
from feedback_solver.solver import FeedbackSolver

cls = registry.task_class("svbrdf")
n, size = int(sys.argv[1]), int(sys.argv[2])
task = cls(load_config(cls, ["seed=0", f"task.size={size}", f"task.crop={size}"]))  # val materials at the solve size
batch = task.sample(n, "val", 0)
solver = FeedbackSolver.from_checkpoint(task)
states = [[] for _ in range(9)]
for lo in range(0, n, 8):
    part = batch.index(slice(lo, lo + 8))
    for k, x in enumerate(solver.solve(part.y, part.ctx, steps=8).trace.x):
        states[k].append(x)
print(json.dumps([float(task.render_metrics(torch.cat(s), batch.x, lpips=False)["render_rmse"].mean())
                  for s in states]))
"""


def unpack(rev: str, into: Path) -> Path:
    """The commit's tree, as files (no checkout of this repository is touched)."""
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def run(tree: Path, args: argparse.Namespace, code: str = CHILD, samples: int | None = None) -> Any:
    env = os.environ | {"PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        "OMP_NUM_THREADS": str(args.threads)}
    argv = [str(samples or args.samples), str(args.size), str(args.threads)]
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tree, env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        sys.exit(f"svbrdf_speed: the solve in {tree} failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", required=True, help="the commit to time against (e.g. the shipped solver's)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--val", type=int, default=0, help="also the render RMSE per step on this many val materials")
    p.add_argument("--out", default="benchmarks/svbrdf_speed")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT, args.against: unpack(args.against, Path(tmp))}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
        for _ in range(args.repeats):  # alternating: this machine is shared
            for name, tree in trees.items():
                runs[name].append(run(tree, args))
    report = {name: {k: statistics.median(r[k] for r in rs) for k in (*PARTS, "render_rmse")}
              for name, rs in runs.items()}
    curve = run(ROOT, args, VAL, args.val) if args.val else None
    write(args, report, curve)
    return 0


def write(args: argparse.Namespace, report: dict[str, dict[str, float]], curve: list[float] | None) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    new, old = report["this tree"], report[args.against]
    cmd = (f"python benchmarks/svbrdf_speed.py --against {args.against} --samples {args.samples} --size "
           f"{args.size} --threads {args.threads} --repeats {args.repeats}")
    cmd += f" --val {args.val}" if args.val else ""
    lines = [f"# SVBRDF solve: time per part against {args.against}", "", f"Command: `{cmd}`", "",
             f"{args.samples} procedural test samples (seed 0) at {args.size} px, {args.threads} thread(s), the "
             f"shipped checkpoints of each tree; medians of {args.repeats} alternating runs, seconds per sample.", "",
             "| tree | " + " | ".join(PARTS) + " | render RMSE |", "|---|" + "---:|" * (len(PARTS) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in PARTS) + f" | {r['render_rmse']:.5f} |"
              for name, r in report.items()]
    lines += ["", f"This tree's solve is {old['total'] / new['total']:.2f}x as fast as {args.against}'s; its render "
              f"RMSE is {100 * (new['render_rmse'] / old['render_rmse'] - 1):+.2f} % of that tree's."]
    if curve:
        lines += ["", f"## Render RMSE after each step, {args.val} validation materials at {args.size} px (this tree)",
                  "", "| step | " + " | ".join(map(str, range(len(curve)))) + " |",
                  "|---|" + "---:|" * len(curve), "| render RMSE | " + " | ".join(f"{v:.5f}" for v in curve) + " |",
                  "", "Relative to step 6: " + ", ".join(f"step {k} {100 * (v / curve[6] - 1):+.1f} %"
                                                         for k, v in enumerate(curve))]
    (out / "svbrdf_speed.md").write_text("\n".join(lines) + "\n")
    (out / "svbrdf_speed.json").write_text(json.dumps({"command": cmd, "report": report, "val_curve": curve},
                                                      indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
