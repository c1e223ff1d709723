"""Procedural SVBRDF materials for training and testing the SVBRDF task without a downloaded data set.

Families (each can be a material's base; noise, cracks, scratches and bumps also serve as overlays, and a material
typically stacks one or two overlays on its base, e.g. bricks + noise stains + scratches):
- ``noise``: fBm gradient noise blotches or marble-like veins blending two colours;
- ``tiles``: square tiles or running-bond bricks with grout that differs in colour and roughness and is recessed;
- ``wood``: distorted, elongated concentric rings with fine grain streaks;
- ``cracks``: Worley (jittered-grid Voronoi) cells with thin dark recessed crack lines along the cell edges;
- ``scratches``: random thin line segments changing roughness, specular and (slightly) the height;
- ``bumps``: a height field of fBm, ridged noise, pebble domes or hammered dimples, seen through the normals.

Conventions (tasks/svbrdf/CONVENTIONS): maps are (9, H, W) float32 — diffuse 0:3 and specular F0 3:6 in gamma
space in [0, 1], roughness 6 linear in [0.02, 1], normal 7:9 as (nx, ny) = (n.x / n.z, n.y / n.z) in [-1, 1].
Column j is world x (right), row 0 is the top (world y up); heights are in world units (the sample spans 2) and
turn into normals by ``height_to_normal`` as nx = -dh/dx, ny = -dh/dy.

Patterns live in continuous coordinates u (columns), v (rows) in [0, 1), and every random draw is made before and
independently of the resolution, so material k of a seed is the same material at 64, 128 or 256 px (only the
anti-aliasing of lines thinner than a pixel and the finite-difference normals depend on the size).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from tasks.svbrdf.layout import MIN_ROUGHNESS

FAMILIES: tuple[str, ...] = ("noise", "tiles", "wood", "cracks", "scratches", "bumps")
OVERLAYS: tuple[str, ...] = ("noise", "bumps", "cracks", "scratches")  # applied in this order (scratches on top)
_LAT = 64  # period of the gradient-noise lattice, in lattice cells
_NOISE_STD = 0.21  # empirical std of one octave of _gradient_noise, to standardise fBm
_FBM_SLOPE = 15.5  # empirical p99 |grad| (per uv) of unit-std _fbm at base frequency 1, to size bump heights

Array = np.ndarray
_DIRS = np.stack([np.cos(np.arange(256) * (2.0 * np.pi / 256)),
                  np.sin(np.arange(256) * (2.0 * np.pi / 256))]).astype(np.float32)  # lattice gradient choices


# ----------------------------------------------------------------------------------------------------------------
# coordinates, shaping and noise primitives
# ----------------------------------------------------------------------------------------------------------------
def _coords(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates u (columns) and v (rows) in [0, 1): patterns are defined on these, not on pixels."""
    c = ((np.arange(size) + 0.5) / size).astype(np.float32)
    v, u = np.meshgrid(c, c, indexing="ij")
    return u, v


