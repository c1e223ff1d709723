"""Run methods on a task's test split and write per-method metrics, timings and error curves (JSON, Markdown, PNG)."""
from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm.auto import tqdm

from feedback_solver.baselines import OPTIMISERS, OptimResult
from feedback_solver.checkpoints import load_weights, read_model
from feedback_solver.problem import Batch, Task
from feedback_solver.report import write_report
from feedback_solver.solver import FeedbackSolver, build_solver

#: report names of learned methods -> (checkpoint variant, whether damping is forced off)
LEARNED = {
    "feedback": ("feedback", False),
    "feedback_shared": ("feedback_shared", False),
    "feedback_gradient": ("feedback_gradient", False),
    "feedback_no_damping": ("feedback", True),
    "regression": ("regression", False),
}
SLOW = ("adam", "lbfgs", "hybrid")


def load_solver(task: Task, variant: str = "feedback", path: str | os.PathLike | None = None,
                no_damping: bool = False, folder: Path | None = None) -> FeedbackSolver:
    """Rebuild a shipped (or given) checkpoint's solver from the config stored inside it."""
    path = Path(path) if path else (folder or task.checkpoint_dir) / f"{variant}.safetensors"
    tensors, cfg, _ = read_model(path, task.name)
    if no_damping:
        cfg.solver.damping.enabled = False
    solver = build_solver(task, cfg)
    load_weights(solver, tensors, str(path))
    return solver.eval()


def summarise(task: Task, x: Tensor, batch: Batch) -> dict[str, Any]:
    """Mean, median and std of every metric, and the outlier rate."""
    per = task.metrics(x, batch.x, batch.ctx)
    out: dict[str, Any] = {"metrics": {
        k: {"mean": float(v.mean()), "median": float(v.median()), "std": float(v.std())} for k, v in per.items()}}
    flags = task.is_outlier(per)
    out["outlier_rate"] = None if flags is None else float(flags.float().mean())
    return out


def curve(task: Task, states: dict[int, Tensor], batch: Batch, metric: str) -> dict[str, list]:
    """The primary metric's median and mean at each recorded step or iteration."""
    steps = sorted(states)
    vals = [task.metrics(states[s], batch.x, batch.ctx)[metric] for s in steps]
    return {"step": steps, "median": [float(v.median()) for v in vals], "mean": [float(v.mean()) for v in vals]}


def run_learned(task: Task, solver: FeedbackSolver, batch: Batch, cfg: DictConfig, metric: str,
                steps: int | None = None) -> tuple[dict[str, Any], Tensor]:
    """Solve in chunks; time the whole call, and split out the forward model's share from the trace."""
    solver.solve(batch.y[:2], batch.index(slice(0, 2)).ctx, steps)  # warm-up: first calls allocate
    xs, states, energies, wall, fwd = [], {}, [], 0.0, 0.0
    size = cfg.bench.batch_size
    for lo in range(0, len(batch), size):
        part = batch.index(slice(lo, lo + size))
        start = time.perf_counter()
        res = solver.solve(part.y, part.ctx, steps)
        wall += time.perf_counter() - start
        fwd += res.forward_seconds
        xs.append(res.x)
        energies.append(res.trace.energies())
        for t, x_t in enumerate(res.trace.x):
            states.setdefault(t, []).append(x_t)
    x = torch.cat(xs)
    e = torch.cat(energies)
    entry = summarise(task, x, batch)
    entry |= {"steps": float(solver.steps if steps is None else steps), "seconds_per_sample": wall / len(batch),
              "forward_seconds_per_sample": fwd / len(batch), "samples": len(batch),
              "curve": curve(task, {t: torch.cat(v) for t, v in states.items()}, batch, metric),
              "energy_monotone": float((e.diff(dim=1) <= 0).all(dim=1).float().mean()) if e.shape[1] > 1 else None}
    return entry, x


