"""Meshes for the vision tasks: loaded with trimesh, centred on their bounding sphere and scaled to unit radius."""
from __future__ import annotations

import os
import sys
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
    faces = np.asarray(mesh.faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(mesh.vertices):
        raise ValueError(f"mesh {path} has faces that index missing vertices")
    extent = float(np.ptp(mesh.vertices[np.unique(faces)], axis=0).max())
    if not extent > 0:
        raise ValueError(f"mesh {path} is degenerate (all vertices coincide)")
    if not float(mesh.area) > 1e-12 * extent**2:
        raise ValueError(f"mesh {path} has no surface: every triangle is degenerate (zero area)")
    try:
        return normalise(mesh)
    except Exception as err:  # the bounding sphere of a near-degenerate mesh can fail inside scipy
        raise ValueError(f"mesh {path} cannot be normalised ({type(err).__name__}: {err})") from err


def mesh_folder(folder: str | os.PathLike, load: Callable[[str], trimesh.Trimesh]) -> list[str]:
    """Every usable mesh of a user's folder (`bench --meshes`), each loaded now; what is skipped (another format, a
    file that does not load) is listed on stderr with the reason, and a folder with no usable mesh is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--meshes {folder} is not a folder")
    found, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.suffix.lower() not in SUFFIXES:
            skipped.append(f"{p.name} ({'a folder' if p.is_dir() else 'not ' + '/'.join(SUFFIXES)})")
            continue
        try:
            load(str(p.resolve()))
        except ValueError as err:
            skipped.append(f"{p.name} ({str(err).removeprefix(f'mesh {p.resolve()} ')})")
            continue
        found.append(str(p.resolve()))
    if skipped:
        print(f"--meshes {folder}: skipped {len(skipped)}: {'; '.join(skipped)}", file=sys.stderr)
    if not found:
        raise ValueError(f"--meshes {folder}: no usable mesh file ({', '.join(SUFFIXES)})")
    return found