def _rotate(u: Array, v: Array, angle: float) -> tuple[Array, Array]:
    """Rotate coordinates about the sample centre, so patterns need not be axis-aligned."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - 0.5, v - 0.5
    return 0.5 + c * du - s * dv, 0.5 + s * du + c * dv


def _smoothstep(e0: float | Array, e1: float | Array, x: Array) -> Array:
    """Hermite step from 0 (x <= e0) to 1 (x >= e1), the usual soft threshold of procedural textures."""
    t = np.clip((x - e0) / np.maximum(e1 - e0, 1e-12), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A scale parameter (frequency, width) drawn evenly across octaves rather than biased to the large end."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _gradient_noise(rng: np.random.Generator, x: Array, y: Array, draw_only: bool = False) -> Array | None:
    """Perlin gradient noise on a random periodic lattice: smooth, zero-mean, no plateaus, so clean bump normals."""
    # draw_only consumes the same random numbers and returns None: skipped octaves keep later draws aligned
    direction = rng.integers(0, _DIRS.shape[1], _LAT * _LAT, dtype=np.uint8)
    ox, oy = rng.uniform(0.0, _LAT, 2)
    if draw_only:
        return None
    gx, gy = _DIRS[0].take(direction), _DIRS[1].take(direction)
    x, y = x + float(ox), y + float(oy)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    ix, iy = x0.astype(np.int32) & (_LAT - 1), y0.astype(np.int32) & (_LAT - 1)  # _LAT is a power of two
    ix1, row0, row1 = (ix + 1) & (_LAT - 1), iy * _LAT, ((iy + 1) & (_LAT - 1)) * _LAT

    def corner(k: Array, dx: Array, dy: Array) -> Array:
        return gx.take(k) * dx + gy.take(k) * dy

    n00 = corner(row0 + ix, fx, fy)
    n10 = corner(row0 + ix1, fx - 1.0, fy)
    n01 = corner(row1 + ix, fx, fy - 1.0)
    n11 = corner(row1 + ix1, fx - 1.0, fy - 1.0)
    sx = fx * fx * fx * (fx * (fx * 6.0 - 15.0) + 10.0)
    sy = fy * fy * fy * (fy * (fy * 6.0 - 15.0) + 10.0)
    top = n00 + sx * (n10 - n00)
    bot = n01 + sx * (n11 - n01)
    return top + sy * (bot - top)


def _fbm(rng: np.random.Generator, u: Array, v: Array, freq: float, octaves: int = 5, gain: float = 0.5,
         stretch: float = 1.0) -> Array:
    """Unit-std fractal sum of randomly rotated gradient-noise octaves, base `freq` per uv: the workhorse pattern."""
    # stretch > 1 squeezes features across u (grain along v); octaves finer than the pixel grid are skipped (their
    # draws still made): anti-aliasing and speed
    total = np.zeros_like(u)
    amp, f, norm = 1.0, freq, 0.0
    nyquist = 0.5 * u.shape[-1]
    for _ in range(octaves):
        a = rng.uniform(0.0, 2.0 * np.pi)
        if f * stretch > nyquist:
            _gradient_noise(rng, u, v, draw_only=True)
        else:
            ru, rv = _rotate(u, v, a) if stretch == 1.0 else (u, v)
            total += amp * _gradient_noise(rng, ru * f * stretch, rv * f)
        norm += amp * amp
        amp *= gain
        f *= 2.0
    return total / (_NOISE_STD * np.sqrt(norm))


def _fbm_height(rng: np.random.Generator, u: Array, v: Array, freq: float, slope: float) -> Array:
    """An fBm height field (world units) whose steepest slopes are about `slope`, whatever its frequency."""
    return _fbm(rng, u, v, freq) * (slope / (_FBM_SLOPE * freq)) * 2.0  # x2: uv spans 1, world spans 2


def _worley(rng: np.random.Generator, u: Array, v: Array, cells: int, jitter: float = 0.9
            ) -> tuple[Array, Array, Array]:
    """Jittered-grid Voronoi (F1 in uv, distance to the nearest cell edge in uv, nearest id): cells and cracks."""
    # one point per cell of a cells x cells grid, searched over each pixel's 3x3 neighbouring cells
    g = cells
    pts = (0.5 + jitter * (rng.random((g + 2, g + 2, 2)) - 0.5)).astype(np.float32)  # padded by one cell
    x, y = u * g, v * g
    cx = np.clip(np.floor(x).astype(np.int32), 0, g - 1)
    cy = np.clip(np.floor(y).astype(np.int32), 0, g - 1)
    big = np.full(x.shape, np.inf, dtype=np.float32)
    f1, f2, p1x, p1y, p2x, p2y = big, big.copy(), x, y, x, y
    id1 = np.zeros(x.shape, dtype=np.int32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            jx, jy = cx + (dx + 1), cy + (dy + 1)
            k = jy * (g + 2) + jx
            qx = (cx + dx) + pts[..., 0].ravel().take(k)
            qy = (cy + dy) + pts[..., 1].ravel().take(k)
            d = (qx - x) ** 2 + (qy - y) ** 2
            first, second = d < f1, d < f2
            second_only = second & ~first
            f2 = np.where(first, f1, np.where(second_only, d, f2))
            p2x = np.where(first, p1x, np.where(second_only, qx, p2x))
            p2y = np.where(first, p1y, np.where(second_only, qy, p2y))
            f1 = np.where(first, d, f1)
            p1x, p1y = np.where(first, qx, p1x), np.where(first, qy, p1y)
            id1 = np.where(first, k, id1)
    sep = np.sqrt((p2x - p1x) ** 2 + (p2y - p1y) ** 2)
    edge = (f2 - f1) / (2.0 * np.maximum(sep, 1e-6))  # exact distance to the bisector of the two nearest
    return np.sqrt(f1) / g, edge / g, id1


def _line_profiles(dist: Array, width: float, px: float) -> tuple[Array, Array]:
    """AA coverage and a >= 2 px groove profile of a line of full `width` (uv): visible and normal-friendly."""
    # coverage has a 1 px ramp and is dimmed when thinner than a pixel; the groove is smooth for finite differences
    weff = max(width, 0.75 * px)
    cover = np.clip((0.5 * weff + 0.5 * px - dist) / px, 0.0, 1.0) * (width / weff)
    groove = 1.0 - _smoothstep(0.0, max(1.5 * width, 2.0 * px), dist)
    return cover, groove


# ----------------------------------------------------------------------------------------------------------------
# colours, layers and the material being built
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class _Layer:
    """One homogeneous sub-material (gamma diffuse, gamma F0, roughness) that masks blend between."""
    diffuse: Array
    specular: Array
    rough: float


@dataclass
class _Palette:
    """The 2-3 sub-materials of one material: a main one, a related or contrasting second, a third (grout/stains)."""
    a: _Layer
    b: _Layer
    c: _Layer


def _random_colour(rng: np.random.Generator, wood: bool = False) -> Array:
    """A gamma-space RGB colour, mostly moderately saturated (brownish for wood) so materials look plausible."""
    if wood:
        h, s, val = rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.75), rng.uniform(0.3, 0.85)
    else:
        h, s, val = rng.random(), rng.beta(1.2, 2.5), rng.uniform(0.12, 0.92)
    return np.array(colorsys.hsv_to_rgb(h, s, val))


def _related_colour(rng: np.random.Generator, rgb: Array) -> Array:
    """A colour near `rgb` in hue but lighter or darker, the usual second tone of a natural material."""
    h, s, val = colorsys.rgb_to_hsv(*np.clip(rgb, 0.0, 1.0))
    h = (h + rng.normal(0.0, 0.04)) % 1.0
    s = float(np.clip(s * rng.uniform(0.6, 1.4), 0.0, 1.0))
    val = float(np.clip(val * rng.uniform(0.4, 1.4), 0.03, 1.0))
    return np.array(colorsys.hsv_to_rgb(h, s, val))


def _random_layer(rng: np.random.Generator, colour: Array, metal_p: float = 0.12) -> _Layer:
    """A sub-material: mostly dielectric with greyish F0 0.05-0.5 (gamma), sometimes metal (high tinted F0)."""
    if rng.random() < metal_p:
        tint = rng.uniform(0.0, 0.7)
        hue = colour / max(float(colour.max()), 1e-3)
        spec = rng.uniform(0.55, 0.97) * ((1.0 - tint) + tint * hue)
        return _Layer(colour * rng.uniform(0.02, 0.25), spec, rng.uniform(0.05, 0.6))
    spec = _loguniform(rng, 0.05, 0.5) * (1.0 + rng.normal(0.0, 0.03, 3))
    return _Layer(colour, spec, rng.uniform(0.05, 1.0))


def _random_palette(rng: np.random.Generator, wood: bool = False, metal_p: float = 0.12) -> _Palette:
    """Three sub-materials: b is a tone of a (60 %) or a contrasting colour, c is independent."""
    ca = _random_colour(rng, wood)
    if wood:  # late wood: a darker tone of the early wood
        cb = ca ** rng.uniform(1.2, 2.0) * rng.uniform(0.55, 0.85)
    else:
        cb = _related_colour(rng, ca) if rng.random() < 0.6 else _random_colour(rng)
    cc = _random_colour(rng)
    a = _random_layer(rng, ca, metal_p)
    b = _random_layer(rng, cb, 0.0 if wood else metal_p)
    if rng.random() < 0.5:  # often the two tones share one finish
        b = _Layer(b.diffuse, a.specular.copy(), a.rough + rng.normal(0.0, 0.05))
    return _Palette(a, b, _random_layer(rng, cc, 0.05))


@dataclass
class _Mat:
    """Maps under construction: gamma diffuse (3,H,W), gamma specular (3,H,W), roughness (H,W), height (H,W)."""
    diffuse: Array
    specular: Array
    rough: Array
    height: Array

    @classmethod
    def fill(cls, layer: _Layer, shape: tuple[int, int]) -> _Mat:
        """A uniform material of one layer, the canvas every base family paints on."""
        ones = np.ones(shape, dtype=np.float32)
        return cls(layer.diffuse.astype(np.float32)[:, None, None] * ones,
                   layer.specular.astype(np.float32)[:, None, None] * ones,
                   float(layer.rough) * ones, np.zeros(shape, dtype=np.float32))

    def blend(self, layer: _Layer, mask: Array) -> None:
        """Linearly blend towards a layer where mask (in [0, 1]) is high: the 'mixed by masks' rule."""
        m = np.clip(mask, 0.0, 1.0)
        self.diffuse += m * (layer.diffuse[:, None, None] - self.diffuse)
        self.specular += m * (layer.specular[:, None, None] - self.specular)
        self.rough += m * (layer.rough - self.rough)

    def shade(self, factor: Array) -> None:
        """Scale the diffuse brightness (dirt, per-tile or per-cell variation) without touching the finish."""
        self.diffuse *= np.maximum(factor, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# base families: each paints a whole material from a palette
# ----------------------------------------------------------------------------------------------------------------
def _base_noise(rng: np.random.Generator, u: Array, v: Array, px: float, pal: _Palette) -> _Mat:
    """Two tones mixed by fBm blotches or by marble-like veins, with a matching gentle relief."""
    mat = _Mat.fill(pal.a, u.shape)
    freq = _loguniform(rng, 1.5, 10.0)
    n = _fbm(rng, u, v, freq, gain=rng.uniform(0.4, 0.65))
    if rng.random() < 0.35:
        s, _ = _rotate(u, v, rng.uniform(0.0, np.pi))
        vein = 1.0 - np.abs(np.sin(np.pi * (rng.uniform(1.0, 4.0) * s + rng.uniform(0.2, 0.6) * n)))
        mask = vein ** rng.uniform(4.0, 20.0)
    else:
        t, c = rng.normal(0.0, 0.5), rng.uniform(0.05, 0.8)
        mask = _smoothstep(t - c, t + c, n)
    mat.blend(pal.b, mask)
    mat.shade(1.0 + rng.uniform(0.0, 0.15) * _fbm(rng, u, v, freq * 4.0, octaves=3))
    mat.height += _fbm_height(rng, u, v, freq, rng.uniform(0.02, 0.3)) * (n / 3.0 + 0.5 * mask)
    return mat


def _tile_layout(rng: np.random.Generator, u: Array, v: Array) -> tuple[Array, Array, float]:
    """Joint distance (uv), per-tile random value and smaller tile side for a random grid or running bond."""
    # a square/2:1 grid or a brick bond, possibly turned 90 degrees or slightly rotated
    bricks = rng.random() < 0.6
    cols = int(rng.integers(2, 7))
    aspect = rng.uniform(1.8, 3.5) if bricks else float(rng.choice([1.0, 1.0, 2.0]))
    tw = 1.0 / cols
    th = tw / aspect
    shift = (0.5 if rng.random() < 0.8 else rng.uniform(0.2, 0.4)) if bricks else 0.0
    angle = (np.pi / 2 if rng.random() < 0.3 else 0.0) + (rng.normal(0.0, 0.1) if rng.random() < 0.2 else 0.0)
    table = rng.random((64, 64)).astype(np.float32)
    ru, rv = _rotate(u, v, angle)
    ru, rv = ru + rng.random(), rv + rng.random()  # random phase of the joints
    y = rv / th
    row = np.floor(y)
    x = ru / tw + shift * row
    col = np.floor(x)
    fx, fy = x - col, y - row
    dist = np.minimum(np.minimum(fx, 1.0 - fx) * tw, np.minimum(fy, 1.0 - fy) * th)
    tile = table[row.astype(np.int64) % 64, col.astype(np.int64) % 64]
    return dist, tile, min(tw, th)


def _grout_layer(rng: np.random.Generator, tint: _Layer, tile_value: float) -> _Layer:
    """Cement-like grout, usually contrasting in value with the tiles (so the joints show), dull and rough."""
    light = (tile_value < 0.45) == (rng.random() < 0.75)
    value = rng.uniform(0.45, 0.85) if light else rng.uniform(0.05, 0.25)
    hue = tint.diffuse / max(float(tint.diffuse.max()), 1e-3)
    colour = value * (1.0 - rng.uniform(0.0, 0.3) * (1.0 - hue))
    return _Layer(colour, np.full(3, rng.uniform(0.03, 0.12)), rng.uniform(0.6, 1.0))


def _base_tiles(rng: np.random.Generator, u: Array, v: Array, px: float, pal: _Palette) -> _Mat:
    """Tiles or bricks: per-tile tones from a to b, recessed grout under bevelled, noise-chipped edges."""
    dist, tile, side = _tile_layout(rng, u, v)
    dist = dist + rng.uniform(0.0, 0.004) * _fbm(rng, u, v, _loguniform(rng, 10.0, 40.0), octaves=3)
    gw = rng.uniform(0.05, 0.2) * side * 0.5  # half width of the grout joint
    bevel = max(rng.uniform(0.002, 0.012), 2.0 * px)
    grout = np.clip((gw + 0.5 * px - dist) / px, 0.0, 1.0)
    mat = _Mat.fill(pal.a, u.shape)
    mat.blend(pal.b, tile ** rng.uniform(0.5, 4.0) * rng.uniform(0.3, 1.0))
    mat.shade(1.0 + rng.uniform(0.0, 0.3) * (tile - 0.5))
    mat.shade(1.0 + rng.uniform(0.0, 0.15) * _fbm(rng, u, v, _loguniform(rng, 4.0, 20.0), octaves=4))
    mat.blend(_grout_layer(rng, pal.c, float(pal.a.diffuse.mean() + pal.b.diffuse.mean()) / 2.0), grout)
    depth = rng.uniform(0.004, 0.02)
    mat.height += depth * _smoothstep(gw, gw + bevel, dist)
    mat.height += _fbm_height(rng, u, v, _loguniform(rng, 4.0, 16.0), rng.uniform(0.0, 0.15))
    return mat


def _base_wood(rng: np.random.Generator, u: Array, v: Array, px: float, pal: _Palette) -> _Mat:
    """Wood: distorted elongated rings (a log cut along its grain), darker grooved late wood, grain streaks."""
    angle = float(rng.choice([0.0, np.pi / 2])) + rng.normal(0.0, 0.05)
    s, t = _rotate(u, v, angle)  # s across the grain, t along it
    s0, t0 = rng.uniform(-0.5, 1.5), rng.uniform(-1.0, 2.0)
    squash = _loguniform(rng, 0.05, 0.4)
    warp = rng.uniform(0.005, 0.05) * _fbm(rng, s, t, rng.uniform(1.0, 4.0), octaves=3)
    r = np.sqrt((s - s0) ** 2 + (squash * (t - t0)) ** 2) + warp
    phase = r * _loguniform(rng, 4.0, 20.0)
    frac = phase - np.floor(phase)
    late = np.minimum(frac / 0.85, 1.0) ** rng.uniform(2.0, 8.0) * (1.0 - _smoothstep(0.85, 1.0, frac))
    mat = _Mat.fill(pal.a, u.shape)
    mat.blend(pal.b, late)
    grain = _fbm(rng, s, t, rng.uniform(2.0, 6.0), octaves=3, stretch=_loguniform(rng, 15.0, 60.0))
    mat.shade(1.0 + rng.uniform(0.03, 0.15) * grain)
    mat.height += rng.uniform(0.0005, 0.003) * (-late) + rng.uniform(0.0, 0.0005) * grain
    return mat


def _crack_lines(rng: np.random.Generator, u: Array, v: Array, px: float, cells: int, width: float
                 ) -> tuple[Array, Array, Array, Array]:
    """Wiggly Voronoi edges: coverage, groove profile, F1 (uv) and cell ids, cells warped by fBm so cracks wander."""
    amp = rng.uniform(0.2, 0.8) / cells
    wu = u + amp * 0.3 * _fbm(rng, u, v, cells * rng.uniform(0.5, 1.5), octaves=4)
    wv = v + amp * 0.3 * _fbm(rng, u, v, cells * rng.uniform(0.5, 1.5), octaves=4)
    f1, edge, ids = _worley(rng, wu, wv, cells)
    cover, groove = _line_profiles(edge, width, px)
    return cover, groove, f1, ids


def _base_cracks(rng: np.random.Generator, u: Array, v: Array, px: float, pal: _Palette) -> _Mat:
    """Cracked surface (mud, flagstones, old paint): toned, slightly domed cells split by dark recessed cracks."""
    cells = int(rng.integers(3, 11))
    cover, groove, f1, ids = _crack_lines(rng, u, v, px, cells, _loguniform(rng, 0.002, 0.012))
    per_cell = rng.random((cells + 2) ** 2).astype(np.float32).take(ids)
    mat = _Mat.fill(pal.a, u.shape)
    mat.blend(pal.b, per_cell * rng.uniform(0.2, 1.0))
    mat.shade(1.0 + rng.uniform(0.0, 0.15) * _fbm(rng, u, v, _loguniform(rng, 3.0, 20.0), octaves=4))
    _paint_cracks(rng, mat, cover)
    mat.height -= rng.uniform(0.0, 0.6) / cells * (f1 * cells) ** 2 * 0.1  # cells bulge a little
    mat.height -= rng.uniform(0.002, 0.01) * groove
    return mat


def _base_scratches(rng: np.random.Generator, u: Array, v: Array, px: float, pal: _Palette) -> _Mat:
    """A plain finish (often metal) with faint mottling, covered densely with scratches."""
    mat = _Mat.fill(pal.a, u.shape)
    mat.shade(1.0 + rng.uniform(0.0, 0.1) * _fbm(rng, u, v, _loguniform(rng, 2.0, 10.0)))
    mat.rough *= 1.0 + rng.uniform(0.0, 0.2) * _fbm(rng, u, v, _loguniform(rng, 2.0, 10.0), octaves=3)
    _over_scratches(rng, u, v, px, mat, pal, count=(80, 300))
    return mat


def _bump_field(rng: np.random.Generator, u: Array, v: Array) -> Array:
    """A bumpy height field (world units, p99 slope around 0.5): fBm, ridged fBm, pebble domes or hammered dimples."""
    kind = rng.integers(4)
    if kind == 0:
        return _fbm_height(rng, u, v, _loguniform(rng, 2.0, 16.0), 0.5)
    if kind == 1:
        freq = _loguniform(rng, 2.0, 10.0)
        ridged = 1.0 - np.abs(_fbm(rng, u, v, freq, octaves=4)) / 2.0
        return ridged * (0.5 / (_FBM_SLOPE * freq)) * 2.0
    cells = int(rng.integers(4, 17))
    f1, _, _ = _worley(rng, u, v, cells, jitter=rng.uniform(0.5, 1.0))
    x = f1 * cells  # ~0 at a point, ~0.5-0.7 at the cell edges
    if kind == 2:
        return 0.5 / cells * np.sqrt(np.clip(1.0 - (x / 0.6) ** 2, 0.0, 1.0))  # pebbles
    return 0.5 / cells * x ** 2  # hammered metal: dimples with ridges between


def _base_bumps(rng: np.random.Generator, u: Array, v: Array, px: float, pal: _Palette) -> _Mat:
    """A strongly bumpy surface whose tone follows the relief (b in the hollows or on the tops)."""
    h = _bump_field(rng, u, v)
    lo, hi = np.percentile(h, [5, 95])
    rel = (h - lo) / max(hi - lo, 1e-12)
    if rng.random() < 0.5:
        rel = 1.0 - rel
    mat = _Mat.fill(pal.a, u.shape)
    mat.blend(pal.b, _smoothstep(0.2, 0.9, rel) * rng.uniform(0.3, 1.0))
    mat.shade(1.0 + rng.uniform(0.0, 0.15) * _fbm(rng, u, v, _loguniform(rng, 4.0, 20.0), octaves=4))
    mat.height += h
    return mat


# ----------------------------------------------------------------------------------------------------------------
# overlays: each modifies a material in place
# ----------------------------------------------------------------------------------------------------------------
def _paint_cracks(rng: np.random.Generator, mat: _Mat, cover: Array) -> None:
    """Darken, roughen and dull a material under crack coverage (dirt and shadow in the crack)."""
    dark = _Layer(mat.diffuse.mean(axis=(1, 2)) * rng.uniform(0.05, 0.35), np.full(3, rng.uniform(0.02, 0.08)),
                  rng.uniform(0.7, 1.0))
    mat.blend(dark, cover)


def _over_noise(rng: np.random.Generator, u: Array, v: Array, px: float, mat: _Mat, pal: _Palette) -> None:
    """Stains of the third layer and fBm roughness variation (wear, dirt, polish)."""
    n = _fbm(rng, u, v, _loguniform(rng, 1.5, 8.0))
    t, c = rng.normal(0.8, 0.5), rng.uniform(0.1, 0.8)
    mat.blend(pal.c, _smoothstep(t - c, t + c, n) * rng.uniform(0.2, 0.8))
    mat.rough *= 1.0 + rng.uniform(0.05, 0.4) * _fbm(rng, u, v, _loguniform(rng, 2.0, 12.0), octaves=4)
    mat.height += _fbm_height(rng, u, v, _loguniform(rng, 2.0, 10.0), rng.uniform(0.0, 0.1))


def _over_bumps(rng: np.random.Generator, u: Array, v: Array, px: float, mat: _Mat, pal: _Palette) -> None:
    """An extra relief under the existing pattern (uneven plaster, hammered finish)."""
    mat.height += _bump_field(rng, u, v) * rng.uniform(0.1, 0.6)


def _over_cracks(rng: np.random.Generator, u: Array, v: Array, px: float, mat: _Mat, pal: _Palette) -> None:
    """Thin cracks over part of the surface, faded in and out by an fBm coverage mask."""
    cells = int(rng.integers(4, 17))
    cover, groove, _, _ = _crack_lines(rng, u, v, px, cells, _loguniform(rng, 0.001, 0.006))
    n = _fbm(rng, u, v, _loguniform(rng, 1.0, 4.0), octaves=3)
    t = rng.uniform(-1.0, 0.8)
    keep = _smoothstep(t, t + 0.4, n)
    _paint_cracks(rng, mat, cover * keep)
    mat.height -= rng.uniform(0.001, 0.006) * groove * keep


def _over_scratches(rng: np.random.Generator, u: Array, v: Array, px: float, mat: _Mat, pal: _Palette,
                    count: tuple[int, int] = (15, 120)) -> None:
    """Thin random segments, mostly one direction, shifting roughness/specular/diffuse and grooving the height."""
    # all segments are drawn before rasterising, so the material does not depend on the resolution
    n = int(rng.integers(*count))
    main = rng.uniform(0.0, np.pi)
    spread = float(rng.choice([0.05, 0.3, np.pi]))
    centres = rng.uniform(-0.1, 1.1, (n, 2))
    angles = main + rng.normal(0.0, spread, n)
    half = np.array([_loguniform(rng, 0.01, 0.35) for _ in range(n)])
    widths = np.array([_loguniform(rng, 0.0006, 0.004) for _ in range(n)])
    strength = rng.uniform(0.3, 1.0, n)
    cover = np.zeros_like(u)
    groove = np.zeros_like(u)
    size = u.shape[0]
    for (cu, cv), a, hl, w, s in zip(centres, angles, half, widths, strength):
        du, dv = np.cos(a) * hl, np.sin(a) * hl
        pad = max(w, 2.0 * px) * 2.0 + px
        j0, j1 = _pixel_span(cu - abs(du) - pad, cu + abs(du) + pad, size)
        i0, i1 = _pixel_span(cv - abs(dv) - pad, cv + abs(dv) + pad, size)
        if j0 >= j1 or i0 >= i1:
            continue
        pu, pv = u[i0:i1, j0:j1] - (cu - du), v[i0:i1, j0:j1] - (cv - dv)
        t = np.clip((pu * 2 * du + pv * 2 * dv) / (4.0 * hl * hl), 0.0, 1.0)
        d = np.hypot(pu - t * 2 * du, pv - t * 2 * dv)
        c, g = _line_profiles(d, w, px)
        np.maximum(cover[i0:i1, j0:j1], s * c, out=cover[i0:i1, j0:j1])
        np.maximum(groove[i0:i1, j0:j1], s * g * (w / 0.004), out=groove[i0:i1, j0:j1])
    shift = rng.uniform(0.15, 0.5) * (1.0 if pal.a.rough < 0.5 else -1.0)  # shiny gets rougher, rough shinier
    mat.rough += shift * cover
    mat.specular *= 1.0 + rng.uniform(0.0, 0.6) * cover[None]
    mat.diffuse *= 1.0 + rng.uniform(-0.3, 0.3) * cover[None]
    mat.height -= rng.uniform(0.0002, 0.002) * groove


def _pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """The pixel index range [i0, i1) whose centres may fall in [lo, hi] (uv), clipped to the image."""
    return max(int(np.floor(lo * size)), 0), min(int(np.ceil(hi * size)) + 1, size)


_BASES: dict[str, Callable[..., _Mat]] = {
    "noise": _base_noise, "tiles": _base_tiles, "wood": _base_wood,
    "cracks": _base_cracks, "scratches": _base_scratches, "bumps": _base_bumps,
}
_OVERLAY_FNS: dict[str, Callable[..., None]] = {
    "noise": _over_noise, "bumps": _over_bumps, "cracks": _over_cracks, "scratches": _over_scratches,
}


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def height_to_normal(h: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Normals (..., 2, H, W) as (nx, ny) = strength * (-dh/dx, -dh/dy) of heights h (..., H, W) in world units,
    with x right over columns and y UP over rows (the sample spans 2 both ways), clipped to [-1, 1]."""
    height, width = h.shape[-2:]
    d_row, d_col = torch.gradient(h, spacing=1.0, dim=(-2, -1))  # per pixel; one-sided at the borders
    nx = -d_col * (width / 2.0)  # dh/dx = dh/dcol / (2 / W)
    ny = d_row * (height / 2.0)  # dh/dy = -dh/drow / (2 / H), y decreasing down the rows
    return (strength * torch.stack([nx, ny], dim=-3)).clamp(-1.0, 1.0)


