"""Mitsuba 3 on the CPU (`llvm_ad_rgb`) for the vision tasks' differentiable-renderer baselines, set up once.

Dr.Jit needs an LLVM it can drive: Debian's libllvm19 works; Mesa's LLVM 15 crashes it. The sensor here is the
pyrender camera's twin, so a Mitsuba render lines up with the tasks' forward models pixel for pixel.
"""
from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import trimesh
from omegaconf import DictConfig
from torch import Tensor

from feedback_solver.baselines import SNAPSHOTS, OptimResult, Stopper, fill
from feedback_solver.render.gl import Camera

LLVM = "/usr/lib/x86_64-linux-gnu/libLLVM.so.19.1"
INSTALL = ("the mitsuba baseline needs `pip install -e .[baselines]` (mitsuba, drjit) and Debian's libllvm19 "
           f"(DRJIT_LIBLLVM_PATH={LLVM}; Mesa's LLVM 15 crashes Dr.Jit)")


@functools.cache
def mitsuba() -> tuple[Any, Any]:
    """(drjit, mitsuba) on the CPU's LLVM backend, imported once."""
    if "DRJIT_LIBLLVM_PATH" not in os.environ and Path(LLVM).exists():
        os.environ["DRJIT_LIBLLVM_PATH"] = LLVM
    try:
        import drjit as dr
        import mitsuba as mi
        mi.set_variant("llvm_ad_rgb")
    except Exception as err:  # ImportError, or Dr.Jit failing to load LLVM
        raise RuntimeError(f"{INSTALL} ({type(err).__name__}: {err})") from err
    return dr, mi


def sensor(camera: Camera, spp: int, pixel_format: str = "luminance") -> dict:
    """The pyrender camera's twin: pinhole at the origin looking down -z, y up, the same field of view."""
    mi = mitsuba()[1]
    fov = math.degrees(2 * math.atan(camera.size / 2 / camera.focal))
    return {"type": "perspective", "fov": fov, "fov_axis": "x", "near_clip": camera.znear, "far_clip": camera.zfar,
            "to_world": mi.ScalarTransform4f().look_at(origin=[0, 0, 0], target=[0, 0, -1], up=[0, 1, 0]),
            "film": {"type": "hdrfilm", "width": camera.size, "height": camera.size, "rfilter": {"type": "box"},
                     "pixel_format": pixel_format, "sample_border": True},
            "sampler": {"type": "independent", "sample_count": spp}}


class SceneCache:
    """One Mitsuba scene per mesh key (loading a mesh and building its BVH cost more than a render).

    Meshes reach Mitsuba as PLY files in a temporary folder that is removed when the cache goes (or at exit).
    `build(ply_path)` returns the scene dict; its mesh must be named "obj".
    """

    def __init__(self, build: Callable[[str], dict], loader: Callable[[str], trimesh.Trimesh]):
        self.build, self.loader = build, loader
        self.folder = tempfile.TemporaryDirectory(prefix="fbsolve-mitsuba-")
        self.scenes: dict[str, tuple[Any, Any, np.ndarray]] = {}

    def get(self, key: str) -> tuple[Any, Any, np.ndarray]:
        """(scene, its parameters, the mesh's vertices as loaded) for one mesh key."""
        if key not in self.scenes:
            mi = mitsuba()[1]
            ply = Path(self.folder.name) / f"{len(self.scenes)}.ply"
            self.loader(key).export(ply)
            scene = mi.load_dict(self.build(str(ply)))
            params = mi.traverse(scene)
            verts = np.asarray(params["obj.vertex_positions"], dtype=np.float64).reshape(-1, 3)
            self.scenes[key] = (scene, params, verts)
        return self.scenes[key]


def adam_loop(opt: Any, evaluate: Callable[[int], tuple[Any, Tensor]], x0: Tensor, baselines: DictConfig,
              after_step: Callable[[], None] | None = None) -> OptimResult:
    """A Mitsuba Adam under the seed's stopping rule (<= max_iterations, stop after `patience` without improvement).

    evaluate(it) renders and returns (Dr.Jit loss with its graph, the (1, D) estimate it scored); after_step, if
    given, runs after each Adam step (e.g. a projection back into the domain).
    """
    dr = mitsuba()[0]
    b = baselines
    stop, snaps = Stopper(x0.cpu(), int(b.patience), float(b.rel_tol)), {}
    start = time.perf_counter()
    for it in range(int(b.max_iterations) + 1):
        loss, x = evaluate(it)
        running = stop.update(x, torch.tensor([float(np.asarray(loss).ravel()[0])]))
        if it in SNAPSHOTS:
            snaps[it] = stop.best_x.clone()
        if not running or it == int(b.max_iterations):
            break
        dr.backward(loss)
        opt.step()
        if after_step is not None:
            after_step()
    return OptimResult(stop.best_x, stop.steps.clamp(max=int(b.max_iterations)), time.perf_counter() - start,
                       fill(snaps, stop.best_x, int(b.max_iterations)))


def per_sample(solve_one: Callable[[int], OptimResult], n: int, device: Any) -> OptimResult:
    """One Mitsuba optimisation per sample (each has its own scene and Adam state), stacked as a batch result."""
    results = [solve_one(i) for i in range(n)]
    snaps = {k: torch.cat([r.snapshots[k] for r in results]) for k in results[0].snapshots}
    return OptimResult(torch.cat([r.x for r in results]).to(device), torch.cat([r.steps for r in results]),
                       sum(r.seconds for r in results), snaps)
