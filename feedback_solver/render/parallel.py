"""Silhouettes from a pool of worker processes, one GL context each.

pyrender renders one view per call from Python, so a big batch (a training pool's states) is bound by one core;
on a machine with many cores, `render_parallel` splits the batch over spawned workers (spawn, not fork: a forked
GL or CUDA context is unusable). The stdlib executor suits this; each worker keeps its renderer and meshes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Hashable, Sequence

import numpy as np
import torch
import trimesh
from torch import Tensor

from feedback_solver.render.gl import Camera, import_pyrender, renderer

Loader = Callable[[Hashable], trimesh.Trimesh]


def _render_chunk(camera: Camera, loader: Loader, keys: list[Hashable], poses: np.ndarray) -> np.ndarray:
    """In a worker: the masks of one chunk, as booleans (a quarter of the bytes of float32 back through the pipe)."""
    gl = renderer(camera)
    for key in set(keys):
        if key not in gl.nodes:
            gl.add_mesh(key, loader(key))
    return gl.render(keys, torch.from_numpy(poses)).numpy() > 0.5


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when its parent dies, so a killed training run leaves no renderers behind."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        pass


@functools.cache
def executor(workers: int) -> ProcessPoolExecutor:
    """The process's worker pool (spawned once, then reused by every call)."""
    import_pyrender()  # sets PYOPENGL_PLATFORM, which the workers inherit
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent)


def render_parallel(camera: Camera, workers: int, loader: Loader, keys: Sequence[Hashable], poses: Tensor) -> Tensor:
    """(B, 7) poses -> (B, 1, S, S) masks, the batch split into `workers` contiguous chunks in order."""
    if len(keys) != poses.shape[0]:
        raise ValueError(f"{len(keys)} mesh keys for {poses.shape[0]} poses")
    host = poses.detach().to("cpu", torch.float64).numpy()
    bounds = np.linspace(0, len(keys), workers + 1).astype(int)
    jobs = [executor(workers).submit(_render_chunk, camera, loader, list(keys[a:b]), host[a:b])
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    masks = np.concatenate([job.result() for job in jobs])
    return torch.from_numpy(masks.astype(np.float32)).to(poses.device)
