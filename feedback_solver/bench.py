"""Run methods on a task's test split and write per-method metrics, timings and error curves (JSON, Markdown, PNG).

Under torchrun the test samples are split across ranks in whole chunks and the per-sample results merged on rank 0,
so an N-rank report carries the same metrics, in the same order, as a 1-rank one.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from feedback_solver import distributed
from feedback_solver.baselines import OPTIMISERS
from feedback_solver.distributed import Dist
from feedback_solver.problem import Batch, Task
from feedback_solver.progress import bar
from feedback_solver.report import load_report, write_report
from feedback_solver.solver import FeedbackSolver

#: the optimisers every task has; a task's `optimisers()` adds its own (a differentiable renderer, say)
SLOW = ("adam", "lbfgs", "hybrid")
#: inference switches an ablation `<method>_no_<switch>` turns off (solver.damping, .restarts, .symmetries, .polish)
SWITCHES = ("damping", "restarts", "symmetry", "polish")


@dataclass(frozen=True)
class Learned:
    """A learned bench method: which checkpoint, what inference switches off, how many steps (None: as trained)."""

    checkpoint: str
    off: tuple[str, ...] = ()
    steps: int | None = None


def learned(name: str, cfg: DictConfig) -> Learned | None:
    """A report name as a learned method: the task's `bench.learned` entry, else `feedback`, `regression` or a
    variant's own checkpoint, else `<method>_no_<switch>`; None when it is none of these."""
    table = cfg.bench.get("learned") or {}
    if name in table:
        e = table[name]
        return Learned(str(e.checkpoint), tuple(e.get("off") or ()), e.get("steps"))
    if name in ("feedback", "regression") or name in cfg.variants:
        return Learned(name)
    base, sep, switch = name.rpartition("_no_")
    parent = learned(base, cfg) if sep and switch in SWITCHES else None
    return None if parent is None else replace(parent, off=parent.off + (switch,))


def optimisers(task: Task) -> dict[str, Callable]:
    """Adam and L-BFGS, and whatever optimisers the task adds (its differentiable-renderer baseline, say)."""
    return OPTIMISERS | task.optimisers()


def slow_methods(task: Task) -> tuple[str, ...]:
    """The optimisers and hybrid; `<optimiser>_initial` runs that optimiser from the task's constant start whatever
    baselines.start says (plain optimisation, what a user without a learned model runs)."""
    names = tuple(dict.fromkeys(SLOW + tuple(task.optimisers())))
    return names + tuple(f"{o}_initial" for o in names if o != "hybrid")


@dataclass
class Raw:
    """One method's per-sample results on some chunks, before summarising: what a rank sends to rank 0."""

    x: Tensor
    states: dict[int, Tensor]  # step (learned) or iteration (optimisers) -> estimates
    steps: Tensor
    seconds: float
    forward_seconds: float | None = None
    energy: Tensor | None = None  # learned: E_data along the trace (n x T+1)
    step_seconds: Tensor | None = None  # learned: (forward, update) seconds per step, summed over samples (2 x T+1)
    restarts: Tensor | None = None  # learned with solver.restarts: per sample (solved again, answer from a restart)
    polish_seconds: float = 0.0  # learned with solver.polish: its seconds, summed over samples
    start_seconds: float = 0.0  # the start's share of `seconds` (the learned initializer), summed over samples
    ctx: dict[str, Any] | None = None  # a checkpoint that observes differently: its observations' context (metrics)

    @staticmethod
    def merge(parts: list["Raw"]) -> "Raw":
        """Concatenate in rank order (ranks own consecutive chunks); times add up over ranks."""
        parts = [p for p in parts if len(p.x)]
        cat = torch.cat
        fwd = None if parts[0].forward_seconds is None else sum(p.forward_seconds for p in parts)
        energy = None if parts[0].energy is None else cat([p.energy for p in parts])
        steps = None if parts[0].step_seconds is None else sum(p.step_seconds for p in parts)
        restarts = None if parts[0].restarts is None else cat([p.restarts for p in parts])
        return Raw(cat([p.x for p in parts]), {k: cat([p.states[k] for p in parts]) for k in parts[0].states},
                   cat([p.steps for p in parts]), sum(p.seconds for p in parts), fwd, energy, steps, restarts,
                   sum(p.polish_seconds for p in parts), sum(p.start_seconds for p in parts), parts[0].ctx)


