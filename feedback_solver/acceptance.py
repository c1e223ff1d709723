"""The solver's inference strategies, built in one factory (`strategies`): how far to take a proposed step (always,
or damped LM-style per sample) and which samples to solve again from other starts."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from feedback_solver.problem import index_ctx

if TYPE_CHECKING:
    from feedback_solver.problem import Task


@dataclass
class Accepted:
    """The next state, its prediction and energy when known, the step scale taken, forward time spent, and which
    samples' proposals were NaN or infinite (the step, its retraction or its render) and so rejected."""

    x: Tensor
    y_t: Tensor | None
    energy: Tensor | None
    lam: Tensor
    seconds: float
    nonfinite: Tensor | None = None


def finite_rows(t: Tensor) -> Tensor:
    """Per sample: whether every entry of its row is finite."""
    return torch.isfinite(t.flatten(1)).all(1)


class AlwaysAccept:
    """Take every proposed step in full (training, and the no-damping ablation), but never a NaN or infinite one."""

    def __call__(
        self, task: "Task", x: Tensor, dx: Tensor, y: Tensor, ctx: dict[str, Any], energy: Tensor, y_t: Tensor
    ) -> Accepted:
        cand = task.space.retract(x, dx)
        bad = ~(finite_rows(dx) & finite_rows(cand))
        lam = torch.ones(x.shape[0], device=x.device)
        if bad.any():  # only then: the common all-finite step costs two reductions, no copy
            cand = torch.where(bad.view(-1, *[1] * (x.dim() - 1)), x, cand)
            lam[bad] = 0.0
        return Accepted(cand, None, None, lam, 0.0, bad)


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
        nonfinite = ~finite_rows(dx)  # a NaN step stays NaN at any scale: rejected at once, never rendered
        pending, accepted = ~nonfinite, torch.zeros_like(nonfinite)
        seconds = 0.0
        for _ in range(self.max_halvings + 1):
            idx = pending.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            scale = lam[idx].view(-1, *[1] * (dx.dim() - 1))  # per sample, for vectors and maps alike
            cand = task.space.retract(x[idx], scale * dx[idx])
            sane = finite_rows(cand)
            nonfinite[idx[~sane]], pending[idx[~sane]] = True, False
            idx, cand = idx[sane], cand[sane]
            if idx.numel() == 0:
                break
            every = idx.numel() == n  # the first trial, as a rule: the batch's own context, nothing copied
            start = time.perf_counter()
            y_cand = task.forward(cand, ctx if every else index_ctx(ctx, idx, n))
            seconds += time.perf_counter() - start
            e_cand = task.energy(y_cand, y if every else y[idx])
            finite = torch.isfinite(e_cand) & finite_rows(y_cand)
            nonfinite[idx[~finite]] = True  # the forward model's NaN: a rejected trial, like a rising energy
            ok = finite & ((e_cand <= energy[idx]) | ~torch.isfinite(energy[idx]))  # any finite beats a NaN
            x_new[idx[ok]], e_new[idx[ok]], y_new[idx[ok]] = cand[ok], e_cand[ok], y_cand[ok]
            pending[idx[ok]], accepted[idx[ok]] = False, True
            lam[idx[~ok]] *= self.factor
        lam[~accepted] = 0.0
        return Accepted(x_new, y_new, e_new, lam, seconds, nonfinite)


@dataclass(frozen=True)
class Restarts:
    """Solve again, from `starts` of the task's other starts, the samples whose final energy stays above
    `energy_above`; each keeps its lowest-energy run. No starts: switched off."""

    starts: int = 0
    energy_above: float = 0.0

    def chosen(self, energy: Tensor) -> Tensor:
        """The samples to solve again."""
        return (energy > self.energy_above).nonzero().flatten()


Acceptance = AlwaysAccept | LMDamping


def strategies(solver: DictConfig) -> tuple[Acceptance, Restarts]:
    """The `solver` section's damping and restarts as objects: the one place the solver's strategies are built."""
    d, r = solver.damping, solver.get("restarts") or {}
    acceptance = LMDamping(d.max_halvings, d.factor) if d.enabled else AlwaysAccept()
    return acceptance, Restarts(int(r.get("starts", 0)), float(r.get("energy_above", 0.0)))
