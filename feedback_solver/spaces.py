"""Parameter spaces: how x is stored, updated (retract), compared (distance) and kept valid (project)."""
from __future__ import annotations

import math

import roma
import torch
from torch import Tensor


class Space:
    """A manifold of parameters stored as B x dim, updated by tangent vectors of B x tangent_dim."""

    dim: int
    tangent_dim: int

    def retract(self, x: Tensor, dx: Tensor) -> Tensor:
        raise NotImplementedError

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample distance, the default supervised loss."""
        raise NotImplementedError

    def project(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def tangent_zeros(self, x: Tensor) -> Tensor:
        """A zero update for x (B x tangent_dim here; image-shaped spaces override it)."""
        return torch.zeros(x.shape[0], self.tangent_dim, dtype=x.dtype, device=x.device)

    def tangent_basis(self, x: Tensor) -> Tensor:
        """Directions along which a small update moves x (B x tangent_dim x k, orthonormal columns): all of the
        tangent by default; a space whose retraction discards some directions (a sphere's radial one) leaves them
        out, so that solver.polish spends no forward call on them."""
        dim = self.tangent_zeros(x[:1]).flatten(1).shape[1]
        return torch.eye(dim, dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)

    def check(self, x: Tensor, what: str = "x") -> Tensor:
        """Refuse wrongly shaped or non-finite parameters with a message naming them."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what}: expected shape (B, {self.dim}), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{what}: contains NaN or inf")
        return x


class Euclidean(Space):
    """R^n, optionally clamped to a box so retract never leaves the allowed domain."""

    def __init__(self, dim: int, low: float | Tensor | None = None, high: float | Tensor | None = None):
        self.dim = self.tangent_dim = dim
        self.low, self.high = low, high

    def project(self, x: Tensor) -> Tensor:
        if self.low is None and self.high is None:
            return x
        return torch.clamp(x, self.low, self.high)

    def retract(self, x: Tensor, dx: Tensor) -> Tensor:
        return self.project(x + dx)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).norm(dim=1)


def sixd_to_rotmat(x6: Tensor) -> Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt (Zhou et al. 2019): the 6D numbers are the first two columns."""
    return roma.special_gramschmidt(x6.reshape(*x6.shape[:-1], 2, 3).transpose(-1, -2))


def rotmat_to_sixd(rot: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, column after column."""
    return rot[..., :, :2].transpose(-1, -2).reshape(*rot.shape[:-2], 6)