def concat(raws: list[Raw], dim: int) -> Raw:
    """An empty Raw when a rank owns no chunk of this sample set."""
    if raws:
        return Raw.merge(raws)
    return Raw(torch.zeros(0, dim), {}, torch.zeros(0), 0.0)


def summarise(task: Task, x: Tensor, batch: Batch, metric: str | None = None) -> dict[str, Any]:
    """Mean, median and std of every metric, the outlier rate, and the primary metric per group where the task
    names groups (a mean over objects hides which ones fail)."""
    per = task.metrics(x, batch.x, batch.ctx)
    out: dict[str, Any] = {"metrics": {
        k: {"mean": float(v.mean()), "median": float(v.median()), "std": float(v.std())} for k, v in per.items()}}
    flags = task.is_outlier(per)
    out["outlier_rate"] = None if flags is None else float(flags.float().mean())
    names = task.groups(batch) if metric else None
    if names is not None:
        out["groups"] = by_group(names, per[metric], flags)
    return out


def by_group(names: list[str], values: Tensor, flags: Tensor | None) -> dict[str, dict[str, Any]]:
    """Samples, mean, median and outlier rate of one metric per group, groups in sorted order."""
    out = {}
    for name in sorted(set(names)):
        idx = torch.tensor([i for i, n in enumerate(names) if n == name])
        v = values[idx]
        out[name] = {"samples": len(idx), "mean": float(v.mean()), "median": float(v.median()),
                     "outlier_rate": None if flags is None else float(flags[idx].float().mean())}
    return out


def curve(task: Task, states: dict[int, Tensor], batch: Batch, metric: str) -> dict[str, list]:
    """The primary metric's median and mean at each recorded step or iteration."""
    steps = sorted(states)
    vals = task.curve_metric([states[s] for s in steps], batch.x, batch.ctx, metric)
    return {"step": steps, "median": [float(v.median()) for v in vals], "mean": [float(v.mean()) for v in vals]}


def entry(task: Task, raw: Raw, batch: Batch, metric: str) -> dict[str, Any]:
    """The report's record of one method on one sample set."""
    n = len(batch)
    if raw.ctx is not None:  # scored in the context of its own observations (a photo's estimated exposure, say)
        batch = Batch(batch.y, batch.x, raw.ctx)
    out = summarise(task, raw.x, batch, metric)
    out |= {"steps": float(raw.steps.float().median()), "seconds_per_sample": raw.seconds / n,
            "forward_seconds_per_sample": None if raw.forward_seconds is None else raw.forward_seconds / n,
            "samples": n, "curve": curve(task, raw.states, batch, metric),
            "primary_mean": out["metrics"][metric]["mean"]}
    if raw.energy is None:  # an optimiser: its longest run sets the wall time of a batched call
        out["max_steps"] = int(raw.steps.max()) if len(raw.steps) else 0
    out["time_curve"] = time_curve(raw, out["curve"]["step"], out.get("max_steps"), n)
    if raw.energy is not None:
        e = raw.energy
        out["energy_monotone"] = float((e.diff(dim=1) <= 0).all(dim=1).float().mean()) if e.shape[1] > 1 else None
    if raw.restarts is not None:
        again, won = raw.restarts.mean(0).tolist()
        out["restarts"] = {"solved_again": again, "answer_from_restart": won}
    if raw.step_seconds is not None:
        fwd, upd = (raw.step_seconds / n).tolist()
        out["per_step"] = {"forward_seconds_per_sample": fwd, "update_seconds_per_sample": upd,
                           "forward_fraction": raw.forward_seconds / raw.seconds if raw.seconds else None,
                           "polish_seconds_per_sample": raw.polish_seconds / n}
    return out


