"""Meshes for the vision tasks: loaded with trimesh, centred on their bounding sphere and scaled to unit radius."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh

SUFFIXES = (".obj", ".stl", ".ply", ".glb", ".gltf", ".off")


def normalise(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centre on the minimal bounding sphere and scale it to radius 1: the tasks' scene unit."""
    sphere = mesh.bounding_sphere.primitive
    out = mesh.copy()
    out.apply_translation(-np.asarray(sphere.center))
    out.apply_scale(1.0 / float(sphere.radius))
    return out


def load_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """One triangle mesh from a file (scenes are merged), normalised; a clear error when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh {path} does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"mesh {path}: unsupported format {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many types for a broken file
        raise ValueError(f"mesh {path} does not load: {err}") from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"mesh {path} has no faces (a point cloud or an empty scene); give a triangle mesh")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError(f"mesh {path} has non-finite vertex coordinates")
    if float(mesh.bounding_sphere.primitive.radius) <= 0:
        raise ValueError(f"mesh {path} is degenerate (all vertices coincide)")
    return normalise(mesh)


def mesh_folder(folder: str | os.PathLike, load: Callable[[str], trimesh.Trimesh]) -> list[str]:
    """Every mesh file of a user's folder (`bench --meshes`), each loaded now so a broken one fails with its name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--meshes {folder} is not a folder")
    found = sorted(str(p.resolve()) for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
    if not found:
        raise ValueError(f"--meshes {folder}: no mesh files ({', '.join(SUFFIXES)})")
    for name in found:
        load(name)
    return found
