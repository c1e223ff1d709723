"""Real material map sets -> 9-channel SVBRDF maps (the SVBRDF task's real test set and user material folders).

Test set: the `gk/fantasy` textures of Debian's `cube2-data` package (Cube 2 / Sauerbraten; 14 materials:
castell_*, iron_*, rock_formation_*, stone_ground_*, wooden_*). `ensure_gk_fantasy()` finds or fetches them:
`$FBSOLVE_DATA/cube2-data/gk/fantasy` (default `~/.cache/feedback_solver/...`), else a copy of an installed
`/usr/share/games/cube2/packages/gk/fantasy`, else `apt-get download cube2-data` (173 MB, no root needed) and
`dpkg-deb --fsys-tarfile | tar -x` of the jpg/png maps only (about 7 MB kept).

Folder layout: `find_materials(folder)` takes every subfolder holding images as one material (or `folder` itself
when it directly holds a colour map). File names are matched case-insensitively on the stem's ending (separators
`_ - . space`; a trailing resolution token such as `_2k` or `_1024` is ignored); extensions png, jpg, jpeg, tif,
tiff, bmp, tga (8- or 16-bit; alpha ignored):

| role      | gk / Cube 2 style | common names                                                          |
|-----------|-------------------|-----------------------------------------------------------------------|
| colour    | `*_cc`            | basecolor, base_color, albedo, diffuse, diff, color, colour           |
| normal    | `*_nm`            | normal, nrm, nor, `*_n`; normalgl, normal_gl, nor_gl; normaldx, normal_dx, nor_dx |
| specular  | `*_sc`            | specular, spec                                                        |
| roughness | -                 | roughness, rough                                                      |
| gloss     | -                 | glossiness, gloss                                                     |
| (ignored) | `*_hm` height     | height, disp, displacement (kept in `MaterialFiles.height` for checks only) |

A colour map is required (ValueError naming the folder otherwise); `*_cc_c*` files (gk's composite copies),
metalness, AO and .dds/.exr files are ignored.

Conversions to the task conventions (channels 0:3 diffuse gamma, 3:6 specular F0 gamma, 6 roughness, 7:9 normal):
- diffuse = colour RGB / 255, kept as stored (already gamma-encoded sRGB-ish, like the convention).
- normal: n = 2 rgb / 255 - 1, renormalised; green is +y UP in the image for `green_up=True` (OpenGL) and -y (row
  direction) for `green_up=False` (DirectX). gk `_nm` maps are green-DOWN (DirectX-like): against the gradient
  of their `_hm` height map (nx = -dh/dx, ny = -dh/dy, y up) the green channel correlates at -0.59..-0.95 read
  as green-up and +0.59..+0.95 read as green-down on all 14 materials, red at +0.45..+0.95 (so the height map is
  bright = high). Common names are assumed OpenGL (green up) except the explicit `*dx` names. Resampled as unit
  vectors, renormalised, z clamped >= 0.1, stored as (n.x / n.z, n.y / n.z) clipped to [-1, 1].
- gk `_sc` (grey specular intensity s = mean RGB / 255): F0 (gamma, grey) = 0.1 + 0.5 s, i.e. linear 0.006..0.33;
  roughness = clip(0.9 - 0.7 s, 0.15, 0.9) (shinier where the specular map is bright).
- common `specular`: F0 in gamma space directly (RGB / 255); without a roughness/gloss map, roughness is derived
  from its grey level s with the same formula as above.
- roughness = grey / 255; gloss: roughness = 1 - grey / 255; both clipped to [0.02, 1].
- no specular map: F0 = 0.04 ** (1 / 2.2) = 0.232 (dielectric); no specular and no roughness map: roughness 0.6.
- no normal map: flat (0, 0).

Sizes: maps of one material may differ in resolution (gk: colour 1024, specular 256); the working resolution is
the smallest map's (width, height), crops are given in it, and each map is resampled straight from its own pixels
(area averaging when shrinking, bilinear when enlarging).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from feedback_solver.images import open_image
from feedback_solver.progress import bar

SYSTEM_GK = Path("/usr/share/games/cube2/packages")
GK_SUBDIR = Path("gk") / "fantasy"
DEB_PREFIX = "./usr/share/games/cube2/packages/"
GK_MAP_RE = re.compile(r"_(cc|nm|sc|hm)\.(jpe?g|png)$", re.IGNORECASE)
FETCH_HINT = "install the package `cube2-data` or set FBSOLVE_DATA to a folder holding cube2-data/gk/fantasy"

IMAGE_EXTS = (".png", ".tif", ".tiff", ".bmp", ".tga", ".jpg", ".jpeg")  # also the preference order on ties
GK_GREEN_UP = False  # verified against the height maps, see the module docstring
F0_DIELECTRIC = 0.04 ** (1 / 2.2)
DEFAULT_ROUGHNESS = 0.6
MIN_NZ = 0.1

# (stem ending, role, green_up for normals); earlier entries win when a folder holds several files for one role
NAME_KEYS: tuple[tuple[str, str, bool | None], ...] = (
    ("cc", "gk_color", None), ("nm", "gk_normal", GK_GREEN_UP), ("sc", "gk_specular", None), ("hm", "height", None),
    ("basecolor", "color", None), ("base_color", "color", None), ("albedo", "color", None),
    ("diffuse", "color", None), ("diff", "color", None), ("color", "color", None), ("colour", "color", None),
    ("normalgl", "normal", True), ("normal_gl", "normal", True), ("nor_gl", "normal", True),
    ("normaldx", "normal", False), ("normal_dx", "normal", False), ("nor_dx", "normal", False),
    ("normal", "normal", True), ("nrm", "normal", True), ("nor", "normal", True), ("n", "normal", True),
    ("roughness", "roughness", None), ("rough", "roughness", None),
    ("glossiness", "gloss", None), ("gloss", "gloss", None),
    ("specular", "specular", None), ("spec", "specular", None),
    ("height", "height", None), ("displacement", "height", None), ("disp", "height", None),
)
COLOR_NAMES = "*_cc, basecolor, base_color, albedo, diffuse, diff, color, colour"
RES_TOKEN_RE = re.compile(r"_(\d+k|\d{3,5})$")


@dataclass(frozen=True)
class MaterialFiles:
    """The map files of one material, and how to read them (gk intensity specular vs F0 specular, green axis)."""

    name: str
    folder: Path
    color: Path
    normal: Path | None = None
    specular: Path | None = None
    roughness: Path | None = None
    gloss: Path | None = None
    height: Path | None = None
    gk_specular: bool = False  # True: `_sc` grey intensity; False: F0 in gamma space
    green_up: bool = True


# ----------------------------------------------------------------------------------------------- fetching gk data


def data_root() -> Path:
    """Cache root shared by the project's downloaded data: $FBSOLVE_DATA or ~/.cache/feedback_solver."""
    env = os.environ.get("FBSOLVE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "feedback_solver"


def _has_gk(packages: Path) -> bool:
    """A packages folder counts once gk/fantasy holds at least one colour map (extraction is atomic)."""
    folder = packages / GK_SUBDIR
    return folder.is_dir() and any(folder.glob("*/*_cc.*"))


def ensure_gk_fantasy(root: Path | None = None, deb: Path | None = None) -> Path:
    """Folder holding gk/fantasy/<material>/ (jpg/png maps only), fetched into the cache on first use."""
    target = (Path(root) if root is not None else data_root()) / "cube2-data"
    if _has_gk(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cube2-data.", dir=target.parent) as tmp:
        stage = Path(tmp) / "cube2-data"
        if deb is None and _has_gk(SYSTEM_GK):
            _copy_gk_maps(SYSTEM_GK / GK_SUBDIR, stage / GK_SUBDIR)
        else:
            deb = Path(deb) if deb is not None else _download_deb(Path(tmp))
            _extract_gk(deb, Path(tmp) / "x", stage)
        if not _has_gk(stage):
            raise RuntimeError(f"no gk/fantasy colour maps found in cube2-data; {FETCH_HINT}")
        try:
            os.rename(stage, target)
        except OSError:  # another process finished first
            if not _has_gk(target):
                raise
    return target


def _copy_gk_maps(src: Path, dst: Path) -> None:
    """Copy only the jpg/png maps of an installed gk/fantasy (its sky boxes are not materials)."""
    for f in sorted(src.glob("*/*")):
        if GK_MAP_RE.search(f.name):
            (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dst / f.parent.name / f.name)


def _download_deb(folder: Path) -> Path:
    """`apt-get download cube2-data` into folder; one-line RuntimeError naming the fix on failure."""
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"apt-get not found, cannot download cube2-data; {FETCH_HINT}")
    print("downloading cube2-data (173 MB) ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(["apt-get", "download", "cube2-data"], cwd=folder, capture_output=True, text=True)
    except OSError as e:
        raise RuntimeError(f"apt-get download cube2-data failed: {e}; {FETCH_HINT}") from None
    debs = sorted(folder.glob("cube2-data_*.deb"))
    if proc.returncode != 0 or not debs:
        err = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise RuntimeError(f"apt-get download cube2-data failed: {err[-1] if err else 'no .deb'}; {FETCH_HINT}")
    return debs[0]


def _extract_gk(deb: Path, scratch: Path, stage: Path) -> None:
    """`dpkg-deb --fsys-tarfile deb | tar -x` of gk/fantasy, then keep only its *_cc/_nm/_sc/_hm jpg/png maps."""
    if shutil.which("dpkg-deb") is None or shutil.which("tar") is None:
        raise RuntimeError(f"dpkg-deb and tar are needed to unpack cube2-data; {FETCH_HINT}")
    print(f"extracting gk/fantasy from {deb.name} ...", file=sys.stderr, flush=True)
    scratch.mkdir(parents=True)
    members = DEB_PREFIX + str(GK_SUBDIR) + "/*"
    excludes = ["--exclude=*.dds", "--exclude=*_cc_c*", "--exclude=*/skyfantasy*", "--exclude=*.hdr"]
    dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(scratch), "--wildcards", *excludes, members],
                         stdin=dpkg.stdout, capture_output=True, text=True)
    dpkg.stdout.close()
    dpkg_err = dpkg.stderr.read().decode(errors="replace").strip()
    if dpkg.wait() != 0 or tar.returncode != 0:
        msg = (dpkg_err or tar.stderr.strip() or "unknown error").splitlines()[-1]
        raise RuntimeError(f"unpacking {deb} failed: {msg}; {FETCH_HINT}")
    _copy_gk_maps(scratch / DEB_PREFIX / GK_SUBDIR, stage / GK_SUBDIR)


