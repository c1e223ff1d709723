"""The seed's differentiable-renderer baseline: Mitsuba 3 (`llvm_ad_rgb`, `direct_projective`) + Adam on the pose.

The object is an area emitter of radiance 1 on black, so the render is its (antialiased) silhouette; the projective
integrator gives the gradients of its edges. The update acts as the learned solver's does: a rotation vector about
the camera's axes, applied to the start pose, and a translation; E = mean squared difference to the observed mask.
"""
from __future__ import annotations

import functools
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import roma
import torch
from omegaconf import DictConfig
from torch import Tensor

from feedback_solver.baselines import SNAPSHOTS, OptimResult, Stopper, fill
from feedback_solver.render import Camera
from feedback_solver.spaces import QuaternionTranslation

WORLD = QuaternionTranslation(frame="world")  # the vertices turn by exp(rv) after x0's rotation
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


class SceneCache:
    """One Mitsuba scene per mesh (loading and building its BVH costs more than a render); vertices reset per solve."""

    def __init__(self, camera: Camera, spp: int):
        self.camera, self.spp = camera, spp
        self.folder = tempfile.mkdtemp(prefix="fbsolve-mitsuba-")
        self.scenes: dict[str, tuple[Any, Any, np.ndarray]] = {}

    def get(self, name: str) -> tuple[Any, Any, np.ndarray]:
        if name not in self.scenes:
            from tasks.pose import meshes
            ply = Path(self.folder) / f"{len(self.scenes)}.ply"
            meshes.mesh(name).export(ply)
            scene = mitsuba()[1].load_dict(self.scene_dict(str(ply)))
            params = mitsuba()[1].traverse(scene)
            verts = np.asarray(params["obj.vertex_positions"], dtype=np.float64).reshape(-1, 3)
            self.scenes[name] = (scene, params, verts)
        return self.scenes[name]

    def scene_dict(self, ply: str) -> dict:
        """The pyrender camera's twin: pinhole at the origin looking down -z, y up, the same field of view."""
        mi, cam = mitsuba()[1], self.camera
        fov = math.degrees(2 * math.atan(cam.size / 2 / cam.focal))
        return {"type": "scene", "integrator": {"type": "direct_projective", "sppi": 0},
                "sensor": {"type": "perspective", "fov": fov, "fov_axis": "x", "near_clip": cam.znear,
                           "far_clip": cam.zfar,
                           "to_world": mi.ScalarTransform4f().look_at(origin=[0, 0, 0], target=[0, 0, -1], up=[0, 1, 0]),
                           "film": {"type": "hdrfilm", "width": cam.size, "height": cam.size,
                                    "rfilter": {"type": "box"}, "pixel_format": "luminance", "sample_border": True},
                           "sampler": {"type": "independent", "sample_count": self.spp}},
                "obj": {"type": "ply", "filename": ply,
                        "emitter": {"type": "area", "radiance": {"type": "rgb", "value": 1.0}},
                        "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": 0.0}}}}


@functools.cache
def scenes(camera: Camera, spp: int) -> SceneCache:
    return SceneCache(camera, spp)


def rotate(dr: Any, rv: Any, v: Any) -> Any:
    """Rodrigues' formula in Dr.Jit (differentiable; the epsilon keeps the zero rotation's gradient finite)."""
    theta = dr.sqrt(dr.squared_norm(rv) + 1e-12)
    k = rv / theta
    c, s = dr.cos(theta), dr.sin(theta)
    return v * c + dr.cross(k, v) * s + k * dr.dot(k, v) * (1 - c)


def solve_one(task: Any, y: Tensor, name: str, x0: Tensor, cfg: DictConfig) -> OptimResult:
    """Adam on (rotation vector, translation) from x0 for one silhouette; the seed's stopping rule."""
    dr, mi = mitsuba()
    b, m = cfg.baselines, cfg.baselines.mitsuba
    scene, params, verts = scenes(task.camera, int(m.spp)).get(name)
    rot0 = roma.unitquat_to_rotmat(x0[:, :4].double())[0].numpy()
    base = mi.Point3f(*(verts @ rot0.T).T.astype(np.float32))
    shift = mi.Vector3f(0.0, 0.0, -float(task.camera.distance))
    target = mi.TensorXf(y[0, 0].cpu().numpy()[..., None].astype(np.float32))
    opt = mi.ad.Adam(lr=float(m.lr))
    opt["rv"], opt["t"] = mi.Vector3f(0.0, 0.0, 0.0), mi.Vector3f(*(float(v) for v in x0[0, 4:]))
    opt.set_learning_rate({"rv": float(m.lr), "t": float(m.lr) * float(m.translation_lr_scale)})
    stop, snaps = Stopper(x0.cpu(), int(b.patience), float(b.rel_tol)), {}
    start = time.perf_counter()
    for it in range(int(b.max_iterations) + 1):
        v = rotate(dr, opt["rv"], base) + opt["t"] + shift
        params["obj.vertex_positions"] = dr.ravel(v)
        params.update()
        img = mi.render(scene, params, seed=it)
        loss = dr.mean(dr.square(img - target).array)
        x = pose(np.asarray(opt["rv"]).ravel(), np.asarray(opt["t"]).ravel(), x0)
        running = stop.update(x, torch.tensor([float(np.asarray(loss).ravel()[0])]))
        if it in SNAPSHOTS:
            snaps[it] = stop.best_x.clone()
        if not running or it == int(b.max_iterations):
            break
        dr.backward(loss)
        opt.step()
    return OptimResult(stop.best_x, stop.steps.clamp(max=int(b.max_iterations)), time.perf_counter() - start,
                       fill(snaps, stop.best_x, int(b.max_iterations)))


def pose(rv: np.ndarray, t: np.ndarray, x0: Tensor) -> Tensor:
    """The optimiser's state as a (1, 7) pose: exp(rv) applied to x0's rotation about the camera's axes, then t."""
    dx = torch.cat([torch.tensor(rv[None], dtype=x0.dtype), torch.tensor(t[None], dtype=x0.dtype) - x0[:, 4:].cpu()], 1)
    return WORLD.retract(x0.cpu(), dx)


def optimise(task: Any, y: Tensor, ctx: dict[str, Any], x0: Tensor, cfg: DictConfig) -> OptimResult:
    """The batch one silhouette at a time (each has its own mesh and Adam state)."""
    results = [solve_one(task, y[i : i + 1], ctx["mesh"][i], x0[i : i + 1], cfg) for i in range(len(y))]
    snaps = {k: torch.cat([r.snapshots[k] for r in results]) for k in results[0].snapshots}
    return OptimResult(torch.cat([r.x for r in results]).to(x0.device), torch.cat([r.steps for r in results]),
                       sum(r.seconds for r in results), snaps)
