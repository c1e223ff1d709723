"""Unrolled training: stage-wise progressive (Ma et al.) or joint with deep/final supervision; atomic checkpoints,
resume, and data-parallel training under torchrun (DistributedDataParallel, data sharded by rank)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from feedback_solver import distributed
from feedback_solver.checkpoints import load_matching, load_state, matching, read_model, save_model, save_state
from feedback_solver.distributed import Dist
from feedback_solver.polish import Polish
from feedback_solver.problem import Batch, Task
from feedback_solver.progress import bar as progress_bar
from feedback_solver.solver import FeedbackSolver, build_solver, no_restarts


@dataclass(frozen=True)
class Phase:
    """One block of optimisation: which parameters move and for how many iterations."""

    name: str
    iterations: int
    stage: int | None = None


def phases(cfg: DictConfig) -> list[Phase]:
    """The schedule: [init] + stage0..stageT-1 (+ finetune) when progressive, one joint phase otherwise."""
    s, t = cfg.solver, cfg.train
    if s.steps == 0:  # regression: the initializer alone (served by train.pool when there is one)
        return [Phase("init", t.init_iterations)]
    if t.schedule == "joint":
        return [Phase("joint", t.iterations)]
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


def phase_loss(solver: FeedbackSolver, phase: Phase, batch: Batch, supervision: str,
               states: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Supervised loss: on one new stage's output (progressive) or along the whole unroll (joint).

    `states` = (x_t, y_t) cached by a Pool; without them, stage t's inputs are solved for afresh.
    """
    task = solver.task
    if phase.name == "init":
        x0 = solver.init(batch.y, batch.ctx)
        return task.loss(x0, batch.x, batch.ctx) + auxiliary(task, solver.initializer, batch)
    if phase.stage is not None:
        x_t, y_t = states if states is not None else (None, None)
        if x_t is None:
            x_t = solver.solve(batch.y, batch.ctx, steps=phase.stage).x if phase.stage else None
            x_t = solver.init(batch.y, batch.ctx).detach() if x_t is None else x_t
        dx, _, _ = solver.propose(phase.stage, x_t, batch.y, batch.ctx, None, y_t)
        loss = task.loss(task.space.retract(x_t, dx), batch.x, batch.ctx)
        return loss + auxiliary(task, solver.stages.net(phase.stage), batch)
    states = solver.unroll(batch, solver.steps)
    if supervision == "final":
        return task.loss(states[-1], batch.x, batch.ctx)
    if supervision == "ends":  # the initializer's and the last step's output (Luo et al. 2024)
        return task.loss(states[0], batch.x, batch.ctx) + task.loss(states[-1], batch.x, batch.ctx)
    first = 0 if solver.initializer is not None else 1
    losses = [task.loss(x, batch.x, batch.ctx) for x in states[first:]]
    return torch.stack(losses).mean()


def auxiliary(task: Task, net: nn.Module | None, batch: Batch) -> Tensor | float:
    """The task's loss on what the net just reported in `net.aux` (progressive phases; 0 when it reports none)."""
    aux = getattr(net, "aux", None)
    return task.auxiliary_loss(aux, batch) if aux else 0.0


