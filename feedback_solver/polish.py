"""Gauss-Newton polish: a few damped Gauss-Newton (Levenberg-Marquardt) steps after the learned ones.

The learned steps find the basin; where the solver's forward model and the data come from different programs (a
relit model of a renderer's shadows, a photograph), the fine position of the answer is set by the energy's minimum,
which a net trained on one program does not reach exactly. For a task whose state has a few tangent dimensions and
whose forward is cheap per call, a Jacobian by finite differences (one call per tangent direction) and a
D x D solve per sample cost D + 1 forward calls an iteration. The task names the residual it minimises
(`Task.polish_residual`); by default the forward model's minus the observation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from feedback_solver.problem import Task


MAX_DIM = 32  # tangent dimensions: D + 1 forward calls an iteration and a D x D solve per sample


@dataclass(frozen=True)
class Polish:
    """`steps` Levenberg-Marquardt iterations per sample; `delta` the finite-difference step in the tangent,
    `mu` the starting damping (times the Hessian's diagonal), raised 10x on a rejected step and lowered 10x on an
    accepted one. No steps: switched off."""

    steps: int = 0
    delta: float = 1e-3
    mu: float = 1e-3

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
        r = task.polish_residual(x, ctx, y).flatten(1)
        energy = r.pow(2).mean(1)
        mu = torch.full((n,), self.mu, dtype=r.dtype, device=r.device)
        basis = torch.eye(dim, dtype=x.dtype, device=x.device) * self.delta
        for _ in range(self.steps):
            # one call per tangent direction on the batch's own context (a D-fold copy of it would cost more)
            jac = torch.stack([(task.polish_residual(task.space.retract(x, e.expand(n, dim).view(zero.shape)), ctx, y)
                                .flatten(1) - r) / self.delta for e in basis], 2)  # (B, P, D)
            hess = jac.transpose(1, 2) @ jac
            grad = (jac.transpose(1, 2) @ r[:, :, None])[..., 0]
            diag = torch.diagonal(hess, dim1=1, dim2=2)
            damped = hess + torch.diag_embed(mu[:, None] * diag + 1e-12)
            step = -torch.linalg.solve(damped, grad)
            cand = task.space.retract(x, step.view(zero.shape))
            r_cand = task.polish_residual(cand, ctx, y).flatten(1)
            e_cand = r_cand.pow(2).mean(1)
            ok = torch.isfinite(e_cand) & (e_cand < energy)
            x = torch.where(ok.view(-1, *[1] * (x.dim() - 1)), cand, x)
            r = torch.where(ok[:, None], r_cand, r)
            energy = torch.where(ok, e_cand, energy)
            mu = torch.where(ok, mu / 10, mu * 10)
        return x, time.perf_counter() - start