class Rotation6D(Space):
    """J rotations in the continuous 6D representation; updated by per-joint rotation vectors in the local frame."""

    def __init__(self, n_rotations: int):
        self.n = n_rotations
        self.dim, self.tangent_dim = 6 * n_rotations, 3 * n_rotations

    def to_rotmat(self, x: Tensor) -> Tensor:
        return sixd_to_rotmat(x.reshape(x.shape[0], self.n, 6))

    def from_rotmat(self, rot: Tensor) -> Tensor:
        return rotmat_to_sixd(rot).reshape(rot.shape[0], self.dim)

    def project(self, x: Tensor) -> Tensor:
        return self.from_rotmat(self.to_rotmat(x))

    def retract(self, x: Tensor, dx: Tensor) -> Tensor:
        step = roma.rotvec_to_rotmat(dx.reshape(dx.shape[0], self.n, 3))
        return self.from_rotmat(self.to_rotmat(x) @ step)

    def angles(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-rotation geodesic angle in radians, B x J."""
        return roma.rotmat_geodesic_distance(self.to_rotmat(a), self.to_rotmat(b))

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return self.angles(a, b).mean(1)


class QuaternionTranslation(Space):
    """A rigid pose (unit quaternion XYZW, translation); the quaternion is renormalised on every retract.

    `frame` says where the rotation update acts: "local" (q * exp(dx), the object's axes) or "world" (exp(dx) * q,
    the camera's axes, where an image-space error is seen, so an image-based update need not know q to undo it).
    """

    dim, tangent_dim = 7, 6

    def __init__(self, t_low: float | None = None, t_high: float | None = None, trans_weight: float = 1.0,
                 frame: str = "local"):
        if frame not in ("local", "world"):
            raise ValueError(f"rotation frame must be local or world, got {frame!r}")
        self.t_low, self.t_high, self.trans_weight, self.frame = t_low, t_high, trans_weight, frame

    def project(self, x: Tensor) -> Tensor:
        q, t = x[:, :4], x[:, 4:]
        if self.t_low is not None or self.t_high is not None:
            t = torch.clamp(t, self.t_low, self.t_high)
        return torch.cat([roma.quat_normalize(q), t], dim=1)

    def retract(self, x: Tensor, dx: Tensor) -> Tensor:
        step = roma.rotvec_to_unitquat(dx[:, :3])
        q = roma.quat_product(step, x[:, :4]) if self.frame == "world" else roma.quat_product(x[:, :4], step)
        return self.project(torch.cat([q, x[:, 4:] + dx[:, 3:]], dim=1))

    def rotation_angle(self, a: Tensor, b: Tensor) -> Tensor:
        return roma.unitquat_geodesic_distance(roma.quat_normalize(a[:, :4]), roma.quat_normalize(b[:, :4]))

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return self.rotation_angle(a, b) + self.trans_weight * (a[:, 4:] - b[:, 4:]).norm(dim=1)


class Shell(Space):
    """Points in 3D with r_min <= |x| <= r_max and z >= min_z |x| (the camera-side half-space when min_z = 0):
    source positions, or unit directions when r_min = r_max = 1. Updates are ambient steps, projected back."""

    dim = tangent_dim = 3

    def __init__(self, r_min: float = 1.0, r_max: float = 1.0, min_z: float = 0.0):
        if not 0 < r_min <= r_max or not -1 <= min_z < 1:
            raise ValueError(f"Shell needs 0 < r_min <= r_max and -1 <= min_z < 1, got {r_min}, {r_max}, {min_z}")
        self.r_min, self.r_max, self.min_z = float(r_min), float(r_max), float(min_z)

    def project(self, x: Tensor) -> Tensor:
        """The nearest direction with an allowed elevation, at the nearest allowed radius (NaN-free gradients)."""
        r = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        u = x / r
        low = u[:, 2:] < self.min_z
        flat = u[:, :2].norm(dim=1, keepdim=True).clamp_min(1e-12)
        east = torch.zeros_like(u[:, :2])
        east[:, 0] = 1.0
        xy = torch.where(flat > 1e-9, u[:, :2] / flat, east)
        lifted = torch.cat([xy * math.sqrt(1 - self.min_z**2), torch.full_like(u[:, 2:], self.min_z)], 1)
        return torch.where(low, lifted, u) * r.clamp(self.r_min, self.r_max)

    def retract(self, x: Tensor, dx: Tensor) -> Tensor:
        return self.project(x + dx)

    def tangent_basis(self, x: Tensor) -> Tensor:
        """Unit directions (r_min = r_max): the two directions orthogonal to x (projection drops the radial one)."""
        if self.r_min != self.r_max:
            return super().tangent_basis(x)
        u = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        helper = torch.zeros_like(u)
        helper[:, 0] = 1.0
        helper[u[:, 0].abs() > 0.9] = torch.tensor([0.0, 1.0, 0.0], dtype=u.dtype, device=u.device)
        e1 = torch.linalg.cross(helper, u)
        e1 = e1 / e1.norm(dim=1, keepdim=True)
        return torch.stack([e1, torch.linalg.cross(u, e1)], 2)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).norm(dim=1)

    def contains(self, x: Tensor, tol: float = 1e-4) -> Tensor:
        """Per-sample: whether x lies in the allowed domain (within tol)."""
        r = x.norm(dim=1)
        return (r >= self.r_min - tol) & (r <= self.r_max + tol) & (x[:, 2] >= self.min_z * r - tol)

    def describe(self) -> str:
        radius = f"|x| = {self.r_min:g}" if self.r_min == self.r_max else f"{self.r_min:g} <= |x| <= {self.r_max:g}"
        return f"{radius} and z >= {self.min_z:g} |x|"


class Maps(Space):
    """Per-pixel parameter maps, B x C x H x W, each channel boxed to [low_c, high_c] (SVBRDF maps): updates are
    ambient steps clamped back; the distance is the per-sample RMSE."""

    def __init__(self, low: list[float], high: list[float]):
        if len(low) != len(high) or any(a >= b for a, b in zip(low, high)):
            raise ValueError(f"Maps needs one low < high per channel, got {low}, {high}")
        self.dim = self.tangent_dim = len(low)
        self.low = torch.tensor(low, dtype=torch.float32).view(1, -1, 1, 1)
        self.high = torch.tensor(high, dtype=torch.float32).view(1, -1, 1, 1)

    def project(self, x: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(x, self.high.to(x)), self.low.to(x))

    def retract(self, x: Tensor, dx: Tensor) -> Tensor:
        return self.project(x + dx)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).pow(2).flatten(1).mean(1).sqrt()

    def tangent_zeros(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def check(self, x: Tensor, what: str = "x") -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"{what}: expected maps of shape (B, {self.dim}, H, W), got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{what}: contains NaN or inf")
        return x


def degrees(radians: Tensor) -> Tensor:
    return radians * (180.0 / math.pi)