# ------------------------------------------------------------------------------------------- finding map files


def _role(path: Path) -> tuple[int, str, bool | None] | None:
    """(priority, role, green_up) of an image file from its stem's ending, or None when not a recognised map."""
    stem = re.sub(r"[\s.\-]+", "_", path.stem.lower())
    stem = RES_TOKEN_RE.sub("", stem)
    for prio, (key, role, green) in enumerate(NAME_KEYS):
        if stem == key or stem.endswith("_" + key) or (len(key) >= 5 and "_" not in key and stem.endswith(key)):
            return prio, role, green
    return None


def _images(folder: Path) -> list[Path]:
    """Image files of a folder in a deterministic order (preferred extension first on equal names)."""
    files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda f: (IMAGE_EXTS.index(f.suffix.lower()), f.name))


def material_files(folder: Path, name: str | None = None) -> MaterialFiles:
    """The maps of one material folder; ValueError naming the folder when it has no colour map."""
    best: dict[str, tuple[int, Path, bool | None]] = {}
    for f in _images(folder):
        hit = _role(f)
        if hit is None:
            continue
        prio, role, green = hit
        slot = role.removeprefix("gk_")
        if slot not in best or prio < best[slot][0]:
            best[slot] = (prio, f, green)
    if "color" not in best:
        found = ", ".join(f.name for f in _images(folder)) or "no images"
        raise ValueError(f"material folder {folder} has no colour map (found: {found}); accepted colour names: "
                         f"{COLOR_NAMES} (.png/.jpg/.jpeg/.tif/.tiff/.bmp/.tga)")
    get = lambda slot: best[slot][1] if slot in best else None  # noqa: E731
    spec = best.get("specular")
    return MaterialFiles(
        name=name or folder.name, folder=folder, color=best["color"][1], normal=get("normal"),
        specular=get("specular"), roughness=get("roughness"), gloss=get("gloss"), height=get("height"),
        gk_specular=spec is not None and NAME_KEYS[spec[0]][1] == "gk_specular",
        green_up=best["normal"][2] if "normal" in best else True,
    )


