"""How fast can a pyrender-bound illumination solve be against Mitsuba here? `python benchmarks/render_floor.py`.

A diagnostic of the illumination speed bar (the learned solver 100x faster than the Mitsuba optimiser). Measured in
one run, per light kind, on the first N test samples (seed 0): the forward model's time per render and sample
(pyrender, with the config's render workers, as the benchmark's solve calls it) and the Mitsuba optimiser's time per
sample (the benchmark's baseline, from the same constant start). Any solver that renders its feedback once per step
spends at least `solver.steps` renders, so no such solver can be more than mitsuba / (steps x render) times faster
than Mitsuba, whatever its network costs. Writes DIR/render_floor.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from feedback_solver import registry
from feedback_solver.bench import run_optimiser
from feedback_solver.config import load_config
from feedback_solver.distributed import Dist
from feedback_solver.render.shaded import KINDS

BAR = 100.0  # the speed-up over the Mitsuba optimiser


def render_seconds(task, batch, passes: int) -> float:
    """Median over `passes` of the batch's forward time at the true lights, per sample (meshes already uploaded)."""
    task.forward(batch.x, batch.ctx)
    times = []
    for _ in range(passes):
        begin = time.perf_counter()
        task.forward(batch.x, batch.ctx)
        times.append((time.perf_counter() - begin) / len(batch))
    return statistics.median(times)


def mitsuba_seconds(task, batch) -> tuple[float, float]:
    """The Mitsuba optimiser's time per sample and median iterations, run by the benchmark's own runner."""
    dist = Dist()
    chunks = dist.chunks(len(batch), int(task.cfg.bench.slow_batch_size))
    raw = run_optimiser(task, "mitsuba", batch, chunks, task.cfg, dist, lambda part: (task.initial(part), 0.0))
    return raw.seconds / len(batch), statistics.median(raw.steps.tolist())


def measure(light: str, samples: int, seed: int, passes: int) -> dict:
    cls = registry.task_class("illumination")
    task = cls(load_config(cls, [f"task.light={light}"]))
    batch = task.sample(samples, "test", seed)
    render = render_seconds(task, batch, passes)
    mitsuba, iterations = mitsuba_seconds(task, batch)
    return {"light": light, "samples": samples, "seed": seed, "render_workers": int(task.cfg.task.render_workers),
            "mitsuba_iterations": iterations, **bound(render, int(task.cfg.solver.steps), mitsuba)}


def bound(render: float, steps: int, mitsuba: float) -> dict:
    """The solve's floor, the largest speed-up over Mitsuba it leaves, and how many renders the bar's budget holds."""
    return {"render_s": render, "steps": steps, "floor_s": steps * render, "mitsuba_s": mitsuba,
            "max_speedup": mitsuba / (steps * render), "solve_budget_for_100x_s": mitsuba / BAR,
            "renders_in_that_budget": mitsuba / BAR / render}


def write_md(rows: list[dict], command: str) -> list[str]:
    lines = ["# Illumination: the forward model's floor against the Mitsuba optimiser", "",
             f"- Command: `{command}`",
             f"- Data: the first {rows[0]['samples']} test samples per light kind, seed {rows[0]['seed']}",
             "- One run: renders and Mitsuba timed on the same samples, one after the other", "",
             "| light | render per sample | steps | floor (steps x render) | mitsuba per sample | mitsuba iterations "
             "(median) | largest speed-up | 100x leaves | renders in it |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['light']} | {1e3 * r['render_s']:.1f} ms | {r['steps']} | {1e3 * r['floor_s']:.0f} ms "
                     f"| {r['mitsuba_s']:.2f} s | {r['mitsuba_iterations']:.0f} | {r['max_speedup']:.1f}x "
                     f"| {1e3 * r['solve_budget_for_100x_s']:.1f} ms | {r['renders_in_that_budget']:.2f} |")
    lines += ["", "A solver that renders its feedback once per step cannot beat the largest speed-up, network cost "
              "and damping's extra renders not even counted; '100x leaves' is the whole solve's time budget the bar "
              f"allows, and 'renders in it' how many forward renders fit in that budget (render workers: "
              f"{rows[0]['render_workers']})."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=3, help="timed render passes over the samples (median)")
    ap.add_argument("--light", choices=KINDS, action="append", help="one light kind (repeatable; default both)")
    ap.add_argument("--out", default="benchmarks/illumination")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rows = [measure(light, args.samples, args.seed, args.passes) for light in args.light or KINDS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "render_floor.json").write_text(json.dumps(rows, indent=2) + "\n")
    given = [f"--{k} {v}" for k, v in vars(args).items() if v != ap.get_default(k) and k != "light"]
    given += [f"--light {light}" for light in args.light or []]
    md = "\n".join(write_md(rows, " ".join(["python benchmarks/render_floor.py", *given]))) + "\n"
    (out / "render_floor.md").write_text(md)
    print(md, end="")


if __name__ == "__main__":
    main()
