"""Relighting: a known scene's geometry rasterised once per sample, its image under any light computed in torch.

Within one illumination solve only the light changes, so what a step needs is the geometry buffer of the scene:
per pixel the visible surface's fragments (4 samples a pixel, as pyrender's 4x multisampling takes them; a pixel on an
edge holds a fragment per face it sees, weighted by its share of the samples), their positions and flat normals.
`GBuffer.of` rasterises it (numpy, per sample, once); `relight` shades it under a batch of lights with pyrender's own
shader terms (glTF metallic-roughness at metallic 0 / roughness 1, 1/d^2 falloff, gamma 2.2), so under the true light
the image matches pyrender's render of the scene. Directional lights cast shadows: a depth map of a fixed set of
surface points seen from the light, rebuilt per call, stands in for pyrender's shadow map. Per call the cost grows
with the image and the point count, never with the mesh's faces.

Our own rasteriser, not pyrender's: pyrender can only hand back multisampled, resolved colours, in which face indices
blend at every edge; the fragments need the exact face per sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

#: llvmpipe's (and Direct3D's) standard 4x multisample positions within a pixel, in image coordinates (x right,
#: y down; GL's are y up, and pyrender flips the rows when it reads them back)
SAMPLES_4X = ((0.375, 0.875), (0.875, 0.625), (0.125, 0.375), (0.625, 0.125))
F0 = 0.04  # pyrender's dielectric specular reflectance (its min_roughness)
GAMMA = 2.2


@dataclass
class GBuffer:
    """One sample's visible fragments (pixel index, share of its 4 samples, position and flat normal in camera axes)
    and, for shadows, its object's surface points with their normals, relative to its centre in camera axes."""

    pixel: Tensor  # (F,) int64, row * size + column
    weight: Tensor  # (F,)
    position: Tensor  # (F, 3)
    normal: Tensor  # (F, 3)
    size: int
    points: Tensor | None = None  # (N, 3) float16 shadow casters
    point_normals: Tensor | None = None  # (N, 3) float16

    def __len__(self) -> int:
        return int(self.pixel.numel())

    @classmethod
    def of(cls, mesh: trimesh.Trimesh, pose: np.ndarray, focal: float, size: int,
           casters: tuple[np.ndarray, np.ndarray] | None = None) -> "GBuffer":
        """Rasterise `mesh` at `pose` (4 x 4, object to camera) for a pinhole camera at the origin looking down -z;
        `casters` (points, normals in object axes, see `surface`) are rotated with it."""
        vertices = np.asarray(mesh.vertices, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]
        faces = np.asarray(mesh.faces, dtype=np.int64)
        normals = np.asarray(mesh.face_normals, dtype=np.float64) @ pose[:3, :3].T
        samples = [rasterise(vertices, faces, normals, focal, size, offset) for offset in SAMPLES_4X]
        out = merge(samples, normals, focal, size)
        if casters is not None:
            rot = lambda a: torch.from_numpy(np.asarray(a) @ pose[:3, :3].T).to(torch.float16)  # noqa: E731
            out.points, out.point_normals = rot(casters[0]), rot(casters[1])
        return out