def find_materials(folder: Path) -> list[MaterialFiles]:
    """Every material of a folder: one per subfolder holding a colour map (sorted by name), or the folder itself.

    Subfolders that are not materials (no colour map) are listed on stderr and skipped; none at all is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"material folder {folder} does not exist")
    subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and _images(d))
    found, skipped = [], []
    for d in subs:
        try:
            found.append(material_files(d))
        except ValueError:
            skipped.append(f"{d.name} (no colour map among {', '.join(f.name for f in _images(d)[:4])})")
    if skipped:
        print(f"material folder {folder}: skipped {len(skipped)} subfolder(s) that are not materials: "
              f"{'; '.join(skipped)}", file=sys.stderr)
    if found:
        return found
    if not subs and any(_role(f) and _role(f)[1] in ("color", "gk_color") for f in _images(folder)):
        return [material_files(folder)]
    raise ValueError(f"{folder} holds no material subfolder (one subfolder of maps per material); accepted names: "
                     f"colour {COLOR_NAMES}; normal *_nm, normal, nrm, *_n; specular *_sc, specular, spec; "
                     "roughness, rough; glossiness, gloss")


# --------------------------------------------------------------------------------------------- loading maps


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from any 8/16-bit PIL mode (palette, grey, alpha dropped)."""
    im = open_image(path, "material map")
    try:
        if im.mode in ("I;16", "I;16L", "I;16B", "I"):
            a = np.asarray(im, dtype=np.float32) / 65535.0
        elif im.mode == "F":
            a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        else:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (ValueError, OSError) as err:
        raise ValueError(f"material map {path}: mode {im.mode} does not convert to RGB ({err})") from err
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.clip(a, 0.0, 1.0)


