"""More real training shapes: the robot, gripper and object meshes that the `robosuite` wheel carries.

Only the files are taken (the package is never imported or installed): `python -m feedback_solver.render.robosuite
fetch` downloads the wheel with pip and unpacks its meshes; `... manifest` chooses the whole meshes, drops
near-copies by shape (against each other and against the test objects), splits them by robot and writes the
manifest that the image tasks read (`configs/robosuite.yaml`). Config entries name a mesh `robosuite:<path under
robosuite/models/assets>`.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
import yaml

VERSION = "1.5.2"
PREFIX = "robosuite:"
ASSETS = "robosuite/models/assets/"
MANIFEST = Path(__file__).resolve().parents[2] / "configs" / "robosuite.yaml"
FETCH = "python -m feedback_solver.render.robosuite fetch"


def data_home() -> Path:
    """Where fetched data lives: $FEEDBACK_SOLVER_DATA, else ~/.cache/feedback_solver."""
    return Path(os.environ.get("FEEDBACK_SOLVER_DATA") or Path.home() / ".cache" / "feedback_solver")


def root() -> Path:
    """The unpacked wheel's folder (robosuite/models/assets/... beneath it)."""
    return data_home() / f"robosuite-{VERSION}"


def resolve(name: str) -> Path:
    """`robosuite:<path>` -> the file; one error naming the command when the meshes were never fetched."""
    path = root() / ASSETS / name.removeprefix(PREFIX)
    if not (root() / ASSETS).is_dir():
        raise FileNotFoundError(f"mesh {name}: the robosuite meshes are not installed under {root()}; "
                                f"run `{FETCH}` (or `make robosuite`)")
    return path


