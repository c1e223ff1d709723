"""The differentiable-renderer baseline: Mitsuba 3 (`llvm_ad_rgb`, `direct` integrator) + Adam on the light.

The scene is the forward model's twin: the same camera, the mesh at its known rotation, a diffuse BSDF of the
albedo the pyrender material shades with (base colour x 0.96), one point light of the same intensity (or a
directional light of the same irradiance), and gamma 2.2 on the linear render. The loss is the mean squared
difference to the observed image; after every Adam step the light is projected back into the task's domain.
pyrender's faint specular lobe, its shadow-map shadows and its lack of point-light shadows are not reproduced,
so Mitsuba's optimum sits slightly off the true light.
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
from feedback_solver.render.shaded import Lighting

DIFFUSE = 0.96  # pyrender's c_diff = base colour x (1 - 0.04) for a dielectric


def scene_dict(camera: Camera, lighting: Lighting, spp: int, ply: str) -> dict:
    value = {"type": "rgb", "value": float(lighting.intensity)}
    light = ({"type": "point", "position": [0.0, 0.0, 0.0], "intensity": value} if lighting.kind == "point" else
             {"type": "directional", "direction": [0.0, 0.0, -1.0], "irradiance": value})
    return {"type": "scene", "integrator": {"type": "direct"}, "sensor": sensor(camera, spp, "rgb"),
            "obj": {"type": "ply", "filename": ply, "face_normals": True,
                    "bsdf": {"type": "diffuse", "reflectance": {"type": "rgb", "value": lighting.albedo * DIFFUSE}}},
            "light": light}


@functools.cache
def scenes(camera: Camera, lighting: Lighting, spp: int) -> SceneCache:
    from feedback_solver.render import objects

    return SceneCache(functools.partial(scene_dict, camera, lighting, spp), objects.mesh)


def place_light(mi: Any, params: Any, kind: str, light: Any, centre: np.ndarray) -> None:
    """Write the (differentiable) light into the scene: a point's position, or a directional light's frame."""
    if kind == "point":
        params["light.position"] = mi.Point3f(light + mi.Vector3f(*(float(c) for c in centre)))
    else:  # the emitter's +z is the direction of travel: from the light towards the object
        params["light.to_world"] = mi.Transform4f().look_at(origin=mi.Point3f(0.0, 0.0, 0.0), target=-light,
                                                            up=mi.Vector3f(0.0, 1.0, 0.0))


def solve_one(task: Any, y: Tensor, name: str, rotation: Tensor, x0: Tensor, cfg: DictConfig) -> OptimResult:
    """Adam on the light from x0 for one image, projected onto the domain each step; the seed's stopping rule."""
    dr, mi = mitsuba()
    b, m = cfg.baselines, cfg.baselines.mitsuba
    kind, space = task.light, task.space
    scene, params, verts = scenes(task.camera, task.lighting, int(m.spp)).get(name)
    centre = np.array([0.0, 0.0, -float(task.camera.distance)])
    rot = roma.unitquat_to_rotmat(rotation.double().cpu())[0].numpy()
    params["obj.vertex_positions"] = mi.Float((verts @ rot.T + centre).astype(np.float32).ravel())
    target = mi.TensorXf(y[0].expand(3, -1, -1).permute(1, 2, 0).cpu().numpy().astype(np.float32))
    opt = mi.ad.Adam(lr=float(m.lr[kind]))  # per light kind: positions move units, directions fractions
    opt["x"] = mi.Vector3f(*(float(v) for v in x0[0]))

    def evaluate(it: int) -> tuple[Any, Tensor]:
        place_light(mi, params, kind, opt["x"], centre)
        params.update()
        img = dr.power(dr.clip(mi.render(scene, params, seed=it), 1e-4, 1.0), 1.0 / 2.2)
        return dr.mean(dr.square(img - target).array), torch.tensor(np.asarray(opt["x"]).reshape(1, 3), dtype=x0.dtype)

    def project() -> None:
        opt["x"] = mi.Vector3f(*space.project(torch.tensor(np.asarray(opt["x"]).reshape(1, 3)))[0].tolist())

    return adam_loop(opt, evaluate, x0, b, project)


def optimise(task: Any, y: Tensor, ctx: dict[str, Any], x0: Tensor, cfg: DictConfig) -> OptimResult:
    """The batch one image at a time (each has its own mesh, rotation and Adam state)."""
    return per_sample(lambda i: solve_one(task, y[i : i + 1], ctx["mesh"][i], ctx["rotation"][i : i + 1],
                                          x0[i : i + 1], cfg), len(y), x0.device)
