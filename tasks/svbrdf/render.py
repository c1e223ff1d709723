"""Differentiable, batched Cook-Torrance rendering of a flat SVBRDF sample under a point light (the forward model).

Conventions (every module of the task and the README follow them):

- Maps x: the layout of tasks/svbrdf/layout.py; albedos in gamma space (linear = stored ** 2.2), GGX alpha = r ** 2
  for the roughness r, the shading normal normalize((nx, ny, 1)).
- The sample is the square [-1, 1]^2 of the plane z = 0; 1 scene unit = 10 cm, so the sample is 20 cm wide.
  Column j runs along world x from -1 (left) to +1 (right); row i along world y from +1 (row 0, top) to -1.
  The normal's nx is along world x, ny along world y (up in the image).
- The camera and its flash are co-located at (0, 0, 2.414) looking straight down with a 45 deg field of view, so
  the sample fills the frame; rendering is in texture space (each pixel is one texel), as Deschaintre et al. 2018.
- The flash is a point light of intensity 8: radiance = BRDF * 8 * cos(theta_l) / distance^2.
- BRDF: diffuse kd / pi plus GGX specular D * G * F / (4 cos_l cos_v), Smith G with the Schlick-GGX k = alpha / 2,
  Schlick Fresnel F = F0 + (1 - F0) (1 - v.h)^5.
- A flash photo (the observation y): linear radiance clamped to [0, 1], then raised to 1 / 2.2; (B, 3, H, W).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from tasks.svbrdf.layout import DIFFUSE, MIN_ROUGHNESS, NORMAL, ROUGHNESS, SPECULAR

GAMMA = 2.2
CAMERA_HEIGHT = 1.0 / math.tan(math.radians(22.5))  # 2.414: the 45 deg frustum just covers [-1, 1]^2
FLASH_INTENSITY = 8.0
EPS = 1e-6


def decode(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Maps -> (linear diffuse, linear F0, GGX alpha, unit normal), each (B, C, H, W)."""
    kd = x[:, DIFFUSE].clamp(0, 1).pow(GAMMA)
    ks = x[:, SPECULAR].clamp(0, 1).pow(GAMMA)
    alpha = x[:, ROUGHNESS].clamp(MIN_ROUGHNESS, 1).pow(2)
    nxy = x[:, NORMAL].clamp(-1, 1)
    n = torch.cat([nxy, torch.ones_like(nxy[:, :1])], 1)
    return kd, ks, alpha, n * length(n, 1).reciprocal()


def length(v: Tensor, dim: int) -> Tensor:
    """|v| along dim, kept: a sum of squares, which torch's CPU vector norm over a middle dim is slower
    than here."""
    return (v * v).sum(dim, keepdim=True).sqrt()


def plane(h: int, w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """World positions of the texel centres, (3, H, W): x right, y up, z = 0."""
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1
    ys = 1 - (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy, torch.zeros_like(gx)])


def shade(x: Tensor, light: Tensor, view: Tensor, intensity: float | Tensor = FLASH_INTENSITY) -> Tensor:
    """Linear radiance of maps x under K point lights from K views: light, view (B or 1, K, 3) -> (B, K, 3, H, W);
    `intensity` a scalar or one per sample (B,)."""
    if isinstance(intensity, Tensor):
        intensity = intensity.view(-1, 1, 1, 1, 1)
    kd, ks, alpha, n = (t.unsqueeze(1) for t in decode(x))  # (B, 1, C, H, W)
    p = plane(x.shape[2], x.shape[3], x.device, x.dtype)
    to_l = light[..., None, None] - p  # (B, K, 3, H, W)
    dist2 = (to_l * to_l).sum(2, keepdim=True)
    l = to_l / dist2.sqrt()  # noqa: E741 - the BRDF literature's light vector
    v = view[..., None, None] - p
    v = v / length(v, 2)
    h = l + v
    h = h / length(h, 2).clamp_min(EPS)
    n_l = (n * l).sum(2, keepdim=True)
    n_v = (n * v).sum(2, keepdim=True).clamp_min(EPS)
    n_h = (n * h).sum(2, keepdim=True).clamp(0, 1)
    v_h = (v * h).sum(2, keepdim=True).clamp(0, 1)
    a2 = alpha.pow(2)
    d = a2 / (math.pi * (n_h.pow(2) * (a2 - 1) + 1).pow(2))
    k = alpha / 2
    cos_l = n_l.clamp_min(EPS)
    g = cos_l / (cos_l * (1 - k) + k) * n_v / (n_v * (1 - k) + k)
    f = ks + (1 - ks) * (1 - v_h).pow(5)
    brdf = kd / math.pi + d * g * f / (4 * cos_l * n_v)
    return brdf * intensity * n_l.clamp_min(0) / dist2


