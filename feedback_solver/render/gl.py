"""Headless OpenGL through pyrender: EGL on Mesa by default, OSMesa as a fallback; one context per process.

pyrender is the rasteriser (nothing home-made); this module picks its platform before PyOpenGL is imported,
turns a missing GL stack into one error that names the fix, and keeps the GL context and mesh buffers alive
across calls, since creating them costs far more than a 128 x 128 render (about 2.4 ms here on llvmpipe).
"""
from __future__ import annotations

import ctypes.util
import functools
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import roma
import torch
import trimesh
from torch import Tensor

from feedback_solver.errors import OpenGLUnavailable

PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri libgl1"
FIX = (f"install the Debian packages {PACKAGES} and set PYOPENGL_PLATFORM=egl (or install libosmesa6 with "
       "PyOpenGL>=3.1.7 and set PYOPENGL_PLATFORM=osmesa)")


def choose_platform() -> str:
    """PYOPENGL_PLATFORM when set; else EGL when libEGL is installed; else OSMesa when libOSMesa is."""
    if os.environ.get("PYOPENGL_PLATFORM"):
        return os.environ["PYOPENGL_PLATFORM"]
    if ctypes.util.find_library("EGL"):
        return "egl"
    return "osmesa" if ctypes.util.find_library("OSMesa") else "egl"


def import_pyrender() -> Any:
    """pyrender, with PyOpenGL's platform chosen first (it is fixed at PyOpenGL's import)."""
    os.environ.setdefault("PYOPENGL_PLATFORM", choose_platform())
    try:
        import pyrender
    except Exception as err:  # PyOpenGL raises ImportError, AttributeError or its own errors
        raise OpenGLUnavailable(f"OpenGL is not usable ({type(err).__name__}: {err}); {FIX}") from err
    return pyrender


@dataclass(frozen=True)
class Camera:
    """A fixed pinhole camera at the origin looking down -z (y up); the canonical object sits at (0, 0, -distance)."""

    size: int = 128
    focal: float = 160.0  # pixels
    distance: float = 4.0  # scene units (the objects' bounding-sphere radius is 1)
    znear: float = 0.5
    zfar: float = 20.0


def offscreen(camera: Camera) -> Any:
    """A headless GL context of the camera's size, or one error naming the packages to install."""
    pyrender = import_pyrender()
    try:
        return pyrender.OffscreenRenderer(camera.size, camera.size)
    except Exception as err:
        raise OpenGLUnavailable(f"cannot create a headless OpenGL context "
                                f"(PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')}: {err}); {FIX}") from err


def intrinsics(camera: Camera) -> Any:
    half = camera.size / 2
    return import_pyrender().IntrinsicsCamera(camera.focal, camera.focal, half, half, camera.znear, camera.zfar)


