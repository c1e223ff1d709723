"""The image tasks' objects: real meshes from the pybullet wheel's pybullet_data, split by object into train and test.

Procedural shapes (pybullet_data/random_urdfs) may be added to training for variety; test objects are real only;
a user's folder (`task.user_meshes`, set by `bench --meshes`) replaces the test objects.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import trimesh
from omegaconf import DictConfig
from torch import Tensor

from feedback_solver.render import robosuite
from feedback_solver.render.gl import Camera
from feedback_solver.render.mesh import load_mesh, mesh_folder
from feedback_solver.render.parallel import render_parallel


@cache
def data_root() -> Path:
    """pybullet_data's folder (the wheel ships it; no network)."""
    try:
        import pybullet_data
    except ImportError as err:
        raise ImportError("the image tasks need the pybullet wheel for their meshes: "
                          "pip install pybullet==3.2.7") from err
    return Path(pybullet_data.getDataPath())


def resolve(name: str) -> Path:
    """A config entry: a path relative to pybullet_data, `robosuite:<path>` (fetched meshes), or an absolute path."""
    if name.startswith(robosuite.PREFIX):
        return robosuite.resolve(name)
    path = Path(name)
    return path if path.is_absolute() else data_root() / path


@cache
def procedural(count: int) -> list[str]:
    """The first `count` usable random_urdfs shapes in sorted order (a few have NaN vertices and are skipped)."""
    out: list[str] = []
    for path in sorted((data_root() / "random_urdfs").glob("*/*.obj")):
        if len(out) >= count:
            break
        name = str(path.relative_to(data_root()))
        try:
            mesh(name)
        except ValueError:
            continue
        out.append(name)
    return out


WELDS = (0.002, 0.0001)  # proxies: the grids their vertices are welded to before decimation (`weld`), coarse first


@dataclass(frozen=True)
class Proxy:
    """The solver's own stand-in for a dense mesh: decimated to `faces` (1.5x more until its silhouettes match the
    full mesh's to IoU >= `iou` in every view of the check), so a solve's renders cost the same whatever the mesh;
    observations stay renders of the full mesh."""

    name: str
    faces: int
    iou: float
    camera: Camera


@cache
def mesh(key: str | Proxy) -> trimesh.Trimesh:
    """Loaded and normalised (or decimated, for a `Proxy`) once per process."""
    if isinstance(key, Proxy):
        return proxy_mesh(key)
    return load_mesh(resolve(key))


def proxy_mesh(key: Proxy) -> trimesh.Trimesh:
    """The mesh itself when it has at most `faces` faces, else its decimated proxy (cached on disk)."""
    full = mesh(key.name)
    if len(full.faces) <= key.faces:
        return full
    path = proxy_cache(key, full)
    if path.is_file():
        with np.load(path) as z:
            return trimesh.Trimesh(z["vertices"], z["faces"], process=False)
    small = smallest_proxy(full, key)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # written whole, then renamed: never half a file
    np.savez(tmp, vertices=np.asarray(small.vertices), faces=np.asarray(small.faces))
    os.replace(tmp, path)
    return small


def smallest_proxy(full: trimesh.Trimesh, key: Proxy) -> trimesh.Trimesh:
    """The first decimation, from `key.faces` up 1.5x a try, whose silhouettes pass the check; at each face count
    the mesh welded on each grid of WELDS is tried (a coarse grid closes an OBJ's seams, a fine one keeps a dense
    mesh's small features); the full mesh when none passes."""
    welded = [weld(full, cell) for cell in WELDS]
    faces = key.faces
    while faces < max(len(m.faces) for m in welded):
        for merged in welded:
            if faces < len(merged.faces):
                small = decimate(merged, faces)
                if silhouette_iou(full, small, key.camera).min() >= key.iou:
                    return small
        faces = faces * 3 // 2
    return full


def weld(mesh: trimesh.Trimesh, cell: float = WELDS[0]) -> trimesh.Trimesh:
    """Vertices snapped to a grid of `cell` (unit-radius meshes: 0.08 px at 128 px) and merged, degenerate and
    repeated faces dropped: one vertex per position, so that the decimation collapses edges across an OBJ's texture
    seams and a mesh's cracks instead of stalling at them."""
    out = trimesh.Trimesh(np.round(np.asarray(mesh.vertices) / cell) * cell, np.asarray(mesh.faces))
    out.update_faces(out.nondegenerate_faces())
    out.update_faces(out.unique_faces())
    out.remove_unreferenced_vertices()
    return out