def camera_position(batch: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The camera (and flash) position, (B, 1, 3)."""
    return torch.tensor([0.0, 0.0, CAMERA_HEIGHT], device=device, dtype=dtype).expand(batch, 1, 3)


def to_photo(radiance: Tensor) -> Tensor:
    """Linear radiance -> an 8-bit-like photo value: clamp to [0, 1], gamma 2.2."""
    return radiance.clamp(0, 1).clamp_min(1e-8).pow(1 / GAMMA)


def flash_photo(x: Tensor) -> Tensor:
    """The observation: maps (B, 9, H, W) seen by the camera under its own flash -> (B, 3, H, W) in [0, 1]."""
    return to_photo(flash_shade(x))


@functools.cache
def flash_geometry(h: int, w: int, device: torch.device | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per texel, the unit vector to the camera and flash (3, H, W) and the squared distance (1, H, W)."""
    camera = torch.tensor([0.0, 0.0, CAMERA_HEIGHT], device=device, dtype=dtype)
    to_c = camera[:, None, None] - plane(h, w, device, dtype)
    dist2 = (to_c * to_c).sum(0, keepdim=True)
    return to_c / dist2.sqrt(), dist2


def flash_terms(x: Tensor, intensity: float | Tensor) -> dict[str, Tensor]:
    """The closed-form flash render's intermediate terms (l = v = h: Fresnel is F0, one dot product n.l serves every
    cosine, and Smith's G / cos^2 is w^2), shared by the render and its hand-written gradient."""
    l, dist2 = flash_geometry(x.shape[2], x.shape[3], x.device, x.dtype)  # noqa: E741
    intensity = intensity.view(-1, 1, 1, 1) if isinstance(intensity, Tensor) else intensity
    xd, xs = x[:, DIFFUSE].clamp(0, 1), x[:, SPECULAR].clamp(0, 1)
    r = x[:, ROUGHNESS].clamp(MIN_ROUGHNESS, 1)
    nxy = x[:, NORMAL].clamp(-1, 1)
    s = (nxy * nxy).sum(1, keepdim=True).add(1).rsqrt()
    n_l = (nxy[:, :1] * l[0] + nxy[:, 1:] * l[1] + l[2]) * s
    alpha = r * r
    a2, k = alpha * alpha, alpha / 2
    n_h = n_l.clamp(0, 1)
    t = n_h * n_h * (a2 - 1) + 1
    d = a2 / (math.pi * t * t)
    cos = n_l.clamp_min(EPS)
    w = (cos * (1 - k) + k).reciprocal()
    spec = d * w * w / 4
    kd, ks = xd.pow(GAMMA), xs.pow(GAMMA)
    c = intensity * n_l.clamp_min(0) / dist2
    brdf = kd / math.pi + spec * ks
    return dict(l=l, dist2=dist2, intensity=intensity, xd=xd, xs=xs, r=r, nxy=nxy, s=s, n_l=n_l, alpha=alpha, a2=a2,
                k=k, n_h=n_h, t=t, d=d, cos=cos, w=w, spec=spec, ks=ks, c=c, brdf=brdf, rad=brdf * c)


def flash_shade(x: Tensor, intensity: float | Tensor = FLASH_INTENSITY) -> Tensor:
    """`shade` with light and view at the camera, in closed form (`flash_terms`): (B, 3, H, W), equal to
    `shade(x, cam, cam)[:, 0]` to float rounding and cheaper to evaluate and to differentiate. `intensity`: a scalar
    or one per sample (B,)."""
    return flash_terms(x, intensity)["rad"]


def flash_energy_gradient(x: Tensor, y: Tensor, intensity: float | Tensor = FLASH_INTENSITY) -> tuple[Tensor, Tensor]:
    """The gradient with respect to the maps of E = mean((flash_photo(x) - y)^2) per sample, by hand: the chain rule
    through `flash_terms` and `to_photo` written out (clamps pass the gradient at their bounds, as torch's do),
    instead of autograd's pass over the same graph. Returns (dE/dx (B, 9, H, W), the photo (B, 3, H, W))."""
    f = flash_terms(x, intensity)
    rad, c, spec, n_l, n_h, t, d, w, a2 = (f[k] for k in ("rad", "c", "spec", "n_l", "n_h", "t", "d", "w", "a2"))
    photo = to_photo(rad)
    live = (rad >= 1e-8) & (rad <= 1)
    g_rad = torch.where(live, 2 * (photo - y) / y[0].numel() * photo / (GAMMA * rad.clamp_min(1e-8)), 0)
    g_kd = g_rad * c / math.pi
    g_ks = g_rad * c * spec
    g_spec = (g_rad * f["ks"]).sum(1, keepdim=True) * c
    g_c = (g_rad * f["brdf"]).sum(1, keepdim=True)
    # spec(alpha, n_l): d through a2 and n_h, w through k and cos
    dd_da2 = (t - 2 * a2 * n_h * n_h) / (math.pi * t * t * t)
    dspec_dalpha = dd_da2 * 2 * f["alpha"] * w * w / 4 - d * w * w * w * (1 - f["cos"]) / 4
    dd_dnh = -4 * a2 * n_h * (a2 - 1) / (math.pi * t * t * t)
    dspec_dnl = (dd_dnh * w * w / 4) * ((n_l >= 0) & (n_l <= 1)) - (d * w * w * w * (1 - f["k"]) / 2) * (n_l >= EPS)
    g_nl = g_spec * dspec_dnl + g_c * f["intensity"] / f["dist2"] * (n_l >= 0)
    l, s, nxy = f["l"], f["s"], f["nxy"]  # noqa: E741
    g_x = torch.empty_like(x)
    g_x[:, DIFFUSE] = g_kd * GAMMA * f["xd"].pow(GAMMA - 1) * inside(x[:, DIFFUSE], 0, 1)
    g_x[:, SPECULAR] = g_ks * GAMMA * f["xs"].pow(GAMMA - 1) * inside(x[:, SPECULAR], 0, 1)
    g_x[:, ROUGHNESS] = g_spec * dspec_dalpha * 2 * f["r"] * inside(x[:, ROUGHNESS], MIN_ROUGHNESS, 1)
    g_x[:, NORMAL] = g_nl * s * (torch.cat([l[0:1], l[1:2]]) - n_l * s * nxy) * inside(x[:, NORMAL], -1, 1)
    return g_x, photo


def inside(v: Tensor, low: float, high: float) -> Tensor:
    """Where a clamp to [low, high] passes the gradient (its bounds included, as torch's clamp)."""
    return (v >= low) & (v <= high)


def random_pairs(batch: int, diffuse: int, specular: int, generator: torch.Generator,
                 device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Light and view positions (B, K, 3) of the training loss (Deschaintre et al. 2018): `diffuse` pairs with light and
    view drawn independently over the upper hemisphere, `specular` pairs with the light mirrored about a random texel
    so the highlight falls inside the sample."""
    def hemisphere(k: int) -> Tensor:
        u = torch.rand(batch, k, 2, generator=generator)
        cos_t = u[..., 0].clamp_min(0.1).sqrt()  # cosine-weighted, away from grazing
        sin_t = (1 - cos_t**2).sqrt()
        phi = 2 * math.pi * u[..., 1]
        dist = CAMERA_HEIGHT * torch.exp(torch.empty(batch, k, 1).uniform_(-0.5, 0.5, generator=generator))
        return torch.stack([sin_t * phi.cos(), sin_t * phi.sin(), cos_t], -1) * dist

    light_d, view_d = hemisphere(diffuse), hemisphere(diffuse)
    view_s = hemisphere(specular)
    spot = torch.empty(batch, specular, 3).uniform_(-1, 1, generator=generator)
    spot[..., 2] = 0
    light_s = 2 * spot - view_s
    light_s[..., 2] = view_s[..., 2]
    light, view = torch.cat([light_d, light_s], 1), torch.cat([view_d, view_s], 1)
    return light.to(device), view.to(device)


def quad_pairs(count: int, seed: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The evaluation's light/view pairs, (1, K, 3) each: light and view drawn uniformly over the quad [-2, 2]^2 at
    height 2.414 above the sample, the same `count` pairs for every method (seeded)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.empty(2, count, 2).uniform_(-2, 2, generator=g)
    z = torch.full((2, count, 1), CAMERA_HEIGHT)
    pos = torch.cat([xy, z], -1)
    return pos[0:1].to(device), pos[1:2].to(device)
