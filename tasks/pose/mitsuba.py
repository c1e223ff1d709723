"""The seed's differentiable-renderer baseline: Mitsuba 3 (`llvm_ad_rgb`, `direct_projective`) + Adam on the pose.

The object is an area emitter of radiance 1 on black, so the render is its (antialiased) silhouette; the projective
integrator gives the gradients of its edges. The update acts as the learned solver's does: a rotation vector about
the camera's axes, applied to the start pose, and a translation; E = mean squared difference to the observed mask.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import roma
import torch
from omegaconf import DictConfig
from torch import Tensor

from feedback_solver.baselines import OptimResult
from feedback_solver.render import Camera
from feedback_solver.render.mitsuba import SceneCache, adam_loop, mitsuba, per_sample, sensor
from feedback_solver.spaces import QuaternionTranslation

WORLD = QuaternionTranslation(frame="world")  # the vertices turn by exp(rv) after x0's rotation


def scene_dict(camera: Camera, spp: int, ply: str) -> dict:
    """The mesh as an area emitter of radiance 1 on black: its render is the silhouette."""
    return {"type": "scene", "integrator": {"type": "direct_projective", "sppi": 0}, "sensor": sensor(camera, spp),
            "obj": {"type": "ply", "filename": ply,
                    "emitter": {"type": "area", "radiance": {"type": "rgb", "value": 1.0}},
                    "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": 0.0}}}}


@functools.cache
def scenes(camera: Camera, spp: int) -> SceneCache:
    from feedback_solver.render import objects

    return SceneCache(functools.partial(scene_dict, camera, spp), objects.mesh)


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

    def evaluate(it: int) -> tuple[Any, Tensor]:
        v = rotate(dr, opt["rv"], base) + opt["t"] + shift
        params["obj.vertex_positions"] = dr.ravel(v)
        params.update()
        img = mi.render(scene, params, seed=it)
        x = pose(np.asarray(opt["rv"]).ravel(), np.asarray(opt["t"]).ravel(), x0)
        return dr.mean(dr.square(img - target).array), x

    return adam_loop(opt, evaluate, x0, b)


def pose(rv: np.ndarray, t: np.ndarray, x0: Tensor) -> Tensor:
    """The optimiser's state as a (1, 7) pose: exp(rv) applied to x0's rotation about the camera's axes, then t."""
    dx = torch.cat([torch.tensor(rv[None], dtype=x0.dtype), torch.tensor(t[None], dtype=x0.dtype) - x0[:, 4:].cpu()], 1)
    return WORLD.retract(x0.cpu(), dx)


def optimise(task: Any, y: Tensor, ctx: dict[str, Any], x0: Tensor, cfg: DictConfig) -> OptimResult:
    """The batch one silhouette at a time (each has its own mesh and Adam state)."""
    return per_sample(lambda i: solve_one(task, y[i : i + 1], ctx["mesh"][i], x0[i : i + 1], cfg), len(y), x0.device)
