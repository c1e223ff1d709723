"""The learned-feedback loop: x0 = init(y); x_{t+1} = accept(x_t, update_t(feedback(x_t)))."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from feedback_solver.acceptance import Acceptance, Restarts, strategies
from feedback_solver.checkpoints import load_weights, read_model
from feedback_solver.feedback import Feedback
from feedback_solver.polish import Polish
from feedback_solver.problem import Batch, Task, index_ctx
from feedback_solver.progress import bar
from feedback_solver.update import Stages


def no_restarts() -> Restarts:
    """Restarts switched off: for training and ablations."""
    return Restarts()


@dataclass
class Trace:
    """Per step: the states, energies (B x T+1), step scales (B x T) and where the time went."""

    x: list[Tensor] = field(default_factory=list)
    energy: list[Tensor] = field(default_factory=list)
    lam: list[Tensor] = field(default_factory=list)
    nonfinite: list[Tensor] = field(default_factory=list)  # per step: samples whose proposal was NaN/inf, rejected
    forward_seconds: list[float] = field(default_factory=list)
    update_seconds: list[float] = field(default_factory=list)
    init_seconds: float = 0.0
    polish_seconds: float = 0.0  # solver.polish, after the steps and restarts (its forward calls)
    carry: tuple[Any, Tensor | None] = (None, None)  # the run's last recurrent state and prediction, to continue it
    resolved: Tensor | None = None  # solver.restarts: samples solved again from other starts ...
    restarted: Tensor | None = None  # ... and those whose answer came from one of them

    def energies(self) -> Tensor:
        return torch.stack(self.energy, 1)

    def lambdas(self) -> Tensor:
        return torch.stack(self.lam, 1) if self.lam else torch.zeros(len(self.x[0]), 0)

    def nonfinite_count(self) -> int:
        """Proposals (sample x step) rejected because the step, its retraction or its render was NaN or inf."""
        return int(sum(int(b.sum()) for b in self.nonfinite))


@dataclass
class SolveResult:
    """The final estimate and how the solver got there."""

    x: Tensor
    trace: Trace
    steps: int

    @property
    def seconds(self) -> float:
        t = self.trace
        return t.init_seconds + sum(t.forward_seconds) + sum(t.update_seconds) + t.polish_seconds

    @property
    def forward_seconds(self) -> float:
        return sum(self.trace.forward_seconds) + self.trace.polish_seconds


class FeedbackSolver(nn.Module):
    """A learned initializer (optional) and update stages, run against a task's forward model."""

    def __init__(
        self,
        task: "Task",
        stages: Stages | None,
        feedback: Feedback,
        acceptance: Acceptance,
        steps: int,
        initializer: nn.Module | None = None,
        restarts: Restarts | None = None,
        symmetric: bool = False,
        polish: Polish | None = None,
    ):
        super().__init__()
        self.restarts = restarts if restarts is not None else no_restarts()
        self.polish = polish if polish is not None else Polish()
        self.symmetric = symmetric
        self.task, self.stages, self.initializer = task, stages, initializer
        self.feedback, self.acceptance, self.steps = feedback, acceptance, steps

    @classmethod
    def from_checkpoint(cls, task: "Task", variant: str = "feedback", path: str | os.PathLike | None = None,
                        off: tuple[str, ...] = (), folder: Path | None = None) -> "FeedbackSolver":
        """A shipped (or given) checkpoint's solver, rebuilt on the CPU from the config stored inside it.

        The checkpoint-versus-running-config rule: what the solver learned with (model, feedback, steps, mode,
        damping) comes from the checkpoint; how to run it (restarts, symmetry averaging, polish, damping.in_turn)
        from the running config. `off` names the inference switches an ablation turns off ("damping", "restarts",
        "symmetry", "polish").
        """
        path = Path(path) if path else (folder or task.checkpoint_dir) / f"{variant}.safetensors"
        tensors, cfg, _ = read_model(path, task.name)
        task.check_checkpoint(cfg, path)
        running = task.cfg.solver
        cfg.solver.restarts = OmegaConf.to_container(running.restarts, resolve=True) if "restarts" in running else {}
        cfg.solver.symmetries = bool(running.get("symmetries", False)) and "symmetry" not in off
        cfg.solver.damping.in_turn = running.damping.get("in_turn") if "damping" in running else None
        if "damping" in off:
            cfg.solver.damping.enabled = False
        if "restarts" in off:
            cfg.solver.restarts.starts = 0
        cfg.solver.polish = OmegaConf.to_container(running.polish, resolve=True) if "polish" in running else {}
        if "polish" in off:
            cfg.solver.polish.steps = 0
        solver = build_solver(task.for_checkpoint(cfg), cfg)
        load_weights(solver, tensors, str(path))
        return solver.eval()

    def init(self, y: Tensor, ctx: dict[str, Any]) -> Tensor:
        x0 = self.task.initial(Batch(y, None, ctx))
        return x0 if self.initializer is None else self.task.space.project(self.initializer(y, ctx, x0))

    def propose(self, t: int, x: Tensor, y: Tensor, ctx: dict[str, Any], h: Any, y_t: Tensor | None = None):
        """One feedback evaluation and one update-net call (one per symmetry under `symmetric`): (dx, h, feedback)."""
        fb = self.feedback(self.task, x, y, ctx, y_t)
        if self.stages is None:
            raise ValueError("this solver has no update stages (steps = 0): it is an initializer only")
        symmetries = self.task.symmetries() if self.symmetric and not self.training else []
        if not symmetries:
            dx, h = self.stages(t, fb.inputs, h)
            return self.check_step(dx, x, t), h, fb
        hs = h if h is not None else [None] * len(symmetries)
        steps, h = [], []
        for g, h_g in zip(symmetries, hs):  # each transform keeps its own recurrent state
            dx_g, h_g = self.stages(t, g.feedback(fb.inputs), h_g)
            steps.append(g.step(dx_g))
            h.append(h_g)
        return self.check_step(torch.stack(steps).mean(0), x, t), h, fb

    def check_step(self, dx: Tensor, x: Tensor, t: int) -> Tensor:
        """A step of the space's tangent shape, or an error naming the net and the space (not one from retract)."""
        want = self.task.space.tangent_zeros(x[:1]).shape[1:]
        if dx.dim() == 0 or dx.shape[0] != x.shape[0] or dx.shape[1:] != want:
            net = type(self.stages.net(t)).__name__
            raise ValueError(f"task {self.task.name!r}: update net {net} (stage {t}) returned a step of shape "
                             f"{tuple(dx.shape)}; the space {type(self.task.space).__name__} takes "
                             f"(B, {', '.join(map(str, want))}) for B = {x.shape[0]} samples")
        return dx

    @torch.no_grad()
    def solve(self, y: Tensor, ctx: dict[str, Any], steps: int | None = None, progress: bool = False) -> SolveResult:
        """Solve a batch; running past the trained number of steps repeats the last (or shared) stage."""
        steps = self.steps if steps is None else steps
        check_observation(y)
        was_training = self.training
        self.eval()
        start = time.perf_counter()
        x = self.init(y, ctx)
        init_seconds = time.perf_counter() - start
        trace = self.run(x, y, ctx, steps, progress)
        trace.init_seconds = init_seconds
        if self.restarts.starts and steps:
            self.restart(trace, y, ctx, steps)
        if self.polish.steps and steps:  # an initializer alone (steps = 0) stays the regression it is
            self.polish_answer(trace, y, ctx)
        self.train(was_training)
        return SolveResult(trace.x[-1], trace, steps)

    def run(self, x: Tensor, y: Tensor, ctx: dict[str, Any], steps: int, progress: bool = False, first: int = 0,
            carry: tuple[Any, Tensor | None] = (None, None)) -> Trace:
        """The feedback loop from x, steps `first`..steps-1 (a later `first` continues a run from its `carry`: the
        update nets' recurrent state and the last prediction); the trace ends with the final state and its energy."""
        trace = Trace()
        h, y_t = carry
        for t in bar(range(first, steps), progress, desc="solve", leave=False):
            start = time.perf_counter()
            dx, h, fb = self.propose(t, x, y, ctx, h, y_t)
            update_s = time.perf_counter() - start - fb.seconds
            trace.x.append(x)
            trace.energy.append(fb.energy)
            start = time.perf_counter()
            acc = self.acceptance(self.task, x, dx, y, ctx, fb.energy, fb.y_t)
            trace.update_seconds.append(update_s + time.perf_counter() - start - acc.seconds)
            trace.forward_seconds.append(fb.seconds + acc.seconds)
            trace.lam.append(acc.lam)
            none = torch.zeros_like(acc.lam, dtype=torch.bool)
            trace.nonfinite.append(acc.nonfinite if acc.nonfinite is not None else none)
            x, y_t = acc.x, acc.y_t
        trace.x.append(x)
        start = time.perf_counter()
        if y_t is None:
            y_t = self.task.forward(x, ctx)
        trace.energy.append(self.task.energy(y_t, y))
        trace.forward_seconds.append(time.perf_counter() - start)
        trace.carry = (h, y_t)
        return trace

    def restart_runs(self, sub: Batch, steps: int) -> tuple[Trace, int]:
        """The restarts' runs of a batch and how many each sample has: one per start, or with `restarts.triage`
        the lowest-energy start after that many steps, continued alone (1)."""
        k, n = self.restarts.starts, len(sub)
        x0 = self.task.space.project(self.task.restart_starts(sub, k).flatten(0, 1))
        rep = torch.arange(n, device=sub.y.device).repeat(k)
        many = index_ctx(sub.ctx, rep, n)
        triage = self.restarts.triage
        if not 0 < triage < steps or k == 1:
            return self.run(x0, sub.y[rep], many, steps), k
        head = self.run(x0, sub.y[rep], many, triage)
        rows = lowest(head.energy[-1].view(k, n)) * n + torch.arange(n, device=sub.y.device)
        tail = self.run(head.x[-1][rows], sub.y, sub.ctx, steps, first=triage, carry=select(head.carry, rows))
        out = Trace()
        out.x = [v[rows] for v in head.x[:-1]] + tail.x
        out.energy = [v[rows] for v in head.energy[:-1]] + tail.energy
        out.lam = [v[rows] for v in head.lam] + tail.lam
        out.nonfinite = [v[rows] for v in head.nonfinite] + tail.nonfinite
        out.forward_seconds = head.forward_seconds[:-1] + [head.forward_seconds[-1] + tail.forward_seconds[0]] + \
            tail.forward_seconds[1:]
        out.update_seconds = head.update_seconds + tail.update_seconds
        return out, 1

    def restart(self, trace: Trace, y: Tensor, ctx: dict[str, Any], steps: int) -> None:
        """Solve the samples left above `energy_above` again from the task's other starts; keep each one's best run.

        The trace's rows of a sample that a restart improved become that run's (so E_t stays that run's, and
        monotone under damping), and the restarts' time is added to each step's.
        """
        redo = self.restarts.chosen(trace.energy[-1])
        trace.resolved = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        trace.restarted = torch.zeros_like(trace.resolved)
        trace.resolved[redo] = True
        if not len(redo):
            return
        n = len(redo)
        again, k = self.restart_runs(Batch(y[redo], None, index_ctx(ctx, redo, len(y))), steps)
        energies = torch.cat([trace.energy[-1][redo][None], again.energy[-1].view(k, n)])  # (1 + k, n)
        best = lowest(energies)
        won = (best > 0).nonzero().flatten()
        rows, dst = (best[won] - 1) * n + won, redo[won]
        trace.x, trace.energy, trace.lam, trace.nonfinite = (
            [v.clone() for v in vs] for vs in (trace.x, trace.energy, trace.lam, trace.nonfinite))
        for t in range(len(trace.x)):
            trace.x[t][dst] = again.x[t][rows]
            trace.energy[t][dst] = again.energy[t][rows]
        for t in range(len(trace.lam)):
            trace.lam[t][dst] = again.lam[t][rows]
            trace.nonfinite[t][dst] = again.nonfinite[t][rows]
        trace.forward_seconds = [a + b for a, b in zip(trace.forward_seconds, again.forward_seconds)]
        trace.update_seconds = [a + b for a, b in zip(trace.update_seconds, again.update_seconds)]
        trace.restarted[dst] = True

    def polish_answer(self, trace: Trace, y: Tensor, ctx: dict[str, Any]) -> None:
        """solver.polish: Gauss-Newton steps from the final state; the trace's last state and energy become the
        polished ones, except where the task's energy (which the polish's residual need not be) would rise."""
        x, seconds = self.polish(self.task, trace.x[-1], y, ctx)
        start = time.perf_counter()
        energy = self.task.energy(self.task.forward(x, ctx), y)
        rose = ~(energy <= trace.energy[-1])  # the polish's residual need not be the task's energy: keep E monotone
        if rose.any():
            x = torch.where(rose.view(-1, *[1] * (x.dim() - 1)), trace.x[-1], x)
            energy = torch.where(rose, trace.energy[-1], energy)
        trace.polish_seconds = seconds + time.perf_counter() - start
        trace.x, trace.energy = trace.x[:-1] + [x], trace.energy[:-1] + [energy]

    def unroll(self, batch: Batch, steps: int) -> list[Tensor]:
        """Differentiable unrolled states x_0..x_T for training (full steps, no damping, feedback detached)."""
        x = self.init(batch.y, batch.ctx)
        states, h = [x], None
        for t in range(steps):
            dx, h, _ = self.propose(t, x, batch.y, batch.ctx, h)
            x = self.task.space.retract(x, dx)
            states.append(x)
        return states


