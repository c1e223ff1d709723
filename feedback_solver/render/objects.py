"""The image tasks' objects: real meshes from the pybullet wheel's pybullet_data, split by object into train and test.

Procedural shapes (pybullet_data/random_urdfs) may be added to training for variety; test objects are real only;
a user's folder (`task.user_meshes`, set by `bench --meshes`) replaces the test objects.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import trimesh
from omegaconf import DictConfig
from torch import Tensor

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
    """A config entry: a path relative to pybullet_data, or an absolute path to a user's mesh."""
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


@cache
def mesh(name: str) -> trimesh.Trimesh:
    """Loaded and normalised once per process."""
    return load_mesh(resolve(name))


@cache
def user_meshes(folder: str) -> list[str]:
    """A user's mesh folder, read (and its skipped files listed) once per process."""
    return mesh_folder(folder, mesh)


def label(name: str) -> str:
    """A mesh's name in reports: its pybullet_data path, or a user mesh's file name."""
    return Path(name).name if Path(name).is_absolute() else name


def check_disjoint(train: list[str], test: list[str]) -> None:
    both = sorted(set(train) & set(test))
    if both:
        raise ValueError(f"objects in both the train and the test split: {both}; the split is by object")


@dataclass
class ObjectSplit:
    """The vision tasks' objects by split: real train meshes (+ procedural shapes) and real test meshes, never
    shared; a user's folder (`bench --meshes`) replaces the test objects."""

    train: list[str]
    test: list[str]
    procedural: int = 0
    user: list[str] | None = None
    real_fraction: float | None = None

    def __post_init__(self):
        check_disjoint(self.train, self.test)
        if self.real_fraction is not None and not 0.0 <= self.real_fraction <= 1.0:
            raise ValueError(f"task.real_fraction must lie in [0, 1], got {self.real_fraction}")

    @classmethod
    def from_config(cls, t: DictConfig) -> "ObjectSplit":
        fraction, folder = t.get("real_fraction"), str(t.get("user_meshes") or "")
        return cls([str(m) for m in t.train_meshes], [str(m) for m in t.test_meshes], int(t.procedural),
                   user_meshes(folder) if folder else None, None if fraction is None else float(fraction))

    def names(self, split: str) -> list[str]:
        if split in ("train", "val"):
            return self.train + procedural(self.procedural)
        if split == "test":
            return self.user or self.test
        raise ValueError(f"split must be train, val or test, got {split!r}")

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
        return "user meshes" if split == "test" and self.user else "pybullet_data"


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

    def render_objects(self, factory: Callable[[], Any], names: list[str], params: Tensor,
                       method: str = "render_array") -> np.ndarray:
        """`factory()`'s `method` for each sample's object: in `task.render_workers` processes for a big batch."""
        workers = int(self.cfg.task.render_workers)
        if workers > 1 and len(names) >= 4 * workers:
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