def decode_normals(rgb: np.ndarray, green_up: bool) -> np.ndarray:
    """Unit normals (H, W, 3) in the conventions' axes (x right, y up in the image) from normal-map RGB."""
    n = 2.0 * rgb - 1.0
    if not green_up:
        n[..., 1] = -n[..., 1]
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    flat = np.array([0.0, 0.0, 1.0], dtype=np.float32)
    return np.where(norm > 1e-6, n / np.maximum(norm, 1e-6), flat).astype(np.float32)


def _resample(a: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Crop box (left, top, right, bottom in a's pixels) resized to size^2: area average down, bilinear up."""
    shrink = (box[2] - box[0]) >= size and (box[3] - box[1]) >= size
    filt = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(a[..., c]), mode="F").resize((size, size), filt, box=box))
             for c in range(a.shape[-1])]
    return np.stack(chans, axis=-1)


@dataclass
class _Loaded:
    """A material's maps decoded at native resolution, so several crops reuse one decode."""

    color: np.ndarray
    normal: np.ndarray | None
    specular: np.ndarray | None
    rough: np.ndarray | None
    gk_specular: bool
    work: tuple[int, int]  # working (width, height)


def _load(files: MaterialFiles, green_up: bool | None) -> _Loaded:
    """Read and decode every map of a material (roughness from gloss already inverted)."""
    color = read_image(files.color)
    normal = None
    if files.normal is not None:
        normal = decode_normals(read_image(files.normal), files.green_up if green_up is None else green_up)
    spec = read_image(files.specular) if files.specular is not None else None
    if spec is not None and files.gk_specular:
        spec = spec.mean(-1, keepdims=True)
    rough = None
    if files.roughness is not None:
        rough = read_image(files.roughness).mean(-1, keepdims=True)
    elif files.gloss is not None:
        rough = 1.0 - read_image(files.gloss).mean(-1, keepdims=True)
    maps = [m for m in (color, normal, spec, rough) if m is not None]
    h, w = min((m.shape[:2] for m in maps), key=lambda hw: hw[0] * hw[1])
    return _Loaded(color, normal, spec, rough, files.gk_specular, (w, h))


def _crop_box(work: tuple[int, int], crop: str | tuple) -> tuple[float, float, float]:
    """(left, top, side) in working pixels: "center" = largest centred square, or a checked tuple."""
    w, h = work
    if crop == "center":
        side = min(w, h)
        return (w - side) / 2, (h - side) / 2, side
    if isinstance(crop, str):
        raise ValueError(f"crop must be 'center' or (left, top, side), got {crop!r}")
    left, top, side = (float(v) for v in crop)
    if side <= 0 or left < 0 or top < 0 or left + side > w or top + side > h:
        raise ValueError(f"crop {crop} does not fit the working resolution {w}x{h}")
    return left, top, side


