"""Shaded RGB renders of a known mesh under one light (point or directional), diffuse material, through pyrender.

pyrender shades with glTF metallic-roughness PBR and writes gamma-2.2 colour: with metallic 0 and roughness 1 the
material is close to Lambertian (a faint GGX lobe with F0 = 0.04 remains). Point lights fall off with 1/d^2 and
cast no shadows (pyrender has no point-light shadow maps); directional lights cast shadows from a shadow map.

Two pyrender workarounds live here, each for a stated reason:
- pyrender's `Mesh.bounds` uses `np.infty`, gone in NumPy 2; the bounds (needed by shadow mapping) are set from
  trimesh's instead.
- its shadow maps are 2048 x 2048, a 25 ms pass on llvmpipe for a 128 x 128 image; `Lighting.shadow_map` sets the
  size (512 by default: 19 ms a render).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import torch
import trimesh
from torch import Tensor

from feedback_solver.render.gl import (
    Camera,
    by_mesh,
    check_keys,
    import_pyrender,
    intrinsics,
    object_to_camera,
    offscreen,
)

KINDS = ("point", "directional")


@dataclass(frozen=True)
class Lighting:
    """One white light and a grey diffuse material (metallic 0, roughness 1)."""

    kind: str = "point"
    intensity: float = 4.0  # pyrender units: candela for point lights, lux for directional ones
    albedo: float = 0.8
    shadows: bool = True  # directional lights only
    shadow_map: int = 512  # side of the directional shadow map, pixels (a power of two)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"light kind must be one of {KINDS}, got {self.kind!r}")


def light_frame(direction: np.ndarray) -> np.ndarray:
    """A rotation whose z axis is `direction` (pyrender's directional light shines along its node's -z)."""
    z = direction / max(np.linalg.norm(direction), 1e-12)
    up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


class ShadedRenderer:
    """RGB images (B x 3 x S x S in [0, 1]) of registered meshes; per sample a light (3) and an object rotation (4).

    The light is given relative to the object's centre in camera axes (x right, y up, z towards the camera): a point
    light's position, or the unit direction from the object towards a directional light. A batch is drawn grouped
    by mesh: each mesh has its own scene, and a switch of scene makes pyrender upload the mesh (and the shadow map)
    again: 3.5-5.6 ms a switch here (60 renders of 6 meshes), against about 8 ms for a point-light render.
    """

    def __init__(self, camera: Camera, lighting: Lighting):
        self.pyrender = pr = import_pyrender()
        import pyrender.light
        import pyrender.renderer

        pyrender.light.SHADOW_TEX_SZ = pyrender.renderer.SHADOW_TEX_SZ = int(lighting.shadow_map)
        self.camera, self.lighting = camera, lighting
        self.gl = offscreen(camera)
        self.material = pr.MetallicRoughnessMaterial(baseColorFactor=[lighting.albedo] * 3 + [1.0],
                                                     metallicFactor=0.0, roughnessFactor=1.0)
        self.nodes: dict[Hashable, tuple[Any, Any, Any]] = {}  # key -> (scene, mesh node, light node)
        shadows = lighting.kind == "directional" and lighting.shadows
        self.flags = pr.RenderFlags.SHADOWS_DIRECTIONAL if shadows else pr.RenderFlags.NONE

    def add_mesh(self, key: Hashable, mesh: trimesh.Trimesh) -> None:
        """A scene of its own per mesh (shadow maps fit the scene's bounds), uploaded once."""
        if key in self.nodes:
            return
        pr = self.pyrender
        scene = pr.Scene(bg_color=(0, 0, 0, 0), ambient_light=(0.0, 0.0, 0.0))
        scene.add(intrinsics(self.camera), pose=np.eye(4))
        body = pr.Mesh.from_trimesh(mesh, material=self.material, smooth=False)
        body._bounds = np.asarray(mesh.bounds, dtype=float)  # noqa: SLF001 - pyrender's own uses np.infty (NumPy 1)
        light = (pr.PointLight if self.lighting.kind == "point" else pr.DirectionalLight)(
            color=np.ones(3), intensity=float(self.lighting.intensity))
        self.nodes[key] = (scene, scene.add(body), scene.add(light))

    def light_pose(self, light: np.ndarray, centre: np.ndarray) -> np.ndarray:
        pose = np.eye(4)
        if self.lighting.kind == "point":
            pose[:3, 3] = centre + light
        else:
            pose[:3, :3] = light_frame(light)
            pose[:3, 3] = centre + 3.0 * light
        return pose

    def _posed(self, key: Hashable, mat: np.ndarray, light: np.ndarray | None) -> Any:
        scene, body, lamp = self.nodes[key]
        scene.set_pose(body, mat)
        if light is not None:
            scene.set_pose(lamp, self.light_pose(light, mat[:3, 3]))
        return scene

    def render_array(self, keys: Sequence[Hashable], params: Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8, as the GL read-back gives it (compact for worker processes)."""
        check_keys(keys, params, self.nodes)
        lights, mats = self.split(params)
        out = np.empty((len(keys), self.camera.size, self.camera.size, 3), dtype=np.uint8)
        for i in by_mesh(keys):
            color, _ = self.gl.render(self._posed(keys[i], mats[i], lights[i]), flags=self.flags)
            out[i] = color[..., :3]
        return out

    def depth_array(self, keys: Sequence[Hashable], params: Tensor) -> np.ndarray:
        """(B, S, S) float32 camera-space depth, 0 off the object (the light does not matter)."""
        check_keys(keys, params, self.nodes)
        _, mats = self.split(params)
        out = np.empty((len(keys), self.camera.size, self.camera.size), dtype=np.float32)
        for i in by_mesh(keys):
            out[i] = self.gl.render(self._posed(keys[i], mats[i], None), flags=self.pyrender.RenderFlags.DEPTH_ONLY)
        return out

    def split(self, params: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, 7) = light (3) + object rotation (unit quaternion XYZW) -> lights (B, 3) and object poses (B, 4, 4)."""
        if params.dim() != 2 or params.shape[1] != 7:
            raise ValueError(f"shaded renders take (B, 7) light + rotation parameters, got {tuple(params.shape)}")
        host = params.detach().double().cpu()
        poses = torch.cat([host[:, 3:], torch.zeros(len(host), 3, dtype=host.dtype)], 1)
        return host[:, :3].numpy(), object_to_camera(poses, self.camera.distance)

    @staticmethod
    def decode(arr: np.ndarray) -> Tensor:
        """render_array's uint8 images as (B, 3, S, S) floats in [0, 1]."""
        return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)

    def render(self, keys: Sequence[Hashable], params: Tensor) -> Tensor:
        return self.decode(self.render_array(keys, params)).to(params.device)


@functools.cache
def shaded_renderer(camera: Camera, lighting: Lighting) -> ShadedRenderer:
    """The process's shaded renderer for this camera and light (one GL context per process is enough)."""
    return ShadedRenderer(camera, lighting)