def time_curve(raw: Raw, steps: list[int], max_steps: int | None, n: int) -> dict[str, Any]:
    """Seconds per sample at each recorded step or iteration: the start, then the mean time of a timed step (a
    learned solver's steps past the timed ones, and an optimiser's iterations, assumed to cost alike)."""
    start = raw.start_seconds / n
    if raw.step_seconds is not None:  # learned: (forward, update) per step, the last column the final check
        per = raw.step_seconds.sum(0)[:-1] / n
        each = float(per.mean()) if len(per) else 0.0
        done = per.cumsum(0).tolist()
        at = [start + (0.0 if s == 0 else done[s - 1] if s <= len(done) else done[-1] + each * (s - len(done)))
              for s in steps]
    else:
        each = (raw.seconds / n - start) / max(max_steps or 1, 1)
        at = [start + each * s for s in steps]
    return {"step": steps, "seconds": at}


def solve_chunk(solver: FeedbackSolver, part: Batch, steps: int | None, curve_steps: int = 0) -> Raw:
    """One timed solve; with curve_steps past it, an untimed longer run gives the error-against-step states."""
    start = time.perf_counter()
    res = solver.solve(part.y, part.ctx, steps)
    wall = time.perf_counter() - start
    long = res if curve_steps <= res.steps or res.steps == 0 else solver.solve(part.y, part.ctx, curve_steps)
    states = {t: x_t.cpu() for t, x_t in enumerate(long.trace.x)}
    tr = res.trace  # step t's forward time is its feedback render and acceptance renders; the last is the final check
    per_step = torch.tensor([tr.forward_seconds, tr.update_seconds + [0.0]], dtype=torch.float64)
    restarts = None if tr.resolved is None else torch.stack([tr.resolved, tr.restarted], 1).float().cpu()
    return Raw(res.x.cpu(), states, torch.full((len(part),), float(res.steps)), wall, res.forward_seconds,
               res.trace.energies().cpu(), per_step, restarts, tr.polish_seconds, tr.init_seconds)


def run_learned(task: Task, solver: FeedbackSolver, batch: Batch, chunks: list[slice], dist: Dist,
                steps: int | None = None, curve_steps: int = 0) -> Raw:
    """Solve this rank's chunks; time each call, and split out the forward model's share from the trace."""
    solver = solver.to(dist.device)
    if solver.task is not task:  # a checkpoint that observes differently: its observations of the same x
        batch = solver.task.observe(batch)
    if chunks:
        warm = batch.index(slice(chunks[0].start, chunks[0].start + 2)).to(dist.device)
        solver.solve(warm.y, warm.ctx, steps)  # warm-up: first calls allocate
    raws = [solve_chunk(solver, batch.index(c).to(dist.device), steps, curve_steps) for c in chunks]
    out = concat(raws, task.space.dim)
    return out if solver.task is task else replace(out, ctx=batch.ctx)


def run_optimiser(task: Task, name: str, batch: Batch, chunks: list[slice], cfg: DictConfig, dist: Dist,
                  start: Callable[[Batch], tuple[Tensor, float]]) -> Raw:
    """Adam or L-BFGS from `start(chunk)` (the constant start, or the learned answer for hybrid) per chunk."""
    raws = []
    for c in chunks:
        part = batch.index(c).to(dist.device)
        x0, extra = start(part)
        res = optimisers(task)[name](task, part.y, part.ctx, x0, cfg)
        raws.append(Raw(res.x.detach().cpu(), {k: v.cpu() for k, v in res.snapshots.items()},
                        res.steps.cpu().float(), res.seconds + extra, start_seconds=extra))
    return concat(raws, task.space.dim)


def primary_metric(task: Task, cfg: DictConfig, batch: Batch) -> str:
    return cfg.bench.primary_metric or next(iter(task.metrics(batch.x[:1], batch.x[:1], batch.index(slice(0, 1)).ctx)))


