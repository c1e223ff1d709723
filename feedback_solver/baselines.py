"""Classical baselines written once for every task: Adam and L-BFGS on E_data (+ prior), differentiable forward."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from feedback_solver.problem import Task, index_ctx

#: iterations at which optimiser states are kept for the error-against-iteration plot
SNAPSHOTS = (0, 1, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 200, 300, 500)


@dataclass
class OptimResult:
    """Best x per sample, the iterations each took, wall time, and snapshots for the error curve."""

    x: Tensor
    steps: Tensor
    seconds: float
    snapshots: dict[int, Tensor] = field(default_factory=dict)


def objective(task: Task, x: Tensor, y: Tensor, ctx: dict[str, Any], prior_weight: float) -> Tensor:
    """Per-sample E_data(f(x), y) + w * prior(x), through the task's differentiable (or surrogate) forward."""
    x = task.space.project(x)
    energy = task.energy(task.surrogate_forward(x, ctx), y)
    prior = task.prior(x) if prior_weight else None
    return energy if prior is None else energy + prior_weight * prior


def scaled(value: Tensor, cfg: DictConfig) -> Tensor:
    """The objective times baselines.energy_scale: Adam does not care, L-BFGS's tolerances do (a per-pixel mean
    over a large image has gradients near its 1e-7 tolerance)."""
    return value * float(cfg.baselines.energy_scale)


class Stopper:
    """The seed's stopping rule per sample: at most N iterations, or stop after `patience` without improvement."""

    def __init__(self, x0: Tensor, patience: int, rel_tol: float):
        n, dev = x0.shape[0], x0.device
        self.best_x, self.best_e = x0.detach().clone(), torch.full((n,), float("inf"), device=dev)
        self.since = torch.zeros(n, dtype=torch.long, device=dev)
        self.active = torch.ones(n, dtype=torch.bool, device=dev)
        self.steps = torch.zeros(n, dtype=torch.long, device=dev)
        self.patience, self.rel_tol = patience, rel_tol

    def update(self, x: Tensor, e: Tensor) -> bool:
        """Record this iteration's energies; returns whether any sample is still running."""
        e = e.detach()
        better = self.active & torch.isfinite(e) & (e < self.best_e - self.rel_tol * self.best_e.abs().clamp(max=1e30))
        self.best_x[better], self.best_e[better] = x.detach()[better], e[better]
        self.since[better] = 0
        self.since[self.active & ~better] += 1
        self.active &= self.since < self.patience
        self.steps[self.active] += 1
        return bool(self.active.any())


def adam(task: Task, y: Tensor, ctx: dict[str, Any], x0: Tensor, cfg: DictConfig) -> OptimResult:
    """Batched Adam: per-sample energies are independent, so one optimiser serves the batch."""
    b = cfg.baselines
    x = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=b.adam.lr)
    stop = Stopper(x0, b.patience, b.rel_tol)
    snaps: dict[int, Tensor] = {}
    start = time.perf_counter()
    for it in range(b.max_iterations + 1):
        e = objective(task, x, y, ctx, b.prior_weight)
        running = stop.update(task.space.project(x), e)
        if it in SNAPSHOTS:
            snaps[it] = stop.best_x.clone()
        if not running or it == b.max_iterations:
            break
        opt.zero_grad(set_to_none=True)
        (e * stop.active).sum().backward()
        opt.step()
    return OptimResult(stop.best_x, stop.steps.clamp(max=b.max_iterations), time.perf_counter() - start,
                       fill(snaps, stop.best_x, b.max_iterations))


def lbfgs(task: Task, y: Tensor, ctx: dict[str, Any], x0: Tensor, cfg: DictConfig) -> OptimResult:
    """L-BFGS with strong-Wolfe line search, one sample at a time (its curvature pairs are not separable)."""
    results = [lbfgs_one(task, y[i : i + 1], index_ctx(ctx, torch.tensor([i]), len(y)), x0[i : i + 1], cfg)
               for i in range(len(y))]
    snaps = {k: torch.cat([r.snapshots[k] for r in results]) for k in results[0].snapshots}
    return OptimResult(torch.cat([r.x for r in results]), torch.cat([r.steps for r in results]),
                       sum(r.seconds for r in results), snaps)


def lbfgs_one(task: Task, y: Tensor, ctx: dict[str, Any], x0: Tensor, cfg: DictConfig) -> OptimResult:
    b = cfg.baselines
    # L-BFGS flattens the gradient with view(-1): a start in another memory format (a channels-last net's) is copied
    x = x0.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=b.lbfgs.lr, max_iter=1, history_size=b.lbfgs.history_size,
                            line_search_fn="strong_wolfe", tolerance_grad=b.lbfgs.tolerance_grad,
                            tolerance_change=b.lbfgs.tolerance_change)
    stop = Stopper(x0, b.patience, b.rel_tol)
    snaps: dict[int, Tensor] = {}

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        e = scaled(objective(task, x, y, ctx, b.prior_weight), cfg).sum()
        e.backward()
        return e

    start = time.perf_counter()
    for it in range(b.max_iterations + 1):
        with torch.no_grad():
            e = objective(task, x, y, ctx, b.prior_weight)
        running = stop.update(task.space.project(x.detach()), e)
        if it in SNAPSHOTS:
            snaps[it] = stop.best_x.clone()
        if not running or it == b.max_iterations:
            break
        opt.step(closure)
    return OptimResult(stop.best_x, stop.steps.clamp(max=b.max_iterations), time.perf_counter() - start,
                       fill(snaps, stop.best_x, b.max_iterations))


def fill(snaps: dict[int, Tensor], final: Tensor, max_iterations: int) -> dict[int, Tensor]:
    """A stopped sample keeps its final estimate: fill the whole schedule, so curves of any two batches align."""
    return {k: snaps.get(k, final) for k in SNAPSHOTS if k <= max_iterations}


OPTIMISERS = {"adam": adam, "lbfgs": lbfgs}
