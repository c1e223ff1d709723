"""Adam and L-BFGS baselines: they descend, stop on time, honour patience, and count steps per sample."""
from __future__ import annotations

import pytest
import torch

from feedback_solver.baselines import OPTIMISERS, SNAPSHOTS, objective

METHODS = sorted(OPTIMISERS)


def energy_of(task, x, batch):
    return task.energy(task.forward(x, batch.ctx), batch.y)


@pytest.mark.parametrize("method", METHODS)
def test_optimiser_reduces_the_energy_from_x0(toy_task, toy_cfg, method):
    cfg = toy_cfg("baselines.max_iterations=100")
    batch = toy_task.sample(12, "test", 0)
    x0 = toy_task.initial(batch)
    res = OPTIMISERS[method](toy_task, batch.y, batch.ctx, x0, cfg)
    e0, e1 = energy_of(toy_task, x0, batch), energy_of(toy_task, res.x, batch)
    assert res.x.shape == x0.shape and torch.isfinite(res.x).all() and not res.x.requires_grad
    assert (e1 <= e0).all(), "the best iterate can never be worse than the start"
    assert float(e1.mean()) < 0.1 * float(e0.mean())
    err0 = toy_task.metrics(x0, batch.x, {})["error"].mean()
    assert toy_task.metrics(res.x, batch.x, {})["error"].mean() < 0.5 * err0
    assert res.seconds > 0
    assert torch.equal(res.snapshots[0], toy_task.space.project(x0))
    assert set(res.snapshots) <= set(SNAPSHOTS) and max(res.snapshots) <= 100


class Counting:
    """Counts forward evaluations of a task."""

    def __init__(self, task, monkeypatch):
        self.calls = 0
        real = task.surrogate_forward

        def counted(x, ctx):
            self.calls += 1
            return real(x, ctx)

        monkeypatch.setattr(task, "surrogate_forward", counted)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("max_iterations", [0, 1, 7])
def test_optimiser_stops_within_max_iterations(toy_cls, toy_cfg, monkeypatch, method, max_iterations):
    task = toy_cls(toy_cfg())
    cfg = toy_cfg(f"baselines.max_iterations={max_iterations}", "baselines.patience=1000")
    batch = task.sample(3, "test", 0)
    counter = Counting(task, monkeypatch)
    res = OPTIMISERS[method](task, batch.y, batch.ctx, task.initial(batch), cfg)
    assert res.steps.shape == (3,) and (res.steps <= max_iterations).all()
    assert (res.steps == max_iterations).all(), "with infinite patience every sample runs to the limit"
    if method == "adam":
        assert counter.calls == max_iterations + 1  # one evaluation per iteration, plus the start
    else:
        assert counter.calls <= 3 * (max_iterations + 1) * 25  # line search: bounded evaluations per step


@pytest.fixture(scope="module")
def flat_task(toy_cls, toy_cfg):
    class FlatToy(toy_cls):
        """An objective that never improves: every iteration is one without progress."""

        def energy(self, y_pred, y_obs):
            return 0.0 * y_pred.sum(1) + 1.0

    return FlatToy(toy_cfg())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("patience", [1, 4, 9])
def test_flat_objective_stops_after_patience_iterations(flat_task, toy_cfg, method, patience):
    cfg = toy_cfg(f"baselines.patience={patience}", "baselines.max_iterations=200")
    batch = flat_task.sample(5, "test", 0)
    x0 = flat_task.initial(batch)
    res = OPTIMISERS[method](flat_task, batch.y, batch.ctx, x0, cfg)
    assert torch.equal(res.steps, torch.full((5,), patience))
    assert torch.equal(res.x, x0)


@pytest.mark.parametrize("method", METHODS)
def test_steps_are_counted_per_sample(toy_task, toy_cfg, method):
    """Samples that start at their optimum stop after `patience`; the others keep going."""
    cfg = toy_cfg("baselines.patience=5", "baselines.max_iterations=150")
    batch = toy_task.sample(8, "test", 2)
    x0 = toy_task.initial(batch)
    x0[:4] = batch.x[:4]
    res = OPTIMISERS[method](toy_task, batch.y, batch.ctx, x0, cfg)
    assert res.steps.shape == (8,) and res.steps.dtype == torch.long
    assert torch.equal(res.steps[:4], torch.full((4,), 5))
    assert (res.steps[4:] > 5).all()
    assert torch.equal(res.x[:4], batch.x[:4])


def test_objective_adds_the_weighted_prior(toy_cls, toy_cfg):
    class PriorToy(toy_cls):
        def prior(self, x):
            return x.pow(2).sum(1)

    task = PriorToy(toy_cfg())
    batch = task.sample(4, "test", 0)
    x = torch.full((4, 4), 0.5)
    e = task.energy(task.forward(x, {}), batch.y)
    assert torch.allclose(objective(task, x, batch.y, {}, 0.0), e)
    assert torch.allclose(objective(task, x, batch.y, {}, 0.1), e + 0.1)
    # the objective sees the projected x: outside the box the energy is that of the clamped point
    clamped = objective(task, torch.full((4, 4), 1.5), batch.y, {}, 0.0)
    assert torch.allclose(objective(task, x + 10, batch.y, {}, 0.0), clamped)


def test_lbfgs_takes_a_start_in_channels_last_memory_format():
    """A channels-last net's output as the start (SVBRDF's U-Net): L-BFGS flattens its gradient with view(-1)."""
    import torch
    from omegaconf import OmegaConf

    from feedback_solver.baselines import lbfgs
    from feedback_solver.config import load_config
    from tasks.svbrdf.task import SVBRDFTask

    task = SVBRDFTask(load_config(SVBRDFTask, ["task.size=64", "baselines.max_iterations=3"]))
    batch = task.sample(2, "test", 0)
    x0 = task.initial(batch).contiguous(memory_format=torch.channels_last)
    res = lbfgs(task, batch.y, batch.ctx, x0, OmegaConf.create(task.cfg))
    assert res.x.shape == x0.shape and torch.isfinite(res.x).all()
