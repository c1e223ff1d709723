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
    """Per sample: whether every entry of its row is finite (a NaN or inf makes the row's sum NaN or inf: one
    reduction, not a mask and a second one; only entries near float's largest value could overflow it)."""
    return torch.isfinite(t.flatten(1).sum(1))


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
    """Per sample: try lambda = 1, halve until E_data drops, give up after `max_halvings` and keep x (lambda = 0).

    The first `in_turn` scales are tried one forward call each, on the samples still searching; the rest in one call
    together (each such sample's remaining scales stacked as a batch), each sample keeping its largest scale that
    lowers its energy: the same answer as trying them all in turn. A sample the first halving does not help seldom
    gains from the next, so a batched forward model (cost per call) saves calls, while a renderer that pays per
    image keeps every trial in turn (the default: in_turn = None)."""

    def __init__(self, max_halvings: int = 4, factor: float = 0.5, in_turn: int | None = None):
        if max_halvings < 0 or not 0 < factor < 1:
            raise ValueError(f"damping: need max_halvings >= 0 and 0 < factor < 1, got {max_halvings}, {factor}")
        if in_turn is not None and in_turn < 1:
            raise ValueError(f"damping: in_turn must be >= 1 (the full step is tried first), got {in_turn}")
        self.max_halvings, self.factor, self.in_turn = max_halvings, factor, in_turn

    @torch.no_grad()
    def __call__(
        self, task: "Task", x: Tensor, dx: Tensor, y: Tensor, ctx: dict[str, Any], energy: Tensor, y_t: Tensor
    ) -> Accepted:
        n = x.shape[0]
        out = Trials(x.clone(), energy.clone(), y_t.clone(), torch.ones(n, device=x.device), ~finite_rows(dx))
        pending = ~out.nonfinite  # a NaN step stays NaN at any scale: rejected at once, never rendered
        # the scales as halving a float32 lambda in turn makes them (bit for bit, whatever the factor)
        scales = torch.cat([torch.ones(1), torch.full((self.max_halvings,), self.factor).cumprod(0)]).tolist()
        turns = len(scales) if self.in_turn is None else self.in_turn
        for k in range(min(turns, len(scales))):
            pending = trial(task, x, dx, y, ctx, energy, out, pending, scales[k:k + 1])
        trial(task, x, dx, y, ctx, energy, out, pending, scales[turns:])
        out.lam[~out.accepted] = 0.0
        return Accepted(out.x, out.y_t, out.energy, out.lam, out.seconds, out.nonfinite)


@dataclass
class Trials:
    """The damping's answer so far: per sample its state, energy, prediction, scale, flags, and the forward time."""

    x: Tensor
    energy: Tensor
    y_t: Tensor
    lam: Tensor
    nonfinite: Tensor
    seconds: float = 0.0
    accepted: Tensor | None = None

    def __post_init__(self):
        if self.accepted is None:
            self.accepted = torch.zeros_like(self.nonfinite)


def trial(task: "Task", x: Tensor, dx: Tensor, y: Tensor, ctx: dict[str, Any], energy: Tensor, out: Trials,
          pending: Tensor, scales: list[float]) -> Tensor:
    """The pending samples' steps at each of `scales` (largest first) in one forward call. A sample takes its first
    scale that lowers its energy, stops at a non-finite retraction, and searches on past a non-finite render or a
    rising energy, as a search in turn would. Returns the samples still pending."""
    n, k = x.shape[0], len(scales)
    idx = pending.nonzero().squeeze(1)
    m = idx.numel()
    if m == 0 or k == 0:
        return pending
    rows = idx.repeat(k)  # scale-major: trial j of sample idx[i] is row j * m + i
    scale = torch.tensor(scales, dtype=dx.dtype, device=dx.device).repeat_interleave(m)
    cand = task.space.retract(x[rows], scale.view(-1, *[1] * (dx.dim() - 1)) * dx[rows])
    sane = finite_rows(cand)
    ok, finite = torch.zeros_like(sane), torch.ones_like(sane)
    live = sane.nonzero().squeeze(1)
    y_cand = e_cand = None
    if live.numel():
        every = live.numel() == n and k == 1  # the first trial, as a rule: the batch's own context, nothing copied
        start = time.perf_counter()
        y_cand = task.forward(cand[live], ctx if every else index_ctx(ctx, rows[live], n))
        out.seconds += time.perf_counter() - start
        e_cand = task.energy(y_cand, y if every else y[rows[live]])
        finite[live] = torch.isfinite(e_cand) & finite_rows(y_cand)  # the forward model's NaN: a rejected trial
        e_ref = energy[rows[live]]
        ok[live] = finite[live] & ((e_cand <= e_ref) | ~torch.isfinite(e_ref))  # any finite beats a NaN
    ends = (ok | ~sane).view(k, m)  # the trial that ends a sample's search: accepted, or a retraction not finite
    first = torch.where(ends.any(0), ends.float().argmax(0), torch.full_like(idx, k))
    made = torch.arange(k, device=x.device)[:, None] <= first[None, :]  # the trials a search in turn makes
    out.nonfinite[idx[((~finite | ~sane).view(k, m) & made).any(0)]] = True
    won = (first < k) & ok.view(k, m).gather(0, first.clamp(max=k - 1)[None])[0]
    if won.any():
        row = first[won] * m + won.nonzero().squeeze(1)  # rows of cand
        at = torch.full_like(rows, -1)
        at[live] = torch.arange(live.numel(), device=x.device)
        dst = idx[won]
        out.x[dst], out.energy[dst], out.y_t[dst] = cand[row], e_cand[at[row]], y_cand[at[row]]
        out.accepted[dst] = True
        out.lam[dst] = scale[row].to(out.lam.dtype)
    still = pending.clone()
    still[idx[first < k]] = False
    return still


@dataclass(frozen=True)
class Restarts:
    """Solve again, from `starts` of the task's other starts, the samples whose final energy stays above
    `energy_above`; each keeps its lowest-energy run. No starts: switched off. With `triage` steps, only the start
    of lowest energy after them is continued (a wrong basin shows in its energy early)."""

    starts: int = 0
    energy_above: float = 0.0
    triage: int = 0  # > 0: all starts run this many steps, then only each sample's lowest-energy one goes on

    def chosen(self, energy: Tensor) -> Tensor:
        """The samples to solve again."""
        return (energy > self.energy_above).nonzero().flatten()


Acceptance = AlwaysAccept | LMDamping


def strategies(solver: DictConfig) -> tuple[Acceptance, Restarts]:
    """The `solver` section's damping and restarts as objects: the one place the solver's strategies are built."""
    d, r = solver.damping, solver.get("restarts") or {}
    acceptance = LMDamping(d.max_halvings, d.factor, d.get("in_turn")) if d.enabled else AlwaysAccept()
    return acceptance, Restarts(int(r.get("starts", 0)), float(r.get("energy_above", 0.0)), int(r.get("triage", 0)))
