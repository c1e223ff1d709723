"""The shipped SVBRDF solver on flash photos as a phone takes them: `python benchmarks/svbrdf_capture.py`.

For each test set (procedural, real) and each capture condition of tasks/svbrdf/capture.py, the same first `--samples`
materials, their photos degraded, solved by `feedback` with the photo's exposure estimated (`task.exposure=estimate`).
The render metrics are taken at the estimated exposure over the true one (an answer is maps plus an exposure; a
darker material under a brighter flash takes the same photo). The exposure conditions are also solved assuming the
training flash (`task.exposure=nominal`), what the solver did before it estimated the exposure. Writes
DIR/svbrdf_capture.{md,json} and DIR/svbrdf_capture.png (one material's photo per condition).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from feedback_solver import registry
from feedback_solver.config import load_config
from feedback_solver.progress import bar
from feedback_solver.solver import FeedbackSolver
from tasks.svbrdf.capture import CONDITIONS

SETS = ("procedural", "real")


def solve(data: str, condition: str, exposure: str, args: argparse.Namespace) -> dict:
    """One set under one condition: mean render RMSE and LPIPS, the estimated over the true exposure, and a photo."""
    cls = registry.task_class("svbrdf")
    over = [f"seed={args.seed}", f"task.size={args.size}", f"task.data={data}", f"task.capture={condition}",
            f"task.exposure={exposure}"]
    task = cls(load_config(cls, over))
    batch = task.sample(args.samples, "test", args.seed)
    solver = FeedbackSolver.from_checkpoint(task)
    start = time.perf_counter()
    xs = [solver.solve(part.y, part.ctx).x for part in (batch.index(slice(lo, lo + args.batch))
                                                       for lo in range(0, len(batch), args.batch))]
    seconds = (time.perf_counter() - start) / len(batch)
    m = task.render_metrics(torch.cat(xs), batch.x, ctx=batch.ctx)
    rel = task.relative_exposure(batch.ctx)
    return {"render_rmse": float(m["render_rmse"].mean()), "render_lpips": float(m["render_lpips"].mean()),
            "exposure": None if rel is None else [float(v) for v in rel], "seconds_per_sample": seconds,
            "photo": batch.y[0]}


def rows(results: dict[str, dict]) -> list[str]:
    """A table: each condition's metrics and their change against the nominal photo's."""
    nominal = results["nominal"]
    out = ["| condition | exposure | render RMSE | vs nominal | render LPIPS | vs nominal | estimated / true exposure "
           "(median) |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        cond, _, mode = name.partition(":")
        ratio = "–" if r["exposure"] is None else f"{torch.tensor(r['exposure']).median():.3f}"
        out.append(f"| {cond} | {mode or 'estimated'} | {r['render_rmse']:.4f} | "
                   f"{100 * (r['render_rmse'] / nominal['render_rmse'] - 1):+.1f} % | {r['render_lpips']:.3f} | "
                   f"{100 * (r['render_lpips'] / nominal['render_lpips'] - 1):+.1f} % | {ratio} |")
    return out


def picture(photos: dict[str, torch.Tensor], path: Path) -> None:
    """The first material's photo under each condition, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(photos), figsize=(2.2 * len(photos), 2.6))
    for ax, (name, y) in zip(axes, photos.items()):
        ax.imshow(y[:3].permute(1, 2, 0).clamp(0, 1).numpy())
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    p.add_argument("--out", default="benchmarks/svbrdf_capture")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = f"python benchmarks/svbrdf_capture.py --samples {args.samples} --size {args.size} --seed {args.seed}"
    lines = ["# SVBRDF: flash photos as a phone takes them", "", f"Command: `{cmd}`", "",
             f"The first {args.samples} test materials of each set at {args.size} px, seed {args.seed}, solved by the "
             "shipped `feedback` with the photo's exposure estimated; render metrics at the estimated exposure over "
             "the true one. The conditions: tasks/svbrdf/capture.py. `assumed` rows: the same photos solved with the "
             "training flash assumed (no estimate).", ""]
    report: dict[str, dict] = {}
    jobs = [(c, "estimate") for c in CONDITIONS] + [(c, "nominal") for c in ("exposure_0.5", "exposure_2")]
    for data in args.sets:
        results: dict[str, dict] = {}
        for cond, mode in bar(jobs, True, desc=f"capture {data}"):
            results[cond if mode == "estimate" else f"{cond}:assumed"] = solve(data, cond, mode, args)
        photos = {k: r.pop("photo") for k, r in results.items()}
        report[data] = results
        lines += [f"## {data}", "", *rows(results), "", f"![photos]({f'svbrdf_capture_{data}.png'})", ""]
        picture({k: v for k, v in photos.items() if ":" not in k}, out / f"svbrdf_capture_{data}.png")
    (out / "svbrdf_capture.md").write_text("\n".join(lines))
    (out / "svbrdf_capture.json").write_text(json.dumps({"command": cmd, "report": report}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