class SilhouetteRenderer:
    """Binary masks (B x 1 x H x W, 0/1) of registered meshes under batched poses (unit quaternion XYZW, t).

    pyrender's every render walks all nodes of the scene (sorting, context checks: about 25 us each here), so with
    hundreds of registered meshes (training's procedural shapes) that walk, not the raster, set the cost. Only the
    `resident` most recently drawn meshes stay in the scene, and a batch is drawn grouped by mesh. pyrender would
    free the buffers of a mesh that leaves the scene and upload it again when it comes back, which with more meshes
    in a batch than `resident` is every pass; `keep_uploaded` stops that, so a mesh is uploaded once.
    """

    def __init__(self, camera: Camera = Camera(), resident: int = 32):
        self.pyrender = import_pyrender()
        self.camera = camera
        self.gl = offscreen(camera)
        self.scene = self.pyrender.Scene(bg_color=(0, 0, 0, 0))
        self.scene.add(intrinsics(camera), pose=np.eye(4))
        self.meshes: dict[Hashable, Any] = {}
        self.resident = max(1, int(resident))
        self.in_scene: OrderedDict[Hashable, Any] = OrderedDict()
        self.uploaded: set[Any] = set()  # pyrender meshes whose buffers live in the context

    def add_mesh(self, key: Hashable, mesh: trimesh.Trimesh) -> None:
        """Register a mesh once (a no-op for a known key); later renders refer to it by key."""
        if key not in self.meshes:  # smooth: vertices shared between faces, about 20 % faster to draw here; a
            # silhouette (SEG) reads no normal, so its masks are the flat-shaded mesh's, pixel for pixel
            self.meshes[key] = self.pyrender.Mesh.from_trimesh(mesh, smooth=True)

    def forget(self, key: Hashable) -> None:
        """Drop a registered mesh and its buffers (a no-op for an unknown key)."""
        if key in self.in_scene:
            self.scene.remove_node(self.in_scene.pop(key))
        mesh = self.meshes.pop(key, None)
        if mesh in self.uploaded:
            self.uploaded.discard(mesh)
            for p in mesh.primitives:
                p.delete()

    def keep_uploaded(self) -> None:
        """Before a render: pyrender's renderer frees the meshes of its context missing from the scene and uploads
        the scene's that are not in it; its context (a private field of pyrender 0.1.45, which setup.cfg pins) is
        set to the scene's meshes already uploaded, so it frees none and uploads only new ones."""
        renderer = self.gl._renderer  # noqa: SLF001 - pyrender has no public switch for this
        if renderer is not None:
            self.uploaded |= renderer._meshes  # noqa: SLF001
            renderer._meshes = self.uploaded & self.scene.meshes  # noqa: SLF001

    def node(self, key: Hashable) -> Any:
        """The mesh's node in the scene, added where needed; the least recently drawn ones beyond `resident` leave."""
        if key in self.in_scene:
            self.in_scene.move_to_end(key)
        else:
            self.in_scene[key] = self.scene.add(self.meshes[key])
        while len(self.in_scene) > self.resident:
            self.scene.remove_node(self.in_scene.popitem(last=False)[1])
        return self.in_scene[key]

    def render_array(self, keys: Sequence[Hashable], poses: Tensor) -> np.ndarray:
        """(B, S, S) booleans: compact, so worker processes send little back."""
        check_keys(keys, poses, self.meshes)
        mats = object_to_camera(poses, self.camera.distance)
        out = np.empty((len(keys), self.camera.size, self.camera.size), dtype=bool)
        flags = self.pyrender.RenderFlags.SEG
        for key, rows in group_by_key(keys).items():
            node = self.node(key)
            self.keep_uploaded()
            for i in rows:
                self.scene.set_pose(node, mats[i])
                color, _ = self.gl.render(self.scene, flags=flags, seg_node_map={node: (255, 255, 255)})
                out[i] = color[..., 0] > 127
        return out

    @staticmethod
    def decode(arr: np.ndarray) -> Tensor:
        """render_array's output as (B, 1, S, S) float 0/1 masks."""
        return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1)

    def render(self, keys: Sequence[Hashable], poses: Tensor) -> Tensor:
        """One render per sample; only the sample's own mesh is drawn (SEG mode skips nodes outside the map)."""
        return self.decode(self.render_array(keys, poses)).to(poses.device)


def group_by_key(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Each key's sample indices, keys in order of first appearance: a batch drawn one mesh at a time."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def by_mesh(keys: Sequence[Hashable]) -> list[int]:
    """Sample indices in drawing order, grouped by key: pyrender re-uploads what changes between two draws."""
    return [i for rows in group_by_key(keys).values() for i in rows]


def check_keys(keys: Sequence[Hashable], params: Tensor, known: dict) -> None:
    if len(keys) != params.shape[0]:
        raise ValueError(f"{len(keys)} mesh keys for {params.shape[0]} poses")
    missing = {k for k in keys if k not in known}
    if missing:
        raise KeyError(f"meshes {sorted(map(str, missing))[:3]} were never added to the renderer")


def object_to_camera(poses: Tensor, distance: float) -> np.ndarray:
    """(B, 7) poses -> (B, 4, 4) transforms: rotation about the object's centre, then the offset t."""
    rot = roma.unitquat_to_rotmat(roma.quat_normalize(poses[:, :4].detach().double().cpu()))
    mats = np.tile(np.eye(4), (poses.shape[0], 1, 1))
    mats[:, :3, :3] = rot.numpy()
    mats[:, :3, 3] = poses[:, 4:].detach().double().cpu().numpy() + np.array([0.0, 0.0, -distance])
    return mats


@functools.cache
def renderer(camera: Camera = Camera()) -> SilhouetteRenderer:
    """The process's renderer for this camera: one GL context, reused by every call."""
    return SilhouetteRenderer(camera)