def decimate(mesh: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
    """Quadric edge-collapse decimation to `faces` faces (fast_simplification; trimesh's wrapper would re-process
    the result)."""
    import fast_simplification

    v, f = fast_simplification.simplify(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces),
                                        target_count=faces)
    return trimesh.Trimesh(v, f, process=False)


def proxy_cache(key: Proxy, full: trimesh.Trimesh) -> Path:
    """The proxy's file: named by the full mesh's geometry and the proxy's settings, so a changed file is redone."""
    digest = hashlib.sha1(np.asarray(full.vertices, dtype=np.float64).tobytes()
                          + np.asarray(full.faces, dtype=np.int64).tobytes()
                          + repr((key.faces, key.iou, key.camera, WELDS)).encode()).hexdigest()[:20]
    folder = robosuite.data_home() / "proxies"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{digest}.npz"


def check_views(count: int = 24) -> Tensor:
    """The views of the proxy check: `count` rotations uniform over SO(3) (seeded), at the canonical offset."""
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(count, 4, generator=gen), dim=1)
    return torch.cat([q, torch.zeros(count, 3)], 1)


def silhouette_iou(a: trimesh.Trimesh, b: trimesh.Trimesh, camera: Camera, views: Tensor | None = None) -> np.ndarray:
    """Per-view IoU of two meshes' silhouettes under the same poses (default: `check_views()`)."""
    from feedback_solver.render.gl import renderer

    views = check_views() if views is None else views
    gl = renderer(camera)  # the process's one GL context (a second one's teardown would end the EGL display)
    keys = (("iou-check", "a"), ("iou-check", "b"))
    for key, m in zip(keys, (a, b)):
        gl.forget(key)
        gl.add_mesh(key, m)
    ma, mb = (gl.render_array([key] * len(views), views) for key in keys)
    for key in keys:
        gl.forget(key)
    union = (ma | mb).sum((1, 2))
    return (ma & mb).sum((1, 2)) / np.maximum(union, 1)


@cache
def user_meshes(folder: str) -> list[str]:
    """A user's mesh folder, read (and its skipped files listed) once per process."""
    return mesh_folder(folder, mesh)


def label(name: str) -> str:
    """A mesh's name in reports: its pybullet_data path, or a user mesh's file name."""
    return Path(name).name if Path(name).is_absolute() else name


def check_disjoint(train: list[str], test: list[str], other: str = "test") -> None:
    both = sorted(set(train) & set(test))
    if both:
        raise ValueError(f"objects in both the train and the {other} split: {both}; the split is by object")


@dataclass
class ObjectSplit:
    """The vision tasks' objects by split: real train meshes (pybullet_data's, and robosuite's where the task takes
    them; + procedural shapes), the unseen robots' meshes (val_unseen) and real test meshes, never shared; a user's
    folder (`bench --meshes`) replaces the test objects."""

    train: list[str]
    test: list[str]
    procedural: int = 0
    user: list[str] | None = None
    real_fraction: float | None = None
    unseen: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_disjoint(self.train, self.test)
        check_disjoint(self.train, self.unseen, "val_unseen")
        if self.real_fraction is not None and not 0.0 <= self.real_fraction <= 1.0:
            raise ValueError(f"task.real_fraction must lie in [0, 1], got {self.real_fraction}")

    @classmethod
    def from_config(cls, t: DictConfig) -> "ObjectSplit":
        """pybullet_data's meshes from the config, robosuite's from its manifest when `task.robosuite.enabled`."""
        fraction, folder = t.get("real_fraction"), str(t.get("user_meshes") or "")
        extra = robosuite.load_manifest() if t.get("robosuite") and t.robosuite.get("enabled") else {}
        return cls([str(m) for m in t.train_meshes] + extra.get("train", []), [str(m) for m in t.test_meshes],
                   int(t.procedural), user_meshes(folder) if folder else None,
                   None if fraction is None else float(fraction), extra.get("val_unseen", []))

    def names(self, split: str) -> list[str]:
        if split in ("train", "val"):
            return self.train + procedural(self.procedural)
        if split == "test":
            return self.user or self.test
        if split == "val_unseen" and self.unseen:
            return self.unseen
        if split == "val_unseen":
            raise ValueError("the val_unseen split (robosuite's held-out robots) needs task.robosuite.enabled=true")
        raise ValueError(f"split must be train, val, val_unseen or test, got {split!r}")

    def weighted(self, split: str) -> bool:
        """Whether `real_fraction` applies: train/val with procedural shapes beside the real meshes."""
        return self.real_fraction is not None and split in ("train", "val") and self.procedural > 0

    def pick(self, n: int, split: str, gen: torch.Generator) -> list[str]:
        """Each sample's object: uniform over the split's objects, or (where `weighted`) a real train mesh with
        probability `real_fraction`, so the few real meshes are not drowned out by the procedural shapes."""
        names = self.names(split)
        extra = names[len(self.train):]
        if not self.weighted(split) or not extra:
            return [names[int(i)] for i in torch.randint(len(names), (n,), generator=gen)]
        real = torch.rand(n, generator=gen) < self.real_fraction
        r = torch.randint(len(self.train), (n,), generator=gen)
        p = torch.randint(len(extra), (n,), generator=gen)
        return [self.train[int(a)] if k else extra[int(b)] for k, a, b in zip(real, r, p)]

    def source(self, split: str) -> str:
        if split == "test" and self.user:
            return "user meshes"
        if split == "val_unseen":
            return f"robosuite {robosuite.VERSION}: robots and hands no training run sees"
        extra = sum(n.startswith(robosuite.PREFIX) for n in self.train)
        return f"pybullet_data + {extra} robosuite meshes" if extra and split != "test" else "pybullet_data"