class PhaseLoss(nn.Module):
    """The phase's loss as a module's forward, so DistributedDataParallel can all-reduce its gradients."""

    def __init__(self, solver: FeedbackSolver, phase: Phase, supervision: str):
        super().__init__()
        self.solver, self.phase, self.supervision = solver, phase, supervision

    def forward(self, batch: Batch, states: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return phase_loss(self.solver, self.phase, batch, self.supervision, states)


@dataclass
class Pool:
    """Fixed training samples with their states x_t, y_t, advanced one stage at a time (train.pool > 0).

    For an expensive forward model (a renderer) progressive training then calls it about once per sample and
    stage, instead of t + 1 times per sample at every iteration of stage t; Ma et al. train on such stored sets.
    """

    batch: Batch
    x: Tensor | None = None
    y_t: Tensor | None = None
    t: int = -1  # the stage the states are at; -1 before the initializer has run

    def __len__(self) -> int:
        return len(self.batch)


POOL_PHASE = 9_999  # a phase index of its own for the pool's data seed


@torch.no_grad()
def advance(solver: FeedbackSolver, pool: Pool, stage: int, chunk: int) -> None:
    """Bring the pool's states to `stage`: x_0 from the initializer, then accepted steps of stages < `stage`."""
    task, was_training = solver.task, solver.training
    solver.eval()
    if pool.t < 0:
        xs = [solver.init(p.y, p.ctx) for p in chunks(pool.batch, chunk)]
        pool.x = torch.cat(xs)
        pool.y_t = torch.cat([task.forward(x, p.ctx) for x, p in zip(xs, chunks(pool.batch, chunk))])
        pool.t = 0
    while pool.t < stage:
        for lo in range(0, len(pool), chunk):
            sl = slice(lo, lo + chunk)
            p, x, y_t = pool.batch.index(sl), pool.x[sl], pool.y_t[sl]
            dx, _, fb = solver.propose(pool.t, x, p.y, p.ctx, None, y_t)
            acc = solver.acceptance(task, x, dx, p.y, p.ctx, fb.energy, fb.y_t)
            pool.x[sl] = acc.x
            pool.y_t[sl] = acc.y_t if acc.y_t is not None else task.forward(acc.x, p.ctx)
        pool.t += 1
    solver.train(was_training)


def chunks(batch: Batch, size: int) -> list[Batch]:
    return [batch.index(slice(lo, lo + size)) for lo in range(0, len(batch), size)]


def freeze_except(solver: FeedbackSolver, params: list[nn.Parameter]) -> None:
    """Only this phase's parameters require grad: DDP then reduces exactly those, and finds none unused."""
    keep = {id(p) for p in params}
    for p in solver.parameters():
        p.requires_grad_(id(p) in keep)


def data_seed(seed: int, phase_index: int, iteration: int, rank: int = 0, world_size: int = 1) -> int:
    """Each (phase, iteration, rank) draws its own batch: a resumed run sees the same data, no two ranks the same."""
    base = (seed * 1_000_003 + phase_index * 10_007 + iteration) % (2**31 - 1)
    return base if world_size == 1 else base * world_size + rank


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


def state_config(cfg: DictConfig) -> str:
    """The config a resumed run must match: all but the device and train.stop_after (a GPU may resume a CPU run)."""
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    c.pop("device", None)
    c.get("train", {}).pop("stop_after", None)
    return OmegaConf.to_yaml(OmegaConf.create(c))


@dataclass
class Trainer:
    """A training run's state across phases: the solver it trains, where it is, its clocks and what it logs."""

    task: Task
    cfg: DictConfig
    dist: Dist
    solver: FeedbackSolver
    plan: list[Phase]
    state_path: Path
    val: Batch | None
    progress: bool
    elapsed: float = 0.0
    samples: int = 0
    step_seconds: float = 0.0  # time in training steps alone (sampling, forward, backward, all-reduce, Adam)
    budget: int | None = None  # iterations left before train.stop_after pauses the run
    losses: dict[str, list[float]] = field(default_factory=dict)
    pool: Pool | None = None
    kept: frozenset[int] = frozenset()  # stages that train.init_from fills whole: warm start leaves them be

    @property
    def per_rank(self) -> int:
        return self.cfg.train.batch_size // self.dist.world_size

    def make_pool(self) -> Pool:
        """This rank's share of train.pool samples, drawn once with a seed of its own."""
        size = self.cfg.train.pool // self.dist.world_size
        seed = data_seed(self.cfg.seed, POOL_PHASE, 0, self.dist.rank, self.dist.world_size)
        return Pool(self.task.sample(size, "train", seed).to(self.dist.device))

    def fit(self, out: Path, state: dict | None) -> Path:
        """The run itself, once every rank holds the same resume state (or none)."""
        task, cfg, dist = self.task, self.cfg, self.dist
        fitted = init_from(self.solver, task, str(cfg.train.init_from), dist.is_main,
                           load=state is None) if cfg.train.init_from else []
        self.kept = fine_tuned_stages(self.solver, fitted)
        start_phase, start_it = self.restore(state)
        dist.agree("the resume point and the weights", (start_phase, start_it, distributed.digest(self.solver)))
        if dist.is_main:
            self.val = task.sample(cfg.train.val_samples, "val", cfg.seed).to(dist.device)
            if self.progress:
                print(describe_plan(self.plan, start_phase, start_it))
        if cfg.train.stop_after > 0:
            self.budget = int(cfg.train.stop_after)
        try:
            for p_idx in range(start_phase, len(self.plan)):
                first = start_it if p_idx == start_phase else 0
                self.run_phase(p_idx, first, state if p_idx == start_phase else None)
                dist.barrier()  # every rank finishes stage t before stage t+1 starts
        except Paused:
            if dist.is_main:
                print(f"train.stop_after={cfg.train.stop_after} reached; continue with --resume ({self.state_path})")
            return self.state_path
        self.finish(out)
        return out

    def read_state(self, resume: bool) -> dict | None:
        """Rank 0's choice: the state to continue (--resume), or None for a fresh run; refused when inconsistent."""
        path = self.state_path
        if not resume:
            if path.exists():
                raise ValueError(f"{path}: a training state of an interrupted run exists; continue it with --resume, "
                                 "or delete it to start afresh")
            return None
        if not path.exists():
            raise ValueError(f"--resume: no training state at {path}; nothing to continue "
                             "(drop --resume to start afresh)")
        state = load_state(path)
        if state.get("task") != self.task.name or state.get("config") != state_config(self.cfg):
            raise ValueError(f"{path} was written by another task or config; remove it or drop --resume")
        ranks = state.get("world_size", 1)
        if ranks != self.dist.world_size:
            raise ValueError(f"{path} was written by a {ranks}-rank run and this one has {self.dist.world_size}; "
                             f"resume it with {ranks} rank(s) (torchrun --nproc_per_node={ranks}): ranks draw their "
                             "own data, so another world size would continue neither run")
        return state

    def restore(self, state: dict | None) -> tuple[int, int]:
        """Put the agreed resume state into the solver and the run's clocks; (phase, iteration) to start from."""
        if state is None:
            return 0, 0
        self.solver.load_state_dict(state["model"])
        self.elapsed, self.samples = state["seconds"], state.get("samples", 0)
        self.step_seconds = state.get("step_seconds", 0.0)
        self.losses = state.get("losses", {})
        return state["phase"], state["iteration"]

    def finish(self, out: Path) -> None:
        """Rank 0 writes the model (with every rank's weight digest, which must agree) and drops the training state."""
        digests = self.dist.gather(distributed.digest(self.solver))
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different weights ({digests}); DDP replicas diverged")
        self.solver.requires_grad_(True)
        if self.dist.is_main:
            meta = {"phases": [p.name for p in self.plan], "train_seconds": round(self.elapsed, 1),
                    "val_distance": validate(self.solver, self.val), "world_size": self.dist.world_size,
                    "threads_per_rank": torch.get_num_threads(),
                    "samples_per_second": round(self.samples / max(self.step_seconds, 1e-9), 1),
                    "loss": self.losses, "rank_digests": digests}
            save_model(out, self.solver, self.task.name, self.cfg, meta)
            self.state_path.unlink(missing_ok=True)
        self.dist.barrier()

    def run_phase(self, p_idx: int, first: int, state: dict | None) -> None:
        """Optimise one phase from iteration `first`, checkpointing atomically every train.checkpoint_every."""
        phase, tcfg, dist = self.plan[p_idx], self.cfg.train, self.dist
        if first == 0 and tcfg.warm_start and phase.stage not in self.kept:
            warm_start(self.solver, phase)
        params = phase_parameters(self.solver, phase)
        opt, sched = make_optimiser(params, self.cfg, phase.iterations)
        if state is not None and first > 0:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        freeze_except(self.solver, params)
        model = distributed.wrap(PhaseLoss(self.solver, phase, tcfg.supervision), dist)
        bar = progress_bar(range(first, phase.iterations), self.progress, desc=f"{self.task.name} {phase.name}",
                   initial=first, total=phase.iterations, mininterval=2.0)
        self.solver.train()
        tick = log_tick = time.perf_counter()
        window: list[float] = []
        pooled = self.uses_pool(phase)
        if pooled:
            self.pool = self.pool or self.make_pool()
            if phase.stage is not None:
                advance(self.solver, self.pool, phase.stage, tcfg.batch_size)
        for it in bar:
            step_start = time.perf_counter()
            seed = data_seed(self.cfg.seed, p_idx, it, dist.rank, dist.world_size)
            fresh = None if pooled else self.task.sample(self.per_rank, "train", seed).to(dist.device)
            inputs = self.pool_batch(phase, seed) if pooled else (fresh,)
            loss = model(*inputs)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{phase.name} iteration {it}: loss is {loss.item()}; "
                                         f"{nonfinite_cause(self.task, inputs[0])}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done, window = it + 1, window + [loss.item()]
            self.samples += tcfg.batch_size
            self.step_seconds += time.perf_counter() - step_start
            self.budget = None if self.budget is None else self.budget - 1
            if done % tcfg.log_every == 0 or done == phase.iterations:
                self.log(phase, bar, window, time.perf_counter() - log_tick)
                log_tick, window = time.perf_counter(), []
            if done % tcfg.checkpoint_every == 0 or done == phase.iterations or self.budget == 0:
                tick = self.checkpoint(opt, sched, p_idx, done, tick)
            if self.budget == 0:
                bar.close()
                raise Paused
        bar.close()

    def uses_pool(self, phase: Phase) -> bool:
        """The pool serves the initializer and the progressive stages; joint phases unroll on fresh samples."""
        return self.cfg.train.pool > 0 and (phase.name == "init" or phase.stage is not None)

    def pool_batch(self, phase: Phase, seed: int) -> tuple[Batch, tuple[Tensor, Tensor] | None]:
        """A minibatch of the pool (indices from this iteration's seed, so a resumed run draws the same ones)."""
        pool = self.pool
        idx = torch.randint(len(pool), (self.per_rank,), generator=torch.Generator().manual_seed(seed))
        states = None if phase.stage is None else (pool.x[idx.to(pool.x.device)], pool.y_t[idx.to(pool.x.device)])
        if self.cfg.train.augment:
            return self.task.augment(pool.batch.index(idx), states, torch.Generator().manual_seed(seed + 1))
        return pool.batch.index(idx), states

    def log(self, phase: Phase, bar, window: list[float], seconds: float) -> None:
        """Loss (mean over ranks and the last log_every iterations), validation distance and samples per second."""
        loss = self.dist.mean(sum(window) / len(window))
        self.losses.setdefault(phase.name, []).append(round(loss, 6))
        if self.dist.is_main:
            rate = len(window) * self.cfg.train.batch_size / max(seconds, 1e-9)
            bar.set_postfix(loss=f"{loss:.4g}", val=f"{validate(self.solver, self.val):.4g}", samples_s=f"{rate:.0f}")
            self.solver.train()

    def checkpoint(self, opt, sched, p_idx: int, done: int, tick: float) -> float:
        """Rank 0 writes the state atomically; the next (phase, iteration) is what a resumed run starts from."""
        now = time.perf_counter()
        self.elapsed += now - tick
        if self.dist.is_main:
            nxt = (p_idx, done) if done < self.plan[p_idx].iterations else (p_idx + 1, 0)
            save_state(self.state_path, {
                "task": self.task.name, "config": state_config(self.cfg), "model": self.solver.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "phase": nxt[0], "iteration": nxt[1],
                "seconds": self.elapsed, "samples": self.samples, "step_seconds": self.step_seconds,
                "losses": self.losses, "world_size": self.dist.world_size,
            })
        return time.perf_counter()


class Paused(Exception):
    """train.stop_after reached: the state is saved, as if the run had been killed there."""


def train(task: Task, cfg: DictConfig, out: str | os.PathLike, resume: bool = False, progress: bool = True,
          dist: Dist | None = None) -> Path:
    """Train the solver described by cfg and write it to `out` (safetensors); `resume` continues `out`.state.pt.

    Under torchrun every rank calls this; rank 0 alone holds the run's lock, reads and writes checkpoints and shows
    progress, and sends every rank the state it read, so all ranks resume from the same bytes.
    """
    dist = dist or distributed.setup(cfg.device)
    out = Path(out)
    check_batch(cfg, dist)
    torch.manual_seed(cfg.seed)
    solver = build_solver(task, cfg).to(dist.device)
    # restarts, symmetry averaging and the polish are inference settings: stage inputs and validation are the plain
    # solver's
    solver.restarts, solver.symmetric, solver.polish = no_restarts(), False, Polish()
    trainer = Trainer(task, cfg, dist, solver, phases(cfg), out.with_name(out.name + ".state.pt"), None,
                      progress and dist.is_main)
    lock = StateLock(trainer.state_path)

    def choose() -> dict | None:
        lock.acquire()
        return trainer.read_state(resume)

    try:
        state = dist.decide(choose)
        return trainer.fit(out, state)
    finally:
        lock.release()


def describe_plan(plan: list[Phase], phase: int, iteration: int) -> str:
    """The schedule in one line: which phase takes which iterations (train.iterations is per stage, not in all)."""
    parts = [f"{p.name} {p.iterations}" for p in plan]
    where = f"; resuming at {plan[phase].name} iteration {iteration}" if (phase, iteration) != (0, 0) else ""
    if phase >= len(plan):
        where = "; every phase done, writing the model"
    return (f"training plan (iterations per phase; init: train.init_iterations, each stage: train.iterations, "
            f"finetune: train.finetune_iterations): {', '.join(parts)}{where}")


class StateLock:
    """Rank 0's exclusive hold on a run's state file: a second writer (a killed run's orphaned workers, another
    `fbsolve train` to the same --out) is waited for briefly, then refused, never raced."""

    WAIT = 30.0  # seconds a resumed run waits for a killed run's workers to exit

    def __init__(self, state_path: Path):
        self.path = state_path.with_name(state_path.name + ".lock")
        self.lock: FileLock | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"waiting up to {self.WAIT:.0f} s for the run that holds {self.path} to exit", flush=True)
            try:
                lock.acquire(timeout=self.WAIT)
            except Timeout:
                raise ValueError(f"{self.path}: another training run still writes {self.path.name[:-5]}; stop it "
                                 "or train to another --out") from None
        self.lock = lock

    def release(self) -> None:
        if self.lock is not None:
            self.path.unlink(missing_ok=True)  # while held: a waiter on the old file sees it unlinked and retries
            self.lock.release()
            self.lock = None