def run_bench(task: Task, cfg: DictConfig, out: str | os.PathLike, methods: list[str] | None = None,
              samples: int | None = None, seed: int | None = None, command: str = "",
              checkpoints: Path | None = None, progress: bool = True, dist: Dist | None = None,
              merge: bool = False, split: str = "test") -> dict[str, Any]:
    """Every requested method on the same test samples; slow ones on a fixed subset beside `feedback`.

    Returns the report on rank 0 (which alone writes it) and None on the other ranks. With `merge`, the methods run
    now are added to (or replace theirs in) the report already in `out`, which must be of the same samples.
    `split="val"` compares checkpoints or settings on the validation split, so that choices never see the test data.
    """
    dist = dist or distributed.setup(cfg.device)
    methods = list(methods or cfg.bench.methods)
    unknown = [m for m in methods if learned(m, cfg) is None and m not in slow_methods(task)]
    if unknown:
        known = ["feedback", "regression", *cfg.variants, *(cfg.bench.get("learned") or {}), *slow_methods(task)]
        raise ValueError(f"unknown methods {unknown}; choose from {list(dict.fromkeys(known))} or "
                         f"<method>_no_<{'|'.join(SWITCHES)}>")
    if "hybrid" in methods and cfg.baselines.hybrid not in optimisers(task):
        raise ValueError(f"baselines.hybrid={cfg.baselines.hybrid!r} is not an optimiser of task {task.name!r}; "
                         f"choose from {sorted(optimisers(task))}")
    samples = samples or cfg.bench.samples
    seed = cfg.seed if seed is None else seed
    if split == "train" or split not in task.splits:
        raise ValueError(f"split must be one of {[s for s in task.splits if s != 'train']}, got {split!r}")
    batch = task.sample(samples, split, seed)  # every rank draws the same set, then works on its own chunks
    subset = batch.index(slice(0, min(cfg.bench.slow_samples, len(batch))))
    metric = primary_metric(task, cfg, batch)
    data = task.describe_data(split) + ("" if split == "test" else f" ({split} split, not the test data)")
    result: dict[str, Any] = {"task": task.name, "report": task.report_name, "split": split,
                              "data": f"{data}; {len(batch)} samples", "seed": seed, "command": command,
                              "ranks": dist.world_size, "primary_metric": metric, "methods": {}}
    gap = task.forward_gap(batch)
    if gap:
        result["forward_gap"] = gap
    previous = earlier_report(out, result) if merge else None
    sub: dict[str, Any] = {"samples": len(subset), "note": f"the first {len(subset)} {split} samples: slow baselines "
                           "and `feedback` on the same samples, so time ratios compare like with like", "methods": {}}
    jobs = plan_jobs(task, cfg, methods, batch, subset, dist,
                     partial(FeedbackSolver.from_checkpoint, task, folder=checkpoints))
    for name, on_subset, job in bar(jobs, progress and dist.is_main, desc=f"bench {task.name}"):
        parts = dist.gather(job())
        if dist.is_main:
            target, data = (sub["methods"], subset) if on_subset else (result["methods"], batch)
            target[name] = entry(task, Raw.merge(parts), data, metric)
    if not dist.is_main:
        return None
    if previous is not None:
        result, sub = merged(previous, result, sub)
    if sub["methods"]:
        sub["match"] = matches(sub["methods"])
        result["subset"] = sub
    result["config"] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    write_report(result, out)
    return result


def earlier_report(out: str | os.PathLike, result: dict[str, Any]) -> dict[str, Any] | None:
    """The report `merge` adds to, checked before any work: the same data, samples and seed, or a clear refusal."""
    path = Path(out) / f"{result['report']}.json"
    if not path.exists():
        return None
    old = load_report(path)
    for key in ("data", "seed", "primary_metric"):
        if old.get(key) != result[key]:
            raise ValueError(f"--merge: {path} has {key}={old.get(key)!r}, this run {result[key]!r}; "
                             "merge only runs of the same samples (or write to another --out)")
    return old