def _slope_p99(h: Array) -> float:
    """99th percentile of the unclipped slope |grad h| (world units), to set a material's normal strength."""
    d_row, d_col = np.gradient(h)
    return float(np.percentile(np.hypot(d_col * (h.shape[1] / 2.0), d_row * (h.shape[0] / 2.0)), 99.0))


def generate_one(rng: np.random.Generator, size: int, family: str | None = None) -> torch.Tensor:
    """One random material (9, size, size) float32 in the conventions: a base `family` (random if None) plus
    0-2 overlays, a random palette, and a normal strength drawn so the steepest 1 % of slopes reach 0.15-0.9."""
    if family is None:
        family = str(rng.choice(FAMILIES))
    if family not in _BASES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    u, v = _coords(size)
    px = 1.0 / size
    metal_p = {"scratches": 0.35, "wood": 0.0}.get(family, 0.12)
    pal = _random_palette(rng, wood=family == "wood", metal_p=metal_p)
    mat = _BASES[family](rng, u, v, px, pal)
    candidates = [o for o in OVERLAYS if o != family]
    k = int(rng.choice([0, 1, 2], p=[0.15, 0.5, 0.35]))
    chosen = set(rng.choice(candidates, k, replace=False).tolist())
    for name in OVERLAYS:  # fixed order: relief and stains first, scratches last
        if name in chosen:
            _OVERLAY_FNS[name](rng, u, v, px, mat, pal)
    target = _loguniform(rng, 0.15, 0.9)
    p99 = _slope_p99(mat.height)
    strength = target / p99 if p99 > 1e-9 else 0.0
    normal = height_to_normal(torch.from_numpy(mat.height.astype(np.float32)), strength).numpy()
    maps = np.concatenate([
        np.clip(mat.diffuse, 0.0, 1.0),
        np.clip(mat.specular, 0.0, 1.0),
        np.clip(mat.rough, MIN_ROUGHNESS, 1.0)[None],
        normal,
    ])
    return torch.from_numpy(maps.astype(np.float32))


def generate(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 9, size, size) float32 materials; material k of seed s comes from its own generator seeded with
    (s, k), so it is the same whatever n is (seeds must be non-negative integers)."""
    if n < 0 or size < 2 or seed < 0:
        raise ValueError(f"need n >= 0, size >= 2, seed >= 0; got n={n}, size={size}, seed={seed}")
    if n == 0:
        return torch.zeros(0, 9, size, size)
    return torch.stack([generate_one(np.random.default_rng([seed, k]), size) for k in range(n)])