def run_optimiser(task: Task, name: str, batch: Batch, x0: Tensor, cfg: DictConfig, metric: str,
                  extra_seconds: float = 0.0) -> dict[str, Any]:
    """Adam or L-BFGS from x0 with the seed's stopping rule."""
    res: OptimResult = OPTIMISERS[name](task, batch.y, batch.ctx, x0, cfg)
    entry = summarise(task, res.x, batch)
    entry |= {"steps": float(res.steps.float().median()), "seconds_per_sample": (res.seconds + extra_seconds) / len(batch),
              "forward_seconds_per_sample": None, "samples": len(batch),
              "curve": curve(task, res.snapshots, batch, metric)}
    return entry


def primary_metric(task: Task, cfg: DictConfig, batch: Batch) -> str:
    return cfg.bench.primary_metric or next(iter(task.metrics(batch.x[:1], batch.x[:1], batch.index(slice(0, 1)).ctx)))


def run_bench(task: Task, cfg: DictConfig, out: str | os.PathLike, methods: list[str] | None = None,
              samples: int | None = None, seed: int | None = None, command: str = "",
              checkpoints: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Every requested method on the same test samples; slow ones on a fixed subset beside `feedback`."""
    methods = list(methods or cfg.bench.methods)
    unknown = [m for m in methods if m not in LEARNED and m not in SLOW]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(LEARNED) + list(SLOW)}")
    samples = samples or cfg.bench.samples
    seed = cfg.seed if seed is None else seed
    batch = task.sample(samples, "test", seed)
    slow_n = min(cfg.bench.slow_samples, len(batch))
    subset = batch.index(slice(0, slow_n))
    metric = primary_metric(task, cfg, batch)
    result: dict[str, Any] = {"task": task.name, "data": f"{task.describe_data('test')}; {len(batch)} samples",
                              "seed": seed, "command": command, "primary_metric": metric, "methods": {}}
    sub: dict[str, Any] = {"samples": slow_n, "note": f"the first {slow_n} test samples: slow baselines and "
                           "`feedback` on the same samples, so time ratios compare like with like", "methods": {}}
    load = partial(load_solver, task, folder=checkpoints)
    jobs = plan_jobs(task, cfg, methods, batch, subset, metric, result["methods"], sub["methods"], load)
    for name, job in tqdm(jobs, desc=f"bench {task.name}", disable=not progress):
        job()
    if sub["methods"]:
        result["subset"] = sub
    result["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_report(result, out)
    return result


def plan_jobs(task, cfg, methods, batch, subset, metric, full, sub, load) -> list[tuple[str, Callable[[], None]]]:
    """One closure per (method, sample set); learned methods on all samples, slow ones on the subset."""
    jobs: list[tuple[str, Callable[[], None]]] = []
    for m in methods:
        if m in LEARNED:
            variant, off = LEARNED[m]
            jobs.append((m, lambda m=m, v=variant, o=off: full.__setitem__(
                m, run_learned(task, load(v, no_damping=o), batch, cfg, metric)[0])))
    slow = [m for m in methods if m in SLOW]
    if slow:
        jobs.append(("feedback (subset)", lambda: sub.__setitem__(
            "feedback", run_learned(task, load(), subset, cfg, metric)[0])))
    for m in slow:
        jobs.append((m, lambda m=m: sub.__setitem__(m, run_slow(task, m, subset, cfg, metric, load))))
    return jobs


def run_slow(task: Task, name: str, batch: Batch, cfg: DictConfig, metric: str, load: Callable) -> dict[str, Any]:
    """Optimisers start from the task's constant start; hybrid starts from the learned solver's answer."""
    if name != "hybrid":
        return run_optimiser(task, name, batch, task.initial(batch), cfg, metric)
    solver = load()
    start = time.perf_counter()
    x0 = solver.solve(batch.y, batch.ctx).x
    return run_optimiser(task, cfg.baselines.hybrid, batch, x0, cfg, metric, time.perf_counter() - start)
