"""Headless OpenGL through pyrender: EGL on Mesa by default, OSMesa as a fallback; one context per process.

Mesa rasterises and pyrender gives the context, the camera and (for shaded images) the renderer; this module picks
the platform before PyOpenGL is imported, turns a missing GL stack into one error that names the fix, and keeps the
GL context and mesh buffers alive across calls, since creating them costs far more than a 128 x 128 render.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
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


VERTEX_LAYER = """#version 330 core
#extension GL_ARB_shader_viewport_layer_array : require
layout(location = 0) in vec3 position;
uniform mat4 P;
uniform mat4 M;
uniform int layer;
void main() { gl_Position = P * M * vec4(position, 1.0); gl_Layer = layer; }
"""
VERTEX = """#version 330 core
layout(location = 0) in vec3 position;
uniform mat4 P;
uniform mat4 M;
void main() { gl_Position = P * M * vec4(position, 1.0); }
"""
GEOMETRY = """#version 330 core
layout(triangles) in;
layout(triangle_strip, max_vertices = 3) out;
uniform int layer;
void main() {
    for (int i = 0; i < 3; i++) { gl_Layer = layer; gl_Position = gl_in[i].gl_Position; EmitVertex(); }
    EndPrimitive();
}
"""
FRAGMENT = """#version 330 core
out vec4 colour;
void main() { colour = vec4(1.0); }
"""


def platform(width: int, height: int) -> Any:
    """A current headless GL context (pyrender's EGL or OSMesa platform) with a default framebuffer of this size."""
    import_pyrender()
    name = os.environ["PYOPENGL_PLATFORM"]
    try:
        if name == "osmesa":
            from pyrender.platforms.osmesa import OSMesaPlatform as Platform
        else:
            from pyrender.platforms.egl import EGLPlatform as Platform
        context = Platform(width, height)
        context.init_context()
        context.make_current()
    except Exception as err:
        raise OpenGLUnavailable(f"cannot create a headless OpenGL context (PYOPENGL_PLATFORM={name}: "
                                f"{type(err).__name__}: {err}); {FIX}") from err
    return context


def has_extension(name: str) -> bool:
    """Whether the current GL context offers an extension."""
    from OpenGL import GL

    return any(GL.glGetStringi(GL.GL_EXTENSIONS, i).decode() == name
               for i in range(int(GL.glGetIntegerv(GL.GL_NUM_EXTENSIONS))))


class SilhouetteRenderer:
    """Binary masks (B x 1 x H x W, 0/1) of registered meshes under batched poses (unit quaternion XYZW, t).

    Mesa rasterises; pyrender gives the context and the camera's projection. The drawing is our own few GL calls,
    since pyrender draws one image per call into a multisample buffer and reads back its colour and depth (1.74 ms a
    1000-face mask in benchmarks/render_cost at b62a94f, 0.27 ms now). Up to `layers` masks are drawn into the
    layers of one single-channel texture array (the layer set in the vertex shader where
    GL_ARB_shader_viewport_layer_array allows, else in a geometry shader), each at the same viewport (so a mask does
    not depend on its place in the batch), with no depth test (a silhouette is the union of the front faces'
    coverage, as pyrender's SEG mode draws it: the same pixels), and read back at once. A mesh's buffers are
    uploaded once, at `add_mesh`.
    """

    def __init__(self, camera: Camera = Camera(), layers: int = 64, vertex_layer: bool | None = None):
        self.camera, self.layers = camera, int(layers)
        self.context = platform(camera.size, camera.size)  # first: it names the fix when there is no GL to import
        from OpenGL import GL
        from OpenGL.GL import shaders

        self.GL = GL
        if vertex_layer is None:
            vertex_layer = has_extension("GL_ARB_shader_viewport_layer_array")
        stages = [(VERTEX_LAYER, GL.GL_VERTEX_SHADER)] if vertex_layer else \
            [(VERTEX, GL.GL_VERTEX_SHADER), (GEOMETRY, GL.GL_GEOMETRY_SHADER)]  # a layer set per triangle: dearer
        self.program = shaders.compileProgram(*(shaders.compileShader(code, kind) for code, kind in
                                                stages + [(FRAGMENT, GL.GL_FRAGMENT_SHADER)]))
        self.texture = GL.glGenTextures(1)
        GL.glBindTexture(GL.GL_TEXTURE_2D_ARRAY, self.texture)
        GL.glTexStorage3D(GL.GL_TEXTURE_2D_ARRAY, 1, GL.GL_R8, camera.size, camera.size, self.layers)
        self.framebuffer = GL.glGenFramebuffers(1)
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.framebuffer)
        GL.glFramebufferTexture(GL.GL_FRAMEBUFFER, GL.GL_COLOR_ATTACHMENT0, self.texture, 0)
        if GL.glCheckFramebufferStatus(GL.GL_FRAMEBUFFER) != GL.GL_FRAMEBUFFER_COMPLETE:
            raise OpenGLUnavailable(f"this OpenGL ({GL.glGetString(GL.GL_RENDERER).decode()}) cannot draw into a "
                                    f"layered framebuffer (OpenGL 3.3 core); {FIX}")
        GL.glUseProgram(self.program)
        projection = intrinsics(camera).get_projection_matrix(camera.size, camera.size)
        GL.glUniformMatrix4fv(GL.glGetUniformLocation(self.program, "P"), 1, GL.GL_TRUE,
                              projection.astype(np.float32))
        self.model = GL.glGetUniformLocation(self.program, "M")
        self.layer = GL.glGetUniformLocation(self.program, "layer")
        self.pixels = np.empty((self.layers, camera.size, camera.size), dtype=np.uint8)
        self.meshes: dict[Hashable, tuple[int, int, int, int]] = {}  # key -> (vertex array, 2 buffers, indices)

    def add_mesh(self, key: Hashable, mesh: trimesh.Trimesh) -> None:
        """Register a mesh once (a no-op for a known key); later renders refer to it by key."""
        if key in self.meshes:
            return
        GL = self.GL
        self.context.make_current()
        vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
        faces = np.ascontiguousarray(mesh.faces, dtype=np.uint32)
        array = GL.glGenVertexArrays(1)
        GL.glBindVertexArray(array)
        vbo, ebo = GL.glGenBuffers(2)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, vbo)
        GL.glBufferData(GL.GL_ARRAY_BUFFER, vertices.nbytes, vertices, GL.GL_STATIC_DRAW)
        GL.glEnableVertexAttribArray(0)
        GL.glVertexAttribPointer(0, 3, GL.GL_FLOAT, False, 12, None)
        GL.glBindBuffer(GL.GL_ELEMENT_ARRAY_BUFFER, ebo)
        GL.glBufferData(GL.GL_ELEMENT_ARRAY_BUFFER, faces.nbytes, faces, GL.GL_STATIC_DRAW)
        GL.glBindVertexArray(0)
        self.meshes[key] = (int(array), int(vbo), int(ebo), int(faces.size))

    def forget(self, key: Hashable) -> None:
        """Drop a registered mesh and its buffers (a no-op for an unknown key)."""
        entry = self.meshes.pop(key, None)
        if entry is not None:
            self.context.make_current()
            self.GL.glDeleteVertexArrays(1, [entry[0]])
            self.GL.glDeleteBuffers(2, [entry[1], entry[2]])

    def render_array(self, keys: Sequence[Hashable], poses: Tensor) -> np.ndarray:
        """(B, S, S) booleans: compact, so worker processes send little back."""
        check_keys(keys, poses, self.meshes)
        mats = object_to_camera(poses, self.camera.distance).astype(np.float32)
        out = np.empty((len(keys), self.camera.size, self.camera.size), dtype=bool)
        self.begin()
        for first in range(0, len(keys), self.layers):
            last = min(len(keys), first + self.layers)
            out[first:last] = self.draw_layers(keys[first:last], mats[first:last])
        return out

    def begin(self) -> None:
        """The GL state of a silhouette pass: this context, program and framebuffer; back faces culled."""
        GL = self.GL
        self.context.make_current()
        GL.glBindFramebuffer(GL.GL_FRAMEBUFFER, self.framebuffer)
        GL.glUseProgram(self.program)
        for flag in (GL.GL_DEPTH_TEST, GL.GL_BLEND, GL.GL_MULTISAMPLE, GL.GL_SCISSOR_TEST):
            GL.glDisable(flag)
        GL.glEnable(GL.GL_CULL_FACE)
        GL.glCullFace(GL.GL_BACK)
        GL.glViewport(0, 0, self.camera.size, self.camera.size)
        GL.glClearColor(0.0, 0.0, 0.0, 1.0)

    def draw_layers(self, keys: Sequence[Hashable], mats: np.ndarray) -> np.ndarray:
        """At most `layers` masks, one layer each, and one readback of the texture array."""
        from OpenGL.raw.GL.VERSION.GL_1_1 import glGetTexImage  # PyOpenGL's wrapper cannot size an array texture

        GL = self.GL
        GL.glClear(GL.GL_COLOR_BUFFER_BIT)
        bound = None
        for j, key in enumerate(keys):
            array, _, _, count = self.meshes[key]
            if array != bound:
                GL.glBindVertexArray(array)
                bound = array
            GL.glUniform1i(self.layer, j)
            GL.glUniformMatrix4fv(self.model, 1, GL.GL_TRUE, mats[j])
            GL.glDrawElements(GL.GL_TRIANGLES, count, GL.GL_UNSIGNED_INT, None)
        GL.glBindVertexArray(0)
        GL.glBindTexture(GL.GL_TEXTURE_2D_ARRAY, self.texture)
        GL.glPixelStorei(GL.GL_PACK_ALIGNMENT, 1)
        glGetTexImage(GL.GL_TEXTURE_2D_ARRAY, 0, GL.GL_RED, GL.GL_UNSIGNED_BYTE,
                      self.pixels.ctypes.data_as(ctypes.c_void_p))
        return self.pixels[:len(keys), ::-1] > 127  # GL's rows run bottom up

    @staticmethod
    def decode(arr: np.ndarray) -> Tensor:
        """render_array's output as (B, 1, S, S) float 0/1 masks."""
        return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1)

    def render(self, keys: Sequence[Hashable], poses: Tensor) -> Tensor:
        """One mask per sample; only the sample's own mesh is drawn."""
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
