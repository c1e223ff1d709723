"""Mitsuba 3 on the CPU (`llvm_ad_rgb`) for the vision tasks' differentiable-renderer baselines, set up once.

Dr.Jit needs an LLVM it can drive: Debian's libllvm19 works; Mesa's LLVM 15 crashes it. The sensor here is the
pyrender camera's twin, so a Mitsuba render lines up with the tasks' forward models pixel for pixel.
"""
from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import trimesh

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