def fetch(dest: Path | None = None) -> Path:
    """Download robosuite==VERSION's wheel (no dependencies, no install) and unpack its meshes and licence."""
    dest = dest or root()
    if (dest / ASSETS).is_dir():
        print(f"robosuite {VERSION} meshes already in {dest}")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        print(f"downloading robosuite=={VERSION} (about 160 MB; only its meshes are kept) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                        f"robosuite=={VERSION}", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("robosuite-*.whl"))
        unpack = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as z:
            keep = [n for n in z.namelist() if (n.startswith(ASSETS) and n.lower().endswith((".obj", ".stl")))
                    or "/licenses/" in n]
            z.extractall(unpack, keep)
        os.replace(unpack, dest)  # atomic: a stopped fetch leaves nothing half-unpacked
    print(f"robosuite {VERSION} meshes in {dest}")
    return dest


def candidates(assets: Path) -> list[str]:
    """Whole visual meshes: no collision hulls, no per-material parts (`D/D_3.obj` beside the whole `D.obj`), one of
    an .obj/.stl pair."""
    out, seen = [], set()
    for p in sorted(q for q in assets.rglob("*") if q.suffix.lower() in (".obj", ".stl")):
        rel = p.relative_to(assets)
        if "collision" in str(rel).lower() or re.fullmatch(re.escape(p.parent.name) + r"(_\d+)?", p.stem):
            continue
        if (p.parent, p.stem) in seen:
            continue
        seen.add((p.parent, p.stem))
        out.append(str(rel))
    return out


def group(rel: str) -> str:
    """The robot, hand or collection a mesh belongs to: robots/ur5e, grippers/fourier_hands, objects, ..."""
    parts = rel.split("/")
    if parts[0] == "robots":
        return "/".join(parts[:2])
    if parts[0] == "grippers":
        return "grippers/" + parts[2]
    if parts[0] == "bullet_data":
        return "robots/" + parts[1].removesuffix("_description")
    return parts[0]


def shape_descriptor(mesh: trimesh.Trimesh, points: int = 6000, bins: int = 48) -> np.ndarray:
    """A rotation- and mirror-invariant signature of a normalised mesh: the histogram of distances between random
    surface points (Osada's D2) and of distances from the centre; a copy at another resolution matches it."""
    rng = np.random.default_rng(0)
    pts, _ = trimesh.sample.sample_surface(mesh, points, seed=0)
    pairs = np.linalg.norm(pts[rng.integers(points, size=4 * points)] - pts[rng.integers(points, size=4 * points)],
                           axis=1)
    d2 = np.histogram(pairs, bins=bins, range=(0.0, 2.0))[0] / len(pairs)
    radial = np.histogram(np.linalg.norm(pts, axis=1), bins=bins // 2, range=(0.0, 1.0))[0] / points
    return np.concatenate([d2, radial])


def shape_distance(a: np.ndarray, b: np.ndarray) -> float:
    """L1 distance of two descriptors: a cheap filter (0: alike; up to 4) before the aligned comparison."""
    return float(np.abs(a - b).sum())


@dataclass
class Surface:
    """Seeded surface samples in the mesh's principal frame (where two copies line up): a few for the alignment, many
    to measure distances to."""

    sparse: np.ndarray
    dense: np.ndarray

    @classmethod
    def of(cls, mesh: trimesh.Trimesh, sparse: int = 600, dense: int = 40000) -> "Surface":
        pts = trimesh.sample.sample_surface(mesh, dense, seed=0)[0]
        centre = pts.mean(0)
        _, vecs = np.linalg.eigh((pts - centre).T @ (pts - centre))
        pts = (pts - centre) @ vecs
        return cls(pts[:sparse], pts)


def aligned_distance(a: Surface, b: Surface) -> float:
    """Symmetric mean distance from each surface's samples to the other surface, after the best of the 48 signed axis
    permutations of the principal frames (rotations and mirrors), refined by ICP (trimesh): near 0 for a copy, whatever
    its file, tessellation or handedness."""
    from itertools import permutations, product

    from scipy.spatial import cKDTree

    tree_a, tree_b = cKDTree(a.dense), cKDTree(b.dense)
    starts = []
    for perm in permutations(range(3)):
        for signs in product((1.0, -1.0), repeat=3):
            m = np.zeros((3, 3))
            m[range(3), perm] = signs
            starts.append((float(tree_b.query(a.sparse @ m.T)[0].mean()), m))
    best = np.inf
    for _, m in sorted(starts, key=lambda s: s[0])[:3]:
        init = np.eye(4)
        init[:3, :3] = m
        mat = trimesh.registration.icp(a.sparse, b.dense[::4], initial=init, max_iterations=30, reflection=True,
                                       scale=False)[0]
        there = float(tree_b.query(trimesh.transform_points(a.sparse, mat))[0].mean())
        back = float(tree_a.query(trimesh.transform_points(b.sparse, np.linalg.inv(mat)))[0].mean())
        best = min(best, 0.5 * (there + back))
    return best


def turn_distance(s: Surface, degrees: tuple[float, ...] = (15, 30, 45, 60, 90)) -> float:
    """The least mean distance from the surface turned by one of these angles about a principal axis to itself:
    small for a near-symmetric mesh (a wheel, a ring, a plain cylinder), whose pose a silhouette cannot fix."""
    from scipy.spatial import cKDTree

    tree = cKDTree(s.dense)
    best = np.inf
    for axis in np.eye(3):
        for deg in degrees:
            rot = trimesh.transformations.rotation_matrix(np.radians(deg), axis)[:3, :3]
            best = min(best, float(tree.query(s.sparse @ rot.T)[0].mean()))
    return best


@dataclass
class Choice:
    """One candidate's fate in the manifest."""

    name: str
    group: str
    kept: bool
    why: str = ""
    symmetric: bool = False


@dataclass
class Shapes:
    """What the copy check compares: each mesh's descriptor (a cheap filter) and its surface samples."""

    descriptor: dict[str, np.ndarray]
    surface: dict[str, Surface]

    @classmethod
    def of(cls, meshes: dict[str, trimesh.Trimesh]) -> "Shapes":
        return cls({n: shape_descriptor(m) for n, m in meshes.items()}, {n: Surface.of(m) for n, m in meshes.items()})

    def copy_of(self, name: str, others: list[str], below: float, prefilter: float) -> tuple[str, float] | None:
        """The first of `others` whose surface lies within `below` of this one's (mean distance, unit-radius
        meshes), among those whose descriptor is within `prefilter`."""
        for o in others:
            if shape_distance(self.descriptor[name], self.descriptor[o]) < prefilter:
                d = aligned_distance(self.surface[name], self.surface[o])
                if d < below:
                    return o, d
        return None


def choose(names: list[str], pool: Shapes, tests: Shapes, rules: dict) -> list[Choice]:
    """Drop the left-out robots, meshes that do not load, copies of a test object, then all but the first of each
    set of near-copies (another file, tessellation or the mirror image of a kept mesh)."""
    out: list[Choice] = []
    kept: list[str] = []
    below = float(rules["copy_below"])
    for i, n in enumerate(names):
        c = Choice(PREFIX + n, group(n), False)
        if c.group in rules["left_out"]:
            c.why = "a test object's robot or hand"
        elif n not in pool.descriptor:
            c.why = "does not load"
        elif hit := _copy(n, pool, tests, below, float(rules["test_prefilter"])):
            c.why = f"a copy of the test object {hit[0]} by shape (mean surface distance {hit[1]:.4f})"
        elif hit := pool.copy_of(n, kept, below, float(rules["pool_prefilter"])):
            c.why = f"a copy of {PREFIX}{hit[0]} by shape (mean surface distance {hit[1]:.4f})"
        else:
            c.kept = True
            c.symmetric = turn_distance(pool.surface[n]) < float(rules["symmetric_below"])
            kept.append(n)
        out.append(c)
        print(f"\r{i + 1}/{len(names)} meshes checked", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def _copy(name: str, pool: Shapes, tests: Shapes, below: float, prefilter: float) -> tuple[str, float] | None:
    both = Shapes(pool.descriptor | tests.descriptor, pool.surface | tests.surface)
    return both.copy_of(name, list(tests.descriptor), below, prefilter)


def manifest(cfg_path: Path, out: Path = MANIFEST) -> Path:
    """Write the manifest from the pose config's `task.robosuite` rules: the train and val_unseen lists, and what
    was left out and why."""
    import pybullet_data
    from omegaconf import OmegaConf

    from feedback_solver.render.mesh import load_mesh

    task = OmegaConf.load(cfg_path).task
    rules = OmegaConf.to_container(task.robosuite)
    names = candidates(resolve(PREFIX))
    meshes = {}
    for n in names:
        try:
            meshes[n] = load_mesh(resolve(PREFIX + n))
        except ValueError as err:
            print(f"skipped {n}: {err}", file=sys.stderr)
    tests = {str(t): load_mesh(Path(pybullet_data.getDataPath()) / str(t)) for t in task.test_meshes}
    choices = choose(names, Shapes.of(meshes), Shapes.of(tests), rules)
    unseen = set(rules["val_unseen"])
    for c in choices:  # like the test objects, val_unseen holds only meshes whose pose a silhouette can fix
        if c.kept and c.symmetric and c.group in unseen:
            c.kept, c.why = False, "near-symmetric (a turn of 15-90 deg maps it onto itself), in a val_unseen robot"
    kept = [c for c in choices if c.kept]
    body = {
        "version": VERSION,
        "made_by": f"python -m feedback_solver.render.robosuite manifest (rules: task.robosuite of {cfg_path.name})",
        "train": [c.name for c in kept if c.group not in unseen],
        "val_unseen": [c.name for c in kept if c.group in unseen],
        "symmetric_train": [c.name for c in kept if c.symmetric and c.group not in unseen],
        "left_out": {c.name: c.why for c in choices if not c.kept},
    }
    out.write_text(f"# robosuite {VERSION} meshes for the image tasks: {len(body['train'])} train, "
                   f"{len(body['val_unseen'])} val_unseen ({', '.join(sorted(unseen))}), {len(body['left_out'])} left "
                   "out.\n# Generated; do not edit (rerun the command in made_by).\n"
                   + yaml.safe_dump(body, sort_keys=False, width=120))
    print(f"{out}: {len(body['train'])} train, {len(body['val_unseen'])} val_unseen, {len(body['left_out'])} left out")
    return out


def load_manifest(path: Path = MANIFEST) -> dict:
    return yaml.safe_load(path.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m feedback_solver.render.robosuite", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help=f"download robosuite=={VERSION}'s wheel and unpack its meshes into {root()}")
    m = sub.add_parser("manifest", help="choose, check and split the meshes; write configs/robosuite.yaml")
    m.add_argument("--config", default=str(MANIFEST.parent / "pose.yaml"))
    args = p.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch()
        else:
            manifest(Path(args.config))
    except (FileNotFoundError, ValueError, subprocess.CalledProcessError) as err:
        print(f"robosuite: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