def lowest(energies: Tensor) -> Tensor:
    """Per column, the row of the lowest energy; a NaN counts as the highest (argmin alone would pick it)."""
    return torch.nan_to_num(energies, nan=float("inf")).argmin(0)


def select(state: Any, rows: Tensor) -> Any:
    """Rows of a run's carry: tensors indexed, lists and tuples of them (one per symmetry) item by item."""
    if isinstance(state, Tensor):
        return state[rows]
    if isinstance(state, (list, tuple)):
        return type(state)(select(s, rows) for s in state)
    return state


def check_observation(y: Tensor) -> None:
    """Refuse NaN or infinite observations before any work: no step could fit them, and NaN energies hide it."""
    bad = (~torch.isfinite(y.flatten(1))).any(1).nonzero().flatten().tolist() if y.dim() else []
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"observation y of sample(s) {bad[:5]}{more} contains NaN or inf; nothing to solve")


def build_solver(task: "Task", cfg: DictConfig) -> FeedbackSolver:
    """Assemble a solver from the `solver` and `feedback` sections of a config."""
    scfg = cfg.solver
    inputs = list(cfg.feedback.inputs)
    feedback = Feedback(inputs)
    if feedback.needs_gradient and not task.differentiable and type(task).surrogate_forward is Task.surrogate_forward:
        # a surrogate must exist for gradient feedback (merely looking the method up never raised)
        raise ValueError(f"feedback.inputs contains 'gradient' but task {task.name!r}: forward is not "
                         "differentiable and no surrogate_forward is given")
    stages = None if scfg.steps == 0 else Stages(lambda: task.make_update(inputs, cfg.model), scfg.steps, scfg.mode)
    acceptance, restarts = strategies(scfg)
    initializer = task.make_initializer(cfg.model) if scfg.init == "learned" else None
    if scfg.init == "learned" and initializer is None:
        raise ValueError(f"solver.init=learned but task {task.name!r} has no learned initializer")
    polish = Polish(**(OmegaConf.to_container(scfg.polish, resolve=True) if scfg.get("polish") else {}))
    symmetric = bool(scfg.get("symmetries", False))
    if symmetric and not task.symmetries():
        raise ValueError(f"solver.symmetries=true but task {task.name!r} defines no symmetries")
    return FeedbackSolver(task, stages, feedback, acceptance, scfg.steps, initializer, restarts, symmetric, polish)
