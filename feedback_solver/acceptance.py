"""Whether and how far to take a proposed step: always, or damped LM-style per sample."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from feedback_solver.problem import index_ctx

if TYPE_CHECKING:
    from feedback_solver.problem import Task


@dataclass
class Accepted:
    """The next state, its prediction and energy when known, the step scale taken, and forward time spent."""

    x: Tensor
    y_t: Tensor | None
    energy: Tensor | None
    lam: Tensor
    seconds: float


class AlwaysAccept:
    """Take every proposed step in full (training, and the no-damping ablation)."""

    def __call__(
        self, task: "Task", x: Tensor, dx: Tensor, y: Tensor, ctx: dict[str, Any], energy: Tensor, y_t: Tensor
    ) -> Accepted:
        return Accepted(task.space.retract(x, dx), None, None, torch.ones(x.shape[0], device=x.device), 0.0)


class LMDamping:
    """Per sample: try lambda = 1, halve until E_data drops, give up after `max_halvings` and keep x (lambda = 0)."""

    def __init__(self, max_halvings: int = 4, factor: float = 0.5):
        if max_halvings < 0 or not 0 < factor < 1:
            raise ValueError(f"damping: need max_halvings >= 0 and 0 < factor < 1, got {max_halvings}, {factor}")
        self.max_halvings, self.factor = max_halvings, factor

    @torch.no_grad()
    def __call__(
        self, task: "Task", x: Tensor, dx: Tensor, y: Tensor, ctx: dict[str, Any], energy: Tensor, y_t: Tensor
    ) -> Accepted:
        n = x.shape[0]
        x_new, e_new, y_new = x.clone(), energy.clone(), y_t.clone()
        lam = torch.ones(n, device=x.device)
        pending = torch.ones(n, dtype=torch.bool, device=x.device)
        seconds = 0.0
        for _ in range(self.max_halvings + 1):
            idx = pending.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            scale = lam[idx].view(-1, *[1] * (dx.dim() - 1))  # per sample, for vectors and maps alike
            cand = task.space.retract(x[idx], scale * dx[idx])
            start = time.perf_counter()
            y_cand = task.forward(cand, index_ctx(ctx, idx, n))
            seconds += time.perf_counter() - start
            e_cand = task.energy(y_cand, y[idx])
            ok = torch.isfinite(e_cand) & (e_cand <= energy[idx])
            x_new[idx[ok]], e_new[idx[ok]], y_new[idx[ok]] = cand[ok], e_cand[ok], y_cand[ok]
            pending[idx[ok]] = False
            lam[idx[~ok]] *= self.factor
        lam[pending] = 0.0
        return Accepted(x_new, y_new, e_new, lam, seconds)