def init_from(solver: FeedbackSolver, task: Task, path: str, verbose: bool, load: bool = True) -> list[str]:
    """Fine-tune start: another checkpoint's tensors that fit this model (e.g. a variant with more inputs).

    Returns their names; `load=False` (a resumed run, whose state holds the weights) only names them."""
    tensors, _, _ = read_model(path, task.name)
    if not load:
        return matching(solver, tensors)
    loaded, skipped = load_matching(solver, tensors)
    if not loaded:
        raise ValueError(f"train.init_from={path}: no tensor fits this model (another architecture)")
    if verbose:
        print(f"train.init_from: {len(loaded)} tensors from {path}; {len(skipped)} left at their initial values"
              + (f" ({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''})" if skipped else ""))
    return loaded


def fine_tuned_stages(solver: FeedbackSolver, fitted: list[str]) -> frozenset[int]:
    """Stages whose every tensor train.init_from supplies: fine-tuning them must not start from a copy of stage t-1."""
    if solver.stages is None:
        return frozenset()
    own, fitted = solver.state_dict(), set(fitted)
    stage_names = [[n for n in own if n.startswith(f"stages.nets.{k}.")] for k in range(len(solver.stages.nets))]
    return frozenset(k for k, names in enumerate(stage_names) if names and set(names) <= fitted)


def check_batch(cfg: DictConfig, dist: Dist) -> None:
    if cfg.train.batch_size % dist.world_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the world size "
                         f"{dist.world_size}; each rank draws batch_size / world_size samples per iteration")


@torch.no_grad()
def nonfinite_cause(task: Task, batch: Batch) -> str:
    """Why a loss is not finite: the task's data or forward model when they are, else the optimiser's step."""
    name = f"task {task.name!r}"
    if not torch.isfinite(batch.y).all():
        return f"{name}: sample() gave observations with NaN or inf"
    if batch.x is not None and not torch.isfinite(batch.x).all():
        return f"{name}: sample() gave true parameters with NaN or inf"
    if batch.x is not None and not torch.isfinite(task.forward(batch.x, batch.ctx)).all():
        return f"{name}: forward() returned NaN or inf for the training samples' true parameters"
    return "the data and the forward model are finite: lower train.lr"


def warm_start(solver: FeedbackSolver, phase: Phase) -> None:
    """Stage t begins as a copy of the trained stage t-1: a coarse aligner is a better start for a finer one."""
    if phase.stage and solver.stages is not None and solver.stages.mode == "stagewise":
        solver.stages.net(phase.stage).load_state_dict(solver.stages.net(phase.stage - 1).state_dict())


