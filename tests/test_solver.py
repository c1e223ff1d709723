"""The solver loop: result and trace shapes, running past the trained steps, gradient and residual feedback."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from feedback_solver.acceptance import AlwaysAccept, LMDamping, Restarts, strategies
from feedback_solver.feedback import Feedback, energy_gradient
from feedback_solver.solver import build_solver


def count_calls(solver) -> list[int]:
    """Per stage net, how often it is called."""
    calls = [0] * len(solver.stages.nets)
    for i, net in enumerate(solver.stages.nets):
        net.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("damping", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_solve_returns_x_and_a_full_trace(toy_task, toy_cfg, steps, damping):
    solver = build_solver(toy_task, toy_cfg(f"solver.steps={steps}", f"solver.damping.enabled={damping}"))
    batch = toy_task.sample(10, "test", 0)
    res = solver.solve(batch.y, batch.ctx)
    tr = res.trace
    assert res.x.shape == (10, 4) and res.steps == steps
    assert torch.equal(res.x, tr.x[-1])
    assert len(tr.x) == steps + 1 and all(x.shape == (10, 4) for x in tr.x)
    assert torch.equal(tr.x[0], toy_task.initial(batch))
    assert tr.energies().shape == (10, steps + 1) and torch.isfinite(tr.energies()).all()
    assert tr.lambdas().shape == (10, steps)
    assert len(tr.update_seconds) == steps
    assert len(tr.forward_seconds) == steps + 1  # one forward evaluation per reported energy
    assert all(s >= 0 for s in tr.forward_seconds + tr.update_seconds) and tr.init_seconds >= 0
    assert res.seconds >= res.forward_seconds > 0
    assert not res.x.requires_grad
    final = toy_task.energy(toy_task.forward(res.x, batch.ctx), batch.y)
    assert torch.allclose(tr.energies()[:, -1], final, rtol=1e-5, atol=1e-7)


def test_solve_restores_the_training_flag(toy_task, toy_cfg):
    solver = build_solver(toy_task, toy_cfg())
    batch = toy_task.sample(4, "test", 0)
    solver.train()
    solver.solve(batch.y, batch.ctx)
    assert solver.training
    solver.eval()
    solver.solve(batch.y, batch.ctx)
    assert not solver.training


def test_stagewise_past_trained_steps_reuses_the_last_stage(toy_task, toy_cfg):
    solver = build_solver(toy_task, toy_cfg("solver.steps=3", "solver.mode=stagewise"))
    assert len(solver.stages.nets) == 3
    calls = count_calls(solver)
    batch = toy_task.sample(6, "test", 0)
    res = solver.solve(batch.y, batch.ctx, steps=7)
    assert res.steps == 7 and len(res.trace.x) == 8 and res.trace.lambdas().shape == (6, 7)
    assert calls == [1, 1, 5]
    calls[:] = [0, 0, 0]
    solver.solve(batch.y, batch.ctx, steps=2)
    assert calls == [1, 1, 0]


def test_shared_runs_any_number_of_steps_with_one_net(toy_task, toy_cfg):
    solver = build_solver(toy_task, toy_cfg("solver.steps=3", variant="feedback_shared"))
    assert len(solver.stages.nets) == 1
    calls = count_calls(solver)
    batch = toy_task.sample(6, "test", 0)
    res = solver.solve(batch.y, batch.ctx, steps=9)
    assert calls == [9] and res.trace.energies().shape == (6, 10)
    assert not (res.trace.energies().diff(dim=1) > 0).any()


def test_steps_zero_is_initializer_only(toy_task, toy_cfg):
    solver = build_solver(toy_task, toy_cfg(variant="regression"))
    assert solver.stages is None and solver.initializer is not None
    batch = toy_task.sample(5, "test", 0)
    res = solver.solve(batch.y, batch.ctx)
    assert res.steps == 0 and len(res.trace.x) == 1 and res.trace.lambdas().shape == (5, 0)
    with pytest.raises(ValueError, match="initializer only"):
        solver.solve(batch.y, batch.ctx, steps=1)


# --- gradient feedback -------------------------------------------------------------------------------
def finite_difference_gradient(task, x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    for i in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, i] = eps
        plus = task.energy(task.forward(x + e, {}), y)
        minus = task.energy(task.forward(x - e, {}), y)
        grad[:, i] = (plus - minus) / (2 * eps)
    return grad


def test_gradient_feedback_is_finite_detached_and_matches_finite_differences(toy_task):
    batch = toy_task.sample(12, "test", 3)
    y = batch.y.double()
    x = (0.8 * (torch.rand(12, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1))
    x = x.clone().requires_grad_(True) * 1.0  # x with a grad history, as in an unrolled training step
    fb = Feedback(["y", "gradient", "x"])(toy_task, x, y, {})
    grad = fb.inputs["gradient"]
    assert grad.shape == (12, 4) and torch.isfinite(grad).all()
    assert not grad.requires_grad and grad.grad_fn is None
    assert not fb.y_t.requires_grad and not fb.energy.requires_grad
    assert fb.inputs["x"] is x  # only x keeps its history
    fd = finite_difference_gradient(toy_task, x.detach(), y)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-8)
    assert grad.abs().max() > 1e-3  # not trivially zero
    g2, y_pred, _ = energy_gradient(toy_task, x.detach(), y, {})
    assert torch.equal(g2, grad) and torch.allclose(y_pred, toy_task.forward(x.detach(), {}))


def test_gradient_feedback_solver_runs_and_detaches(toy_task, toy_cfg):
    solver = build_solver(toy_task, toy_cfg(variant="feedback_gradient"))
    assert solver.feedback.needs_gradient
    batch = toy_task.sample(8, "test", 0)
    res = solver.solve(batch.y, batch.ctx, steps=4)
    assert torch.isfinite(res.x).all() and not res.x.requires_grad
    states = solver.unroll(batch, 3)  # the training path: x keeps its history, the gradient does not
    assert states[-1].requires_grad
    states[-1].sum().backward()
    assert all(p.grad is not None for p in solver.stages.parameters())


# --- non-differentiable forward ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blackbox_task(toy_cls, toy_cfg):
    class BlackBoxToy(toy_cls):
        """The toy with a forward model autograd cannot see through (a simulator, a renderer)."""

        differentiable = False

        def forward(self, x: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
            with torch.no_grad():
                return super().forward(x.detach(), ctx)

    return BlackBoxToy(toy_cfg())


def test_residual_feedback_works_without_a_differentiable_forward(blackbox_task, toy_cfg):
    cfg = toy_cfg("feedback.inputs=[y,y_t,residual,x]")
    solver = build_solver(blackbox_task, cfg)
    batch = blackbox_task.sample(8, "test", 0)
    res = solver.solve(batch.y, batch.ctx)
    assert torch.isfinite(res.trace.energies()).all() and res.x.shape == (8, 4)
    # and the training path still has a gradient for the update nets
    states = solver.unroll(batch, cfg.solver.steps)
    blackbox_task.loss(states[-1], batch.x, batch.ctx).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in solver.stages.parameters())


def test_gradient_feedback_is_refused_without_a_differentiable_forward_or_surrogate(blackbox_task, toy_cfg):
    with pytest.raises(ValueError, match="not differentiable"):
        build_solver(blackbox_task, toy_cfg(variant="feedback_gradient"))
    with pytest.raises(NotImplementedError, match="not differentiable"):
        blackbox_task.surrogate_forward(torch.zeros(1, 4), {})


def test_gradient_feedback_accepts_a_surrogate_for_a_black_box_forward(blackbox_task, toy_cls, toy_cfg):
    class SurrogateToy(type(blackbox_task)):
        def surrogate_forward(self, x, ctx):
            return toy_cls.forward(self, x, ctx)

    task = SurrogateToy(toy_cfg())
    solver = build_solver(task, toy_cfg(variant="feedback_gradient"))
    batch = task.sample(4, "test", 0)
    fb = Feedback(["gradient"])(task, batch.x + 0.1, batch.y, {})
    assert torch.isfinite(fb.inputs["gradient"]).all() and fb.inputs["gradient"].abs().max() > 0
    assert torch.isfinite(solver.solve(batch.y, batch.ctx).x).all()


# --- restarts ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damping", [True, False])
def test_restarts_keep_each_samples_lowest_energy_run(restart_task, toy_cfg, damping):
    cfg = toy_cfg("solver.steps=3", f"solver.damping.enabled={damping}")
    torch.manual_seed(0)
    plain = build_solver(restart_task, cfg)
    batch = restart_task.sample(24, "test", 0)
    once = plain.solve(batch.y, batch.ctx)
    threshold = float(once.trace.energies()[:, -1].median())
    plain.restarts = Restarts(3, threshold)
    res = plain.solve(batch.y, batch.ctx)
    tr, e0, e = res.trace, once.trace.energies(), res.trace.energies()
    assert torch.equal(tr.resolved, e0[:, -1] > threshold) and tr.resolved.any()
    assert not (tr.restarted & ~tr.resolved).any() and tr.restarted.any()
    assert (e[:, -1] <= e0[:, -1]).all() and (e[tr.restarted, -1] < e0[tr.restarted, -1]).all()
    assert torch.equal(res.x[~tr.restarted], once.x[~tr.restarted])  # the others keep their first run, trace too
    assert torch.equal(e[~tr.restarted], e0[~tr.restarted])
    assert torch.equal(res.x, tr.x[-1]) and len(tr.x) == 4 and e.shape == (24, 4)
    assert torch.allclose(e[:, -1], restart_task.energy(restart_task.forward(res.x, batch.ctx), batch.y))
    assert all(torch.equal(tr.x[0][i], torch.zeros(4)) != bool(tr.restarted[i]) for i in range(24))
    if damping:  # each kept run is a damped run: its energy never rises
        assert (e.diff(dim=1) <= 0).all()


def test_restarts_off_or_above_every_energy_change_nothing(restart_task, toy_cfg):
    solver = build_solver(restart_task, toy_cfg("solver.steps=2"))
    batch = restart_task.sample(8, "test", 0)
    once = solver.solve(batch.y, batch.ctx)
    assert once.trace.resolved is None
    solver.restarts = Restarts(2, 1e9)
    res = solver.solve(batch.y, batch.ctx)
    assert not res.trace.resolved.any() and torch.equal(res.x, once.x)


def test_restarts_need_the_tasks_starts(toy_task, toy_cfg):
    solver = build_solver(toy_task, toy_cfg("solver.steps=2", "solver.restarts.starts=2"))
    batch = toy_task.sample(4, "test", 0)
    with pytest.raises(NotImplementedError, match="no restart starts; set solver.restarts.starts=0"):
        solver.solve(batch.y, batch.ctx)


@pytest.mark.parametrize("override, message", [("solver.restarts.starts=-1", "starts must be >= 0"),
                                               ("solver.restarts.energy_above=-0.5", "energy_above must be")])
def test_bad_restart_settings_are_refused(toy_cfg, override, message):
    with pytest.raises(ValueError, match=message):
        toy_cfg(override)


# --- symmetry averaging ------------------------------------------------------------------------------------------
class Identity:
    def feedback(self, inputs):
        return inputs

    def step(self, dx):
        return dx


class Negate:
    """Every input and the step negated: not a symmetry of the toy, but it shows what the solver does with one."""

    def feedback(self, inputs):
        return {k: -v for k, v in inputs.items()}

    def step(self, dx):
        return -dx


@pytest.fixture
def symmetric_task(toy_cls, toy_cfg):
    class Symmetric(toy_cls):
        def symmetries(self):
            return [Identity(), Negate()]

    return Symmetric(toy_cfg())


def test_symmetric_steps_are_the_mean_of_the_steps_mapped_back_at_inference_only(symmetric_task, toy_cfg):
    solver = build_solver(symmetric_task, toy_cfg("solver.symmetries=true")).eval()
    batch = symmetric_task.sample(6, "test", 0)
    x = symmetric_task.initial(batch) + 0.1
    dx, h, fb = solver.propose(1, x, batch.y, batch.ctx, None)
    plain, _ = solver.stages(1, fb.inputs, None)
    negated, _ = solver.stages(1, {k: -v for k, v in fb.inputs.items()}, None)
    assert torch.allclose(dx, (plain - negated) / 2) and not torch.allclose(dx, plain)
    assert h == [None, None]  # one recurrent state per symmetry
    solver.train()  # training unrolls the plain net
    assert torch.equal(solver.propose(1, x, batch.y, batch.ctx, None)[0], plain)
    off = build_solver(symmetric_task, toy_cfg())
    off.load_state_dict(solver.state_dict())
    assert torch.equal(off.eval().propose(1, x, batch.y, batch.ctx, None)[0], plain)
    res = solver.eval().solve(batch.y, batch.ctx)
    assert torch.isfinite(res.x).all() and (res.trace.energies().diff(dim=1) <= 0).all()


def test_symmetries_need_the_tasks_symmetries_and_a_bool(toy_task, toy_cfg):
    with pytest.raises(ValueError, match="defines no symmetries"):
        build_solver(toy_task, toy_cfg("solver.symmetries=true"))
    with pytest.raises(ValueError, match="solver.symmetries must be true or false"):
        toy_cfg("solver.symmetries=maybe")


def test_strategies_are_built_from_the_solver_settings_in_one_place(toy_cfg):
    acceptance, restarts = strategies(toy_cfg("solver.restarts.starts=3", "solver.restarts.energy_above=0.5").solver)
    assert isinstance(acceptance, LMDamping) and restarts == Restarts(3, 0.5)
    assert (acceptance.max_halvings, acceptance.factor) == (4, 0.5)
    acceptance, restarts = strategies(toy_cfg("solver.damping.enabled=false").solver)
    assert isinstance(acceptance, AlwaysAccept) and restarts == Restarts() and not restarts.starts
    assert restarts.chosen(torch.tensor([0.0, 1.0, -1.0])).tolist() == [1]
