"""The pose task's objects: real meshes from the pybullet wheel's pybullet_data, split by object into train and test.

Procedural shapes (pybullet_data/random_urdfs) may be added to training for variety; test objects are real only.
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

import trimesh

from feedback_solver.render import load_mesh


@cache
def data_root() -> Path:
    """pybullet_data's folder (the wheel ships it; no network)."""
    try:
        import pybullet_data
    except ImportError as err:
        raise ImportError("the pose task needs the pybullet wheel for its meshes: pip install pybullet==3.2.7") from err
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


def check_disjoint(train: list[str], test: list[str]) -> None:
    both = sorted(set(train) & set(test))
    if both:
        raise ValueError(f"pose: objects in both the train and the test split: {both}; the split is by object")
