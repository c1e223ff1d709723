"""Unrolled training: stage-wise progressive (Ma et al.) or joint with deep/final supervision; atomic checkpoints, resume."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from feedback_solver.checkpoints import load_state, save_model, save_state
from feedback_solver.problem import Batch, Task
from feedback_solver.solver import FeedbackSolver, build_solver


@dataclass(frozen=True)
class Phase:
    """One block of optimisation: which parameters move and for how many iterations."""

    name: str
    iterations: int
    stage: int | None = None


def phases(cfg: DictConfig) -> list[Phase]:
    """The schedule: [init] + stage0..stageT-1 (+ finetune) when progressive, one joint phase otherwise."""
    s, t = cfg.solver, cfg.train
    if t.schedule == "joint" or s.steps == 0:
        its = t.init_iterations if s.steps == 0 else t.iterations
        return [Phase("joint", its)]
    out = [Phase("init", t.init_iterations)] if s.init == "learned" else []
    out += [Phase(f"stage{k}", t.iterations, k) for k in range(s.steps)]
    if t.finetune_iterations > 0:
        out.append(Phase("finetune", t.finetune_iterations))
    return out


def phase_parameters(solver: FeedbackSolver, phase: Phase) -> list[nn.Parameter]:
    """Progressive phases move one module; joint phases move all."""
    if phase.name == "init":
        return list(solver.initializer.parameters())
    if phase.stage is not None:
        return list(solver.stages.net(phase.stage).parameters())
    return list(solver.parameters())


def phase_loss(solver: FeedbackSolver, phase: Phase, batch: Batch, supervision: str) -> Tensor:
    """Supervised loss: on one new stage's output (progressive) or along the whole unroll (joint)."""
    task = solver.task
    if phase.name == "init":
        return task.loss(solver.init(batch.y, batch.ctx), batch.x, batch.ctx)
    if phase.stage is not None:
        x_t = solver.solve(batch.y, batch.ctx, steps=phase.stage).x if phase.stage else None
        x_t = solver.init(batch.y, batch.ctx).detach() if x_t is None else x_t
        dx, _, _ = solver.propose(phase.stage, x_t, batch.y, batch.ctx, None)
        return task.loss(task.space.retract(x_t, dx), batch.x, batch.ctx)
    states = solver.unroll(batch, solver.steps)
    if supervision == "final":
        return task.loss(states[-1], batch.x, batch.ctx)
    first = 0 if solver.initializer is not None else 1
    losses = [task.loss(x, batch.x, batch.ctx) for x in states[first:]]
    return torch.stack(losses).mean()


def data_seed(seed: int, phase_index: int, iteration: int) -> int:
    """Each (phase, iteration) draws its own batch, so a resumed run sees the same data."""
    return (seed * 1_000_003 + phase_index * 10_007 + iteration) % (2**31 - 1)


def make_optimiser(params: list[nn.Parameter], cfg: DictConfig, iterations: int):
    opt = torch.optim.Adam(params, lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iterations, 1), eta_min=cfg.train.lr_final)
    return opt, sched


@torch.no_grad()
def validate(solver: FeedbackSolver, batch: Batch) -> float:
    """Mean distance of the solver's output (with damping) to the truth on a fixed batch."""
    steps = solver.steps
    x = solver.solve(batch.y, batch.ctx, steps).x if steps else solver.init(batch.y, batch.ctx)
    return float(solver.task.space.distance(x, batch.x).mean())


def train(task: Task, cfg: DictConfig, out: str | os.PathLike, resume: bool = False, progress: bool = True) -> Path:
    """Train the solver described by cfg and write it to `out` (safetensors); `resume` continues `out`.state.pt."""
    out = Path(out)
    state_path = out.with_name(out.name + ".state.pt")
    torch.manual_seed(cfg.seed)
    solver = build_solver(task, cfg)
    plan = phases(cfg)
    start_phase, start_it, state = 0, 0, None
    if resume and state_path.exists():
        state = load_state(state_path)
        if state["task"] != task.name or state["config"] != OmegaConf.to_yaml(cfg):
            raise ValueError(f"{state_path} was written by another task or config; remove it or drop --resume")
        solver.load_state_dict(state["model"])
        start_phase, start_it = state["phase"], state["iteration"]
    elif resume:
        print(f"no training state at {state_path}; starting afresh")
    val = task.sample(cfg.train.val_samples, "val", cfg.seed)
    elapsed = 0.0 if state is None else state["seconds"]
    for p_idx in range(start_phase, len(plan)):
        phase = plan[p_idx]
        params = phase_parameters(solver, phase)
        opt, sched = make_optimiser(params, cfg, phase.iterations)
        first = start_it if p_idx == start_phase else 0
        if state is not None and p_idx == start_phase and first > 0:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        elapsed = run_phase(solver, cfg, plan, p_idx, first, opt, sched, val, state_path, elapsed, progress)
    meta = {"phases": [p.name for p in plan], "train_seconds": round(elapsed, 1), "val_distance": validate(solver, val)}
    save_model(out, solver, task.name, cfg, meta)
    state_path.unlink(missing_ok=True)
    return out


def run_phase(solver, cfg, plan, p_idx, first, opt, sched, val, state_path, elapsed, progress) -> float:
    """Optimise one phase from iteration `first`, checkpointing atomically every train.checkpoint_every."""
    phase, task, tcfg = plan[p_idx], solver.task, cfg.train
    bar = tqdm(range(first, phase.iterations), desc=f"{task.name} {phase.name}", disable=not progress,
               initial=first, total=phase.iterations, mininterval=2.0)
    solver.train()
    tick = time.perf_counter()
    for it in bar:
        batch = task.sample(tcfg.batch_size, "train", data_seed(cfg.seed, p_idx, it))
        loss = phase_loss(solver, phase, batch, tcfg.supervision)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{phase.name} iteration {it}: loss is {loss.item()}; lower train.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = it + 1
        if done % tcfg.log_every == 0 or done == phase.iterations:
            bar.set_postfix(loss=f"{loss.item():.4g}", val=f"{validate(solver, val):.4g}")
            solver.train()
        if done % tcfg.checkpoint_every == 0 or done == phase.iterations:
            now = time.perf_counter()
            elapsed, tick = elapsed + now - tick, now
            nxt = (p_idx, done) if done < phase.iterations else (p_idx + 1, 0)
            save_state(state_path, {
                "task": task.name, "config": OmegaConf.to_yaml(cfg), "model": solver.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "phase": nxt[0], "iteration": nxt[1], "seconds": elapsed,
            })
    bar.close()
    return elapsed + time.perf_counter() - tick