def surface(mesh: trimesh.Trimesh, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` shadow casters spread over the surface by area, with their faces' normals (seeded: a mesh always
    gives the same points)."""
    points, face = trimesh.sample.sample_surface(mesh, count, seed=0)
    return np.asarray(points), np.asarray(mesh.face_normals)[face]


def rasterise(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, focal: float, size: int,
              offset: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The nearest camera-facing face at each pixel's sample `offset` and its depth along the sample's ray
    (size * size each; face -1 where there is none)."""
    tri = vertices[faces]  # (M, 3, 3)
    front = (np.einsum("mk,mk->m", normals, tri[:, 0]) < 0) & (tri[..., 2] < 0).all(1)  # back faces culled
    index = np.nonzero(front)[0]
    tri, nrm = tri[index], normals[index]
    px = focal * tri[..., 0] / -tri[..., 2] + size / 2 - offset[0]  # sample (i, j) sits at column i, row j
    py = size / 2 - focal * tri[..., 1] / -tri[..., 2] - offset[1]
    lo_x, hi_x = np.clip(np.ceil(px.min(1)), 0, size), np.clip(np.floor(px.max(1)) + 1, 0, size)
    lo_y, hi_y = np.clip(np.ceil(py.min(1)), 0, size), np.clip(np.floor(py.max(1)) + 1, 0, size)
    nx, ny = (hi_x - lo_x).clip(0).astype(np.int64), (hi_y - lo_y).clip(0).astype(np.int64)
    counts = nx * ny
    owner = np.repeat(np.arange(len(index)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cx = lo_x[owner].astype(np.int64) + local % nx[owner]
    cy = lo_y[owner].astype(np.int64) + local // nx[owner]
    inside = covers(px[owner], py[owner], cx.astype(np.float64), cy.astype(np.float64))
    owner, cx, cy = owner[inside], cx[inside], cy[inside]
    ray = np.stack([(cx + offset[0] - size / 2) / focal, -(cy + offset[1] - size / 2) / focal, -np.ones(len(cx))], 1)
    depth = np.einsum("fk,fk->f", nrm[owner], tri[owner, 0]) / np.einsum("fk,fk->f", nrm[owner], ray)
    pixel = cy * size + cx
    order = np.lexsort((depth, pixel))  # per pixel, nearest first
    first = order[np.r_[True, pixel[order][1:] != pixel[order][:-1]]] if len(order) else order
    out, far = np.full(size * size, -1, dtype=np.int64), np.zeros(size * size)
    out[pixel[first]], far[pixel[first]] = index[owner[first]], depth[first]
    return out, far


def covers(px: np.ndarray, py: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each point (x, y) lies in its triangle (either winding: the face's side was decided by its normal)."""
    e = [(px[:, (k + 1) % 3] - px[:, k]) * (y - py[:, k]) - (py[:, (k + 1) % 3] - py[:, k]) * (x - px[:, k])
         for k in range(3)]
    return ((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0)) | ((e[0] <= 0) & (e[1] <= 0) & (e[2] <= 0))


def merge(samples: list[tuple[np.ndarray, np.ndarray]], normals: np.ndarray, focal: float, size: int) -> GBuffer:
    """The four sample buffers as fragments: a pixel's samples on one surface (normals within a few degrees, depths
    within 0.1) make one fragment, at the mean of their points; so a pixel holds a fragment per flat face it sees at
    an edge, and about one on a dense mesh, whose many faces it sees all bend alike."""
    face = np.concatenate([f for f, _ in samples])
    depth = np.concatenate([d for _, d in samples])
    pixel = np.tile(np.arange(size * size), len(samples))
    offset = np.repeat(np.asarray(SAMPLES_4X), size * size, axis=0)
    hit = face >= 0
    face, depth, pixel, offset = face[hit], depth[hit], pixel[hit], offset[hit]
    sx, sy = pixel % size + offset[:, 0], pixel // size + offset[:, 1]
    point = np.stack([(sx - size / 2) / focal, -(sy - size / 2) / focal, -np.ones(len(sx))], 1) * depth[:, None]
    normal = normals[face]
    q = np.rint(normal * 16).astype(np.int64) + 16  # 33 levels a component: about 3.6 degrees
    key = (((pixel * 33 + q[:, 0]) * 33 + q[:, 1]) * 33 + q[:, 2]) * 4096 + np.rint(depth * 10).astype(np.int64)
    key, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    mean = lambda a: np.stack([np.bincount(inverse, a[:, k]) for k in range(3)], 1) / counts[:, None]  # noqa: E731
    frag_normal = mean(normal)
    frag_normal /= np.linalg.norm(frag_normal, axis=1, keepdims=True)
    frag_pixel = key // (33**3 * 4096)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return GBuffer(torch.from_numpy(frag_pixel), as_tensor(counts / len(samples)), as_tensor(mean(point)),
                   as_tensor(frag_normal), size)


@dataclass
class Batched:
    """A batch's fragments padded to one length (B, F), so that every light-dependent term is a batched matrix
    product, with what no light changes worked out once. Padding fragments have weight 0. The geometry is stored
    component-major, (B, 3, 2F): a (B, 1, 3) x (B, 3, 2F) product is 25x faster on the CPU than (B, 2F, 3) x
    (B, 3, 1)."""

    pixel: Tensor  # (B, F) int64
    weight: Tensor  # (B, F)
    surface: Tensor  # (B, 3, 2F): the normals, then the positions (camera axes)
    nv: Tensor  # (B, F) pyrender's clamped |n . v|, v the unit vector towards the camera
    np_: Tensor  # (B, F) n . p
    r: Tensor  # (B, F) |p|, the distance to the camera
    size: int
    occluders: "Occluders | None" = None
    support: Tensor | None = None  # (B, U) int64: each sample's covered pixels, padded with size * size

    @property
    def count(self) -> int:
        return self.pixel.shape[0]

    @property
    def frags(self) -> int:
        return self.pixel.shape[1]

    @property
    def position(self) -> Tensor:
        """(B, F, 3)"""
        return self.surface[:, :, self.frags:].transpose(1, 2)

    @property
    def normal(self) -> Tensor:
        """(B, F, 3)"""
        return self.surface[:, :, :self.frags].transpose(1, 2)

    def like(self, x: Tensor) -> "Batched":
        """On `x`'s device and in its dtype (float64 for a gradient check)."""
        if self.surface.dtype == x.dtype and self.surface.device == x.device:
            return self
        cast = {k: getattr(self, k).to(x) for k in ("weight", "surface", "nv", "np_", "r")}
        o = self.occluders
        occ = None if o is None else Occluders(o.points.to(x), o.normals.to(x), o.resolution, o.bias)
        support = None if self.support is None else self.support.to(x.device)
        return Batched(self.pixel.to(x.device), size=self.size, occluders=occ, support=support, **cast)

    def subset(self, idx: Tensor | slice) -> "Batched":
        """Some samples (a damping trial's, a restart's, a chunk's): problem.index_ctx calls it."""
        idx = idx.to(self.pixel.device) if isinstance(idx, Tensor) else idx
        occ = self.occluders
        occ = None if occ is None else Occluders(occ.points[idx], occ.normals[idx], occ.resolution, occ.bias)
        support = None if self.support is None else self.support[idx]
        return Batched(self.pixel[idx], self.weight[idx], self.surface[idx], self.nv[idx], self.np_[idx],
                       self.r[idx], self.size, occ, support)

    def gather(self, images: Tensor) -> Tensor:
        """(B, U) values of (B, 1, S, S) images at each sample's covered pixels (0 at the padding): what a residual
        over the object needs, without the background's zeros."""
        flat = torch.cat([images.flatten(1), images.new_zeros(len(images), 1)], 1)
        return flat.gather(1, self.support.to(images.device))

    def rows(self, part: slice) -> "Batched":
        """A contiguous run of samples, as views (no copy)."""
        return self.subset(part)


def batched(buffers: list[GBuffer]) -> Batched:
    """The per-sample buffers as one padded batch, built once with the batch (ctx["scene"])."""
    if not buffers:
        raise ValueError("relight: no samples")
    pad = lambda name: torch.nn.utils.rnn.pad_sequence([getattr(b, name) for b in buffers], batch_first=True)  # noqa: E731
    pixel, weight, position, normal = (pad(k) for k in ("pixel", "weight", "position", "normal"))
    r = position.norm(dim=-1).clamp_min(1e-6)  # padding sits at the camera: weight 0, kept finite
    nv = ((normal * position).sum(-1) / r).abs().clamp(0.001, 1.0)
    occluders = None
    if all(b.points is not None for b in buffers):
        stack = lambda k: torch.stack([getattr(b, k) for b in buffers]).float().transpose(1, 2).contiguous()  # noqa: E731
        occluders = Occluders(stack("points"), stack("point_normals"))
    surface = torch.cat([normal, position], 1).transpose(1, 2).contiguous()
    size = buffers[0].size
    support = torch.nn.utils.rnn.pad_sequence([torch.unique(b.pixel) for b in buffers], batch_first=True,
                                              padding_value=size * size)
    return Batched(pixel, weight, surface, nv, (normal * position).sum(-1), r, size, occluders, support)


def shade(nw: Tensor, vw: Tensor, nv: Tensor, radiance: Tensor, albedo: float) -> Tensor:
    """pyrender's compute_brdf at roughness 1, metallic 0, times the cosine, from the fragment's cosines (n, v, w:
    normal, towards the camera, towards the light): linear radiance. With h = (v + w) / |v + w|, v . h is
    sqrt((1 + v . w) / 2), and GGX at alpha = 1 is the constant 1 / pi."""
    nl = nw.clamp(0.001, 1.0)
    vh = ((1 + vw) / 2).clamp(0.0, 1.0).sqrt()
    c = 1 - vh
    c2 = c * c
    fresnel = F0 + (1 - F0) * (c2 * c2 * c)
    k = 0.5  # (roughness + 1)^2 / 8
    g = nv / (nv * (1 - k) + k) * nl / (nl * (1 - k) + k)
    c_diff = albedo * (1 - F0)
    return nl * radiance * ((1 - fresnel) * c_diff + fresnel * g / (4 * nl * nv + 0.001)) / math.pi


def nn_normalize(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def encode(linear: Tensor) -> Tensor:
    """pyrender's output: gamma 2.2, clamped to [0, 1] (finite gradient at 0, where a shadow leaves nothing); as
    exp(log(v) / 2.2), which is the same power at half pow's cost on the CPU."""
    encoded = (linear.clamp_min(1e-12).log() * (1 / GAMMA)).exp()
    return torch.where(linear > 0, encoded, torch.zeros_like(linear)).clamp(max=1.0)


def image(frags: Batched, value: Tensor) -> Tensor:
    """Fragments' encoded values summed into (B, 1, S, S) grey images, each weighted by its share of the pixel."""
    s = frags.size
    flat = torch.zeros(frags.count, s * s, dtype=value.dtype, device=value.device)
    flat = flat.scatter_add(1, frags.pixel, frags.weight * value)
    return flat.view(frags.count, 1, s, s)


@dataclass
class Occluders:
    """Each sample's shadow casters: a fixed number of surface points with their normals, relative to the object's
    centre in camera axes, component-major (B, 3, N); seen from a directional light they make its depth map."""

    points: Tensor
    normals: Tensor
    resolution: int = 128  # depth-map side over the unit bounding sphere: about 1.3 texels a camera pixel
    bias: tuple[float, float] = (0.02, 1.5)  # constant, and per texel times tan(angle to the light)

    @torch.no_grad()
    def shadow(self, frags: Batched, light: Tensor, centre: Tensor) -> Tensor:
        """Per fragment (B, F), the share of the light its depth-map texels block (0 lit, 1 in shadow)."""
        w = nn_normalize(light.detach().to(self.points))
        axes = torch.stack([*frame(w), -w], 1)  # (B, 3, 3): rows e1, e2 and the depth away from the light
        ext, r = 1.05, self.resolution
        texel = 2 * ext / r
        cast = torch.bmm(axes, self.points)  # (B, 3, N): u, v, depth
        facing = torch.bmm(w[:, None, :], self.normals)[:, 0] > 0  # pyrender's shadow pass culls faces turned away
        depth = torch.where(facing, cast[:, 2], torch.full_like(cast[:, 2], math.inf))
        # each point covers the 2 x 2 texels around it, so that no holes open between points
        grid = ((cast[:, :2] + ext) / texel - 0.5).floor().long().clamp_(0, r - 2)
        base = grid[:, 1] * r + grid[:, 0]  # the splat's first texel; the unit sphere leaves a margin
        dmap = torch.full((len(w), r * r), math.inf, dtype=w.dtype, device=w.device)
        for step in (0, 1, r, r + 1):
            dmap.scatter_reduce_(1, base + step, depth, "amin")
        n_frags = frags.frags
        surface = frags.surface.detach().to(w)
        at = torch.bmm(axes, surface[:, :, n_frags:] - centre.to(w)[None, :, None])  # (B, 3, F)
        cos = torch.bmm(w[:, None, :], surface[:, :, :n_frags])[:, 0]
        tan = ((1 - cos**2).clamp_min(0).sqrt() / cos.clamp_min(1e-3)).clamp(max=10.0)
        # a face turned from the light is not in the depth map (culled), so nothing of its own can shadow it
        bias = self.bias[0] + self.bias[1] * texel * torch.where(cos > 0, tan, torch.zeros_like(tan))
        f = ((at[:, :2] + ext) / texel - 0.5).clamp_(0, r - 1.001)
        j = f.floor()
        a = f - j
        j = j.long()
        first = j[:, 1] * r + j[:, 0]
        limit = at[:, 2] - bias
        blocked = [(torch.gather(dmap, 1, first + step) < limit).to(a.dtype) for step in (0, 1, r, r + 1)]
        au, av = a[:, 0], a[:, 1]
        top = blocked[0] + au * (blocked[1] - blocked[0])
        bottom = blocked[2] + au * (blocked[3] - blocked[2])
        return top + av * (bottom - top)


def frame(w: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors completing each light direction (B, 3) to an orthonormal frame."""
    up = torch.zeros_like(w)
    up[:, 1] = 1.0
    near_up = w[:, 1].abs() > 0.9
    up[near_up] = torch.tensor([1.0, 0.0, 0.0], dtype=w.dtype, device=w.device)
    e1 = nn_normalize(torch.cross(up, w, dim=1))
    return e1, torch.cross(w, e1, dim=1)


BLOCK = 24  # samples shaded at a time: the (block, F) temporaries stay in the CPU's cache (120 at once cost 2.3x)


def relight(frags: Batched, light: Tensor, kind: str, centre: Tensor, intensity: float, albedo: float,
            shadows: bool = True) -> Tensor:
    """(B, 1, S, S) grey images under a point light at `centre` + light, or a directional light towards `light` (with
    the batch's occluders' shadows when it has them and `shadows`); shaded BLOCK samples at a time."""
    if frags.count <= BLOCK:
        return relight_block(frags, light, kind, centre, intensity, albedo, shadows)
    parts = [relight_block(frags.rows(slice(i, i + BLOCK)), light[i:i + BLOCK], kind, centre, intensity, albedo,
                           shadows) for i in range(0, frags.count, BLOCK)]
    return torch.cat(parts)


def relight_block(frags: Batched, light: Tensor, kind: str, centre: Tensor, intensity: float, albedo: float,
                  shadows: bool) -> Tensor:
    """`relight` of one block of samples."""
    fr = frags.like(light)
    n_frags = fr.frags
    if kind == "point":
        pos = centre.to(light) + light  # (B, 3)
        dots = torch.bmm(pos[:, None, :], fr.surface)[:, 0]  # (B, 2F): n . L, then p . L
        nl_, pl = dots[:, :n_frags], dots[:, n_frags:]
        r2 = fr.r * fr.r
        dist2 = ((pos * pos).sum(1, keepdim=True) - 2 * pl + r2).clamp_min(1e-12)
        inv = dist2.rsqrt()
        nw, vw = (nl_ - fr.np_) * inv, (r2 - pl) * inv / fr.r
        radiance = intensity * inv * inv
    else:
        w = nn_normalize(light)
        dots = torch.bmm(w[:, None, :], fr.surface)[:, 0]
        nw, vw = dots[:, :n_frags], -dots[:, n_frags:] / fr.r
        radiance = torch.full_like(nw, intensity)
    value = shade(nw, vw, fr.nv, radiance, albedo)
    if kind == "directional" and shadows and fr.occluders is not None:
        value = value * (1 - fr.occluders.shadow(fr, light, centre).to(value))
    return image(fr, encode(value))
