"""What a step of an illumination solve costs, on the test objects and on 100x denser copies of them:
`python benchmarks/render_floor.py`.

Timed in one run, per light kind, on the first N test samples (seed 0): the relit forward model (the geometry
buffer, `feedback_solver.render.relight`; the shipped one, and for directional lights also the one that draws
shadows) per call and sample, pyrender's render
per sample (the observation program), the geometry buffer's one-off cost per sample, and the Mitsuba optimiser's
time per iteration and sample. Then the same samples with each mesh subdivided until it has at least 100x its faces:
the relit call must cost about the same (its cost follows the image, not the mesh), pyrender's render does not.
Writes DIR/render_floor.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import trimesh

from feedback_solver import registry
from feedback_solver.bench import run_optimiser
from feedback_solver.config import load_config
from feedback_solver.distributed import Dist
from feedback_solver.render.objects import mesh
from feedback_solver.render.shaded import KINDS

DENSER = 100  # the face-count factor
BAR = 1.5  # a relit call on the dense meshes may cost at most this much more


def timed(fn, passes: int) -> float:
    """Median seconds of `fn()` over `passes` calls, after one untimed call."""
    fn()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dense_copies(names: list[str], folder: Path) -> dict[str, str]:
    """Each mesh subdivided (every face into four) until it has DENSER x its faces, written to `folder`."""
    out = {}
    for name in dict.fromkeys(names):
        m = mesh(name)
        dense = trimesh.Trimesh(m.vertices, m.faces, process=False)  # geometry only: subdivide drops the rest
        while len(dense.faces) < DENSER * len(m.faces):
            dense = dense.subdivide()
        path = folder / f"{len(out)}_{Path(name).stem}.obj"
        trimesh.exchange.export.export_mesh(dense, path)
        out[name] = str(path)
    return out


def costs(task, batch, passes: int) -> dict:
    """Per sample: the relit call, pyrender's render and the geometry buffer (mean faces of the batch's meshes)."""
    n = len(batch)
    scene = timed(lambda: task.scene(batch.ctx), 1)
    batch.ctx["scene"] = task.scene(batch.ctx)
    relit = timed(lambda: task.forward(batch.x, batch.ctx), passes)
    render = timed(lambda: task.render(batch.x, batch.ctx), passes)
    faces = statistics.mean(len(mesh(name).faces) for name in batch.ctx["mesh"])
    return {"faces": faces, "relit_s": relit / n, "render_s": render / n, "scene_s": scene / n}


def mitsuba_per_iteration(task, batch) -> float:
    """The Mitsuba optimiser's seconds per iteration and sample, from the benchmark's own runner."""
    dist = Dist()
    chunks = dist.chunks(len(batch), int(task.cfg.bench.slow_batch_size))
    raw = run_optimiser(task, "mitsuba", batch, chunks, task.cfg, dist, lambda part: (task.initial(part), 0.0))
    return raw.seconds / float(raw.steps.sum())


#: the settings measured: each light's shipped relit model, and the directional one that draws shadows
SETTINGS = {"point": ("point", []), "directional": ("directional", []),
            "directional, shadows drawn": ("directional", ["task.relit_shadows=true"])}


def measure(label: str, samples: int, seed: int, passes: int) -> dict:
    light, extra = SETTINGS[label]
    cls = registry.task_class("illumination")
    task = cls(load_config(cls, [f"task.light={light}", "task.render_workers=1", f"task.forward.{light}=relit",
                                 *extra]))
    batch = task.sample(samples, "test", seed)
    small = costs(task, batch.index(slice(0, samples)), passes)
    with tempfile.TemporaryDirectory() as tmp:
        copies = dense_copies(batch.ctx["mesh"], Path(tmp))
        dense_batch = batch.index(slice(0, samples))
        dense_batch.ctx = {"mesh": [copies[k] for k in batch.ctx["mesh"]], "rotation": batch.ctx["rotation"]}
        dense = costs(task, dense_batch, passes)
        mesh.cache_clear()
    mitsuba = mitsuba_per_iteration(task, batch.index(slice(0, min(samples, 10))))
    return {"light": label, "samples": samples, "seed": seed, "small": small, "dense": dense,
            "mitsuba_iteration_s": mitsuba, **ratios(small, dense, mitsuba)}


def ratios(small: dict, dense: dict, mitsuba: float) -> dict:
    """The figures the issue names: dense over small per relit call, and how a relit call compares."""
    return {"relit_dense_over_small": dense["relit_s"] / small["relit_s"],
            "render_dense_over_small": dense["render_s"] / small["render_s"],
            "render_over_relit": small["render_s"] / small["relit_s"],
            "mitsuba_iteration_over_relit": mitsuba / small["relit_s"]}


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def write_md(rows: list[dict], command: str) -> list[str]:
    lines = ["# Illumination: the cost of a step, on the test objects and on 100x denser copies", "",
             f"- Command: `{command}`",
             f"- Data: the first {rows[0]['samples']} test samples per light kind, seed {rows[0]['seed']}; dense: "
             f"each of their meshes subdivided to at least {DENSER}x its faces",
             "- One run; per sample; relit: the solver's forward model (one call), render: pyrender's (the "
             "observations), buffer: the geometry buffer, once per sample", "",
             "| light | meshes | faces (mean) | relit call | pyrender render | buffer (once) | Mitsuba iteration |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for kind in ("small", "dense"):
            c = r[kind]
            mitsuba = ms(r["mitsuba_iteration_s"]) if kind == "small" else "–"
            lines.append(f"| {r['light']} | {'test objects' if kind == 'small' else 'dense copies'} | "
                         f"{c['faces']:.0f} | {ms(c['relit_s'])} | {ms(c['render_s'])} | {ms(c['scene_s'])} | "
                         f"{mitsuba} |")
    lines += ["", "| light | relit: dense / small | pyrender: dense / small | pyrender render / relit call | "
              "Mitsuba iteration / relit call |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        ok = "within" if r["relit_dense_over_small"] <= BAR else "over"
        lines.append(f"| {r['light']} | {r['relit_dense_over_small']:.2f}x ({ok} the {BAR}x bar) | "
                     f"{r['render_dense_over_small']:.2f}x | {r['render_over_relit']:.1f}x | "
                     f"{r['mitsuba_iteration_over_relit']:.0f}x |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=5, help="timed passes over the samples (median)")
    ap.add_argument("--light", choices=KINDS, action="append", help="one light kind (repeatable; default both)")
    ap.add_argument("--out", default="benchmarks/illumination")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    labels = [k for k, (light, _) in SETTINGS.items() if light in (args.light or KINDS)]
    rows = [measure(label, args.samples, args.seed, args.passes) for label in labels]
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