def merged(old: dict[str, Any], new: dict[str, Any], sub: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The earlier report's methods with this run's added or replaced; the report lists every run that fed it."""
    runs = old.get("runs") or [{"command": old.get("command", ""), "methods": list(old["methods"])
                                + list(old.get("subset", {}).get("methods", {}))}]
    runs.append({"command": new["command"], "methods": list(new["methods"]) + list(sub["methods"])})
    new["methods"] = {**old["methods"], **new["methods"]}
    old_sub = old.get("subset")
    if old_sub:
        sub = {**old_sub, "methods": {**old_sub["methods"], **sub["methods"]}}
        sub.pop("match", None)
    new["runs"], new["command"] = runs, runs[0]["command"]
    return new, sub


def matches(methods: dict[str, Any]) -> dict[str, Any]:
    """Per optimiser: the first recorded iteration whose mean primary metric is as good as `feedback`'s, and the time
    it took (its time per iteration, from its slowest sample, times that count), as a multiple of feedback's time."""
    ref = methods.get("feedback")
    out: dict[str, Any] = {}
    if ref is None:
        return out
    target = ref["curve"]["mean"][-1] if ref["curve"]["mean"] else None
    target = ref.get("primary_mean", target)
    for name, m in methods.items():
        if name == "feedback" or "max_steps" not in m:
            continue
        its = [s for s, v in zip(m["curve"]["step"], m["curve"]["mean"]) if v <= target]
        per_it = m["seconds_per_sample"] / max(m["max_steps"], 1)
        it = its[0] if its else None
        secs = None if it is None else per_it * max(it, 1)
        out[name] = {"target_mean": target, "iteration": it, "seconds_per_sample": secs,
                     "times_feedback": None if secs is None else secs / ref["seconds_per_sample"],
                     "note": None if its else f"never reached in {m['max_steps']} iterations"}
    return out


def plan_jobs(task: Task, cfg: DictConfig, methods: list[str], batch: Batch, subset: Batch, dist: Dist,
              load: Callable) -> list[tuple[str, bool, Callable[[], Raw]]]:
    """(name, on the subset?, this rank's work) per method: learned ones on all samples, slow ones on the subset."""
    fast = dist.chunks(len(batch), cfg.bench.batch_size)
    jobs: list[tuple[str, bool, Callable[[], Raw]]] = []
    for m in methods:
        method = learned(m, cfg)
        if method is not None:
            jobs.append((m, False, lambda e=method: run_learned(
                task, load(e.checkpoint, off=e.off), batch, fast, dist, e.steps)))
    slow = [m for m in methods if m in slow_methods(task)]
    if not slow:
        return jobs
    sub_fast = dist.chunks(len(subset), cfg.bench.batch_size)
    curve_steps = int(cfg.bench.curve_steps)  # the subset's feedback run also gives the long error-against-step curve
    jobs.append(("feedback", True, lambda: run_learned(task, load(), subset, sub_fast, dist, None, curve_steps)))
    chunks = dist.chunks(len(subset), cfg.bench.slow_batch_size)
    for m in slow:
        jobs.append((m, True, lambda m=m: run_slow(task, m, subset, chunks, cfg, dist, load)))
    return jobs


def run_slow(task: Task, name: str, batch: Batch, chunks: list[slice], cfg: DictConfig, dist: Dist,
             load: Callable) -> Raw:
    """Optimisers start from the task's constant start (or, with baselines.start=learned, the shipped solver's
    learned initializer); hybrid starts from the learned solver's answer and runs the optimiser
    baselines.hybrid names."""
    if name.endswith("_initial") or (name != "hybrid" and cfg.baselines.start == "initial"):
        return run_optimiser(task, name.removesuffix("_initial"), batch, chunks, cfg, dist,
                             lambda part: (task.initial(part), 0.0))
    solver = load().to(dist.device)
    if name != "hybrid":
        def init_start(part: Batch) -> tuple[Tensor, float]:
            begin = time.perf_counter()
            with torch.no_grad():
                x0 = solver.init(part.y, part.ctx)
            return x0, time.perf_counter() - begin

        return run_optimiser(task, name, batch, chunks, cfg, dist, init_start)

    def learned_start(part: Batch) -> tuple[Tensor, float]:
        begin = time.perf_counter()
        x0 = solver.solve(part.y, part.ctx).x
        return x0, time.perf_counter() - begin

    # from a near answer the optimiser may want smaller steps than from the constant start
    tuned = OmegaConf.merge(cfg, {"baselines": cfg.baselines.hybrid_overrides})
    return run_optimiser(task, cfg.baselines.hybrid, batch, chunks, tuned, dist, learned_start)