def user_mesh(path: str | Path) -> str:
    """`solve --mesh FILE`: the mesh's absolute path, loaded (and so checked) now."""
    name = str(Path(path).resolve())
    mesh(name)
    return name


class ObjectScenes:
    """What the image tasks of known objects share: the object split, per-object report rows, batched renders."""

    cfg: DictConfig
    objects: ObjectSplit
    #: the task's differentiable-renderer baseline, f(task, y, ctx, x0, cfg) (it imports Mitsuba only when it runs)
    mitsuba: Callable[..., Any]
    #: the task's add_cli_options(parser, command), from a module without heavy imports
    cli_options: Callable[[argparse.ArgumentParser, str], None]

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        t = cfg.task
        self.camera = Camera(int(t.size), float(t.focal), float(t.distance))
        self.objects = ObjectSplit.from_config(t)

    def optimisers(self) -> dict[str, Callable[..., Any]]:
        return {"mitsuba": self.mitsuba}

    @classmethod
    def add_cli_options(cls, parser: argparse.ArgumentParser, command: str) -> None:
        cls.cli_options(parser, command)

    def names(self, split: str) -> list[str]:
        return self.objects.names(split)

    def groups(self, batch: Any) -> list[str]:
        """Per-object rows in the report: the test objects differ far more than a mean shows."""
        return [label(n) for n in batch.ctx["mesh"]]

    def solver_meshes(self, names: list[str]) -> list[str | Proxy]:
        """What the solver's own renders draw: each mesh's proxy (`task.proxy_faces`; 0: the mesh itself)."""
        t = self.cfg.task
        faces = int(t.get("proxy_faces") or 0)
        return [Proxy(n, faces, float(t.proxy_iou), self.camera) for n in names] if faces else list(names)

    def render_objects(self, factory: Callable[[], Any], names: list[str | Proxy], params: Tensor,
                       method: str = "render_array") -> np.ndarray:
        """`factory()`'s `method` for each sample's object: in `task.render_workers` processes for a big batch."""
        workers = int(self.cfg.task.render_workers)
        if workers > 1 and len(names) >= 4 * workers:
            for key in set(names):  # proxies are made (and cached on disk) here once, not by each worker
                if isinstance(key, Proxy):
                    mesh(key)
            return render_parallel(factory, workers, mesh, names, params, method)
        gl = factory()
        for name in set(names):
            gl.add_mesh(name, mesh(name))
        return getattr(gl, method)(names, params)

    @staticmethod
    def object_keys(args: argparse.Namespace, command: str) -> dict[str, str]:
        """`bench --meshes DIR` as the config key it sets: the user's meshes replace the test objects."""
        folder = getattr(args, "meshes", None) if command == "bench" else None
        return {"user_meshes": str(folder)} if folder else {}
