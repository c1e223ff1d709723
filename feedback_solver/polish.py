"""Gauss-Newton polish: a few damped Gauss-Newton (Levenberg-Marquardt) steps after the learned ones.

The learned steps find the basin; where the solver's forward model and the data come from different programs (a
relit model of a renderer's shadows, a photograph), the fine position of the answer is set by the energy's minimum,
which a net trained on one program does not reach exactly. For a task whose state has a few tangent dimensions and
whose forward is cheap per call, a Jacobian by finite differences (one call per tangent direction of
`Space.tangent_basis`) and a k x k solve per sample cost k + 1 forward calls an iteration; a sample that has
stopped moving drops out. The task names the residual it minimises (`Task.polish_residual`); by default the
forward model's prediction minus the observation. Our own code: torch has no batched, per-sample LM solver.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from feedback_solver.problem import index_ctx

if TYPE_CHECKING:
    from feedback_solver.problem import Task


MAX_DIM = 32  # tangent dimensions: D + 1 forward calls an iteration and a D x D solve per sample


@dataclass(frozen=True)
class Polish:
    """`steps` Levenberg-Marquardt iterations per sample; `delta` the finite-difference step along each of the
    space's tangent directions (`Space.tangent_basis`), `mu` the starting damping (times the Hessian's diagonal),
    lowered 10x on an accepted step and raised 10x on a rejected one; a sample whose accepted step moves it less
    than `tol` stops. No steps: switched off."""

    steps: int = 0
    delta: float = 1e-3
    mu: float = 1e-3
    tol: float = 1e-5

    @torch.no_grad()
    def __call__(self, task: "Task", x: Tensor, y: Tensor, ctx: dict[str, Any]) -> tuple[Tensor, float]:
        """The polished states and the seconds it took; a sample keeps its state unless its energy drops."""
        start = time.perf_counter()
        zero = task.space.tangent_zeros(x)
        n, dim = x.shape[0], zero[:1].flatten(1).shape[1]
        if not self.steps or n == 0:
            return x, 0.0
        if dim > MAX_DIM:
            raise ValueError(f"solver.polish: task {task.name!r} has {dim} tangent dimensions; a finite-difference "
                             f"Gauss-Newton polish takes at most {MAX_DIM} (set solver.polish.steps=0)")
        x = x.clone()
        r = task.polish_residual(x, ctx, y).flatten(1)
        energy = r.pow(2).mean(1)
        mu = torch.full((n,), self.mu, dtype=r.dtype, device=r.device)
        active = torch.arange(n, device=x.device)
        for _ in range(self.steps):
            if active.numel() == 0:
                break
            sub = ctx if active.numel() == n else index_ctx(ctx, active, n)
            moved = self.iterate(task, x, y, r, energy, mu, active, sub, zero.shape[1:])
            active = active[moved]
        return x, time.perf_counter() - start

    def iterate(self, task: "Task", x: Tensor, y: Tensor, r: Tensor, energy: Tensor, mu: Tensor, active: Tensor,
                ctx: dict[str, Any], shape: tuple[int, ...]) -> Tensor:
        """One damped Gauss-Newton step of the `active` samples, written into x, r, energy and mu in place;
        returns which of them are still moving."""
        xa, ya, ra = x[active], y[active], r[active]
        basis = task.space.tangent_basis(xa)  # (m, D, k)
        m, k = basis.shape[0], basis.shape[2]
        cols = [(task.polish_residual(task.space.retract(xa, (self.delta * basis[:, :, j]).view(m, *shape)), ctx,
                                      ya).flatten(1) - ra) / self.delta for j in range(k)]
        jac = torch.stack(cols, 2)  # (m, P, k): one forward call per direction, on the samples' own context
        hess = jac.transpose(1, 2) @ jac
        grad = (jac.transpose(1, 2) @ ra[:, :, None])[..., 0]
        diag = torch.diagonal(hess, dim1=1, dim2=2)
        step = -torch.linalg.solve(hess + torch.diag_embed(mu[active, None] * diag + 1e-12), grad)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))  # a NaN Jacobian: no move
        dx = (basis @ step[:, :, None])[..., 0].view(m, *shape)
        cand = task.space.retract(xa, dx)
        r_cand = task.polish_residual(cand, ctx, ya).flatten(1)
        e_cand = r_cand.pow(2).mean(1)
        ok = torch.isfinite(e_cand) & (e_cand < energy[active])
        take = active[ok]
        x[take], r[take], energy[take] = cand[ok], r_cand[ok], e_cand[ok]
        mu[active] = torch.where(ok, mu[active] / 10, mu[active] * 10)
        return ~ok | ((cand - xa).flatten(1).norm(dim=1) >= self.tol)
