"""The pose solver's per-render cost against the mesh's face count: one shape (the duck, a test object) at 10^3, 10^4
and 10^5 faces, each drawn as itself (what an observation costs) and as the solver's proxy (`task.proxy_faces`).

    python benchmarks/render_cost.py [--out benchmarks/render_cost] [--renders 200] [--repeats 5]

Renders are interleaved over the meshes and repeated; the report gives each one's median (this machine is shared),
the proxy's faces and its silhouette IoU against the full mesh in the proxy check's views and in task-like poses.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from feedback_solver import registry
from feedback_solver.config import load_config
from feedback_solver.render import objects
from feedback_solver.render.gl import renderer

TARGETS = (1_000, 10_000, 100_000)


def densities(folder: Path) -> dict[int, str]:
    """The duck remeshed to each target face count (subdivided past it, then decimated to it), as STL files."""
    duck = objects.mesh("duck.obj")
    merged = trimesh.Trimesh(np.asarray(duck.vertices), np.asarray(duck.faces))
    out = {}
    for target in TARGETS:
        m = merged
        while len(m.faces) < target:
            m = m.subdivide()
        m = objects.decimate(m, target) if len(m.faces) > target else m
        path = folder / f"duck_{target}.stl"
        m.export(path)
        out[len(m.faces)] = str(path.resolve())
    return out


def time_renders(gl, keys: dict[str, object], poses: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per render of each registered key, interleaved."""
    times: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(repeats):
        for label, key in keys.items():
            t = time.perf_counter()
            gl.render_array([key] * len(poses), poses)
            times[label].append((time.perf_counter() - t) / len(poses))
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/render_cost")
    p.add_argument("--renders", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cls = registry.task_class("pose")
    task = cls(load_config(cls, ["task.robosuite.enabled=false", "task.render_workers=1"]))
    meshes = densities(out)
    gen = torch.Generator().manual_seed(0)
    poses = task.random_poses(args.renders, gen)
    gl = renderer(task.camera)
    rows, keys = [], {}
    for faces, name in meshes.items():
        proxy = task.solver_meshes([name])[0]
        full_mesh, proxy_mesh = objects.mesh(name), objects.mesh(proxy)
        gl.add_mesh(name, full_mesh)
        gl.add_mesh(proxy, proxy_mesh)
        keys[f"{faces} full"], keys[f"{faces} solver"] = name, proxy
        rows.append({"faces": faces, "solver_faces": len(proxy_mesh.faces),
                     "iou_check_min": float(objects.silhouette_iou(full_mesh, proxy_mesh, task.camera).min()),
                     "iou_task_min": float(objects.silhouette_iou(full_mesh, proxy_mesh, task.camera, poses).min())})
    gl.render_array([keys[next(iter(keys))]] * 8, poses[:8])  # warm-up
    med = time_renders(gl, keys, poses, args.repeats)
    for r in rows:
        r["full_ms"], r["solver_ms"] = 1e3 * med[f"{r['faces']} full"], 1e3 * med[f"{r['faces']} solver"]
    solver = [r["solver_ms"] for r in rows]
    result = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "seed": 0,
              "renders": args.renders, "repeats": args.repeats, "proxy_faces": int(task.cfg.task.proxy_faces),
              "proxy_iou": float(task.cfg.task.proxy_iou), "rows": rows,
              "solver_max_over_min": max(solver) / min(solver)}
    (out / "render_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result)
    for f in out.glob("duck_*.stl"):
        f.unlink()
    print((out / "render_cost.md").read_text())
    return 0


def write_report(out: Path, r: dict) -> None:
    """The table and a bar chart of per-render time, full mesh against the solver's proxy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Per-render cost of the pose solver's forward model", "",
             f"- Command: `{r['command']}` (seed 0; {r['renders']} task poses per mesh, {r['repeats']} interleaved "
             "repeats, median)",
             "- Mesh: the duck (a test object) remeshed to each face count; the solver draws its proxy "
             f"(`task.proxy_faces={r['proxy_faces']}`, IoU >= {r['proxy_iou']}), observations the full mesh", "",
             "| faces | solver's proxy faces | IoU min (check views) | IoU min (task poses) | full mesh ms/render | "
             "solver ms/render |", "| --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        lines.append(f"| {row['faces']} | {row['solver_faces']} | {row['iou_check_min']:.4f} | "
                     f"{row['iou_task_min']:.4f} | {row['full_ms']:.2f} | {row['solver_ms']:.2f} |")
    lines += ["", f"The solver's per-render time varies {r['solver_max_over_min']:.2f}x from the cheapest to the "
              "dearest of the three meshes.", "", "![per-render time](render_cost.png)", ""]
    (out / "render_cost.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(r["rows"]))
    ax.bar(x - 0.2, [row["full_ms"] for row in r["rows"]], 0.4, label="full mesh (observation)")
    ax.bar(x + 0.2, [row["solver_ms"] for row in r["rows"]], 0.4, label="solver's proxy")
    ax.set_xticks(x, [f"{row['faces']:,} faces" for row in r["rows"]])
    ax.set_ylabel("ms per 128 px render")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "render_cost.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
