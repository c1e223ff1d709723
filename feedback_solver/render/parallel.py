"""Renders from a pool of worker processes, one GL context each.

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
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
import trimesh
from torch import Tensor

from feedback_solver.render.gl import import_pyrender

Loader = Callable[[Hashable], trimesh.Trimesh]
Factory = Callable[[], Any]


def _render_chunk(factory: Factory, loader: Loader, method: str, keys: list[Hashable],
                  params: np.ndarray) -> np.ndarray:
    """In a worker: one chunk through the renderer's compact `method` (booleans or uint8, not float32, come back)."""
    gl = factory()
    for key in set(keys):
        gl.add_mesh(key, loader(key))
    return getattr(gl, method)(keys, torch.from_numpy(params))


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


def render_parallel(factory: Factory, workers: int, loader: Loader, keys: Sequence[Hashable], params: Tensor,
                    method: str = "render_array") -> np.ndarray:
    """(B, P) parameters -> `factory()`'s `method` output for the batch, split into `workers` contiguous chunks in
    order. `factory` must pickle (a module-level function, or a functools.partial of one with hashable args)."""
    if len(keys) != params.shape[0]:
        raise ValueError(f"{len(keys)} mesh keys for {params.shape[0]} parameter rows")
    host = params.detach().to("cpu", torch.float64).numpy()
    bounds = np.linspace(0, len(keys), workers + 1).astype(int)
    jobs = [executor(workers).submit(_render_chunk, factory, loader, method, list(keys[a:b]), host[a:b])
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return np.concatenate([job.result() for job in jobs])