def _render(m: _Loaded, crop: str | tuple, size: int) -> Tensor:
    """One crop of a loaded material as the conventions' (9, size, size) maps."""
    left, top, side = _crop_box(m.work, crop)

    def sample(a: np.ndarray) -> np.ndarray:
        sx, sy = a.shape[1] / m.work[0], a.shape[0] / m.work[1]
        return _resample(a, (left * sx, top * sy, (left + side) * sx, (top + side) * sy), size)

    diffuse = np.clip(sample(m.color), 0.0, 1.0)
    if m.specular is None:
        f0 = np.full((size, size, 3), F0_DIELECTRIC, np.float32)
        s = None
    else:
        spec = np.clip(sample(m.specular), 0.0, 1.0)
        s = spec.mean(-1, keepdims=True)
        f0 = np.repeat(0.1 + 0.5 * s, 3, axis=-1) if m.gk_specular else spec
    if m.rough is not None:
        rough = np.clip(sample(m.rough), 0.02, 1.0)
    elif s is not None:
        rough = np.clip(0.9 - 0.7 * s, 0.15, 0.9)
    else:
        rough = np.full((size, size, 1), DEFAULT_ROUGHNESS, np.float32)
    if m.normal is None:
        nxy = np.zeros((size, size, 2), np.float32)
    else:
        n = sample(m.normal)
        n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        nxy = np.clip(n[..., :2] / np.maximum(n[..., 2:], MIN_NZ), -1.0, 1.0)
    out = np.concatenate([diffuse, f0, rough, nxy], axis=-1).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def load_material(files: MaterialFiles, size: int, crop: str | tuple = "center",
                  green_up: bool | None = None) -> Tensor:
    """(9, size, size) maps of one material crop; green_up=None uses the file naming's convention."""
    return _render(_load(files, green_up), crop, size)


def random_crops(work: tuple[int, int], n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """n squares of side 50-100 % of the working resolution's short side, uniformly placed."""
    w, h = work
    crops = []
    for _ in range(n):
        side = max(1, int(round(rng.uniform(0.5, 1.0) * min(w, h))))
        crops.append((int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)), side))
    return crops


def material_crops(files: MaterialFiles, size: int, crops: int, seed: int, index: int) -> list[Tensor]:
    """The centre crop plus crops - 1 random ones of one material, drawn from default_rng([seed, index])."""
    m = _load(files, None)
    boxes: list = ["center"] + random_crops(m.work, crops - 1, np.random.default_rng([seed, index]))
    return [_render(m, b, size) for b in boxes]


def real_set(size: int = 256, crops_per_material: int = 4, seed: int = 0,
             root: Path | None = None) -> tuple[Tensor, list[str]]:
    """The real test set: every gk/fantasy material, centre crop + random crops, as (N, 9, size, size)."""
    return folder_set(ensure_gk_fantasy(root) / GK_SUBDIR, size, crops_per_material, seed)


def folder_set(folder: Path, size: int, crops_per_material: int, seed: int) -> tuple[Tensor, list[str]]:
    """Any folder of map sets (one subfolder per material) as a test set, crops as `real_set`."""
    mats = sorted(find_materials(Path(folder)), key=lambda f: f.name)
    maps, names = [], []
    for k, files in enumerate(bar(mats, len(mats) >= 8, desc="materials", leave=False)):
        for c, x in enumerate(material_crops(files, size, crops_per_material, seed, k)):
            maps.append(x)
            names.append(f"{files.name}/crop{c}")
    return torch.stack(maps), names


def height_normal_correlation(files: MaterialFiles, green_up: bool | None = None) -> tuple[float, float]:
    """Correlation of the decoded normal map with the height map's normals (x, y): both > 0 when decoded right."""
    if files.normal is None or files.height is None:
        raise ValueError(f"{files.folder} needs both a normal and a height map")
    n = decode_normals(read_image(files.normal), files.green_up if green_up is None else green_up)
    hgt = Image.open(files.height).convert("L").resize((n.shape[1], n.shape[0]), Image.Resampling.BOX)
    h = np.asarray(hgt, dtype=np.float64) / 255.0
    hx, hy = -np.gradient(h, axis=1), np.gradient(h, axis=0)  # nx = -dh/dx; ny = -dh/dy = +dh/drow (y up)
    corr = lambda a, b: float(np.corrcoef(a.ravel(), b.ravel())[0, 1])  # noqa: E731
    return corr(n[..., 0], hx), corr(n[..., 1], hy)
