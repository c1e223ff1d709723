"""solver.polish (Gauss-Newton after the learned steps) and solver.restarts.triage (only the best start goes on)."""
from __future__ import annotations

import pytest
import torch

from feedback_solver.acceptance import Restarts
from feedback_solver.polish import Polish
from feedback_solver.solver import build_solver, select


def test_polish_reaches_the_exact_answer_of_a_noiseless_toy(toy_task):
    batch = toy_task.sample(16, "test", 0)
    start = batch.x + 0.2 * torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    e0 = toy_task.energy(toy_task.forward(start, {}), batch.y)
    x, seconds = Polish(steps=12)(toy_task, start, batch.y, {})
    e = toy_task.energy(toy_task.forward(x, {}), batch.y)
    assert (e <= e0).all() and seconds > 0
    assert float((x - batch.x).abs().max()) < 1e-3  # y = f(x) has its zero residual at the truth
    x_off, _ = Polish(steps=0)(toy_task, start, batch.y, {})
    assert torch.equal(x_off, start)


def test_polish_keeps_a_state_whose_energy_no_step_lowers(toy_task):
    batch = toy_task.sample(4, "test", 0)
    x, _ = Polish(steps=3)(toy_task, batch.x.clone(), batch.y, {})  # at the truth: E = 0, nothing is lower
    assert torch.equal(x, batch.x)


def test_the_solver_polishes_its_answer_and_the_ablation_does_not(toy_task, toy_cfg):
    torch.manual_seed(0)
    cfg = toy_cfg("solver.steps=2", "solver.polish.steps=10")
    solver = build_solver(toy_task, cfg)
    batch = toy_task.sample(12, "test", 0)
    res = solver.solve(batch.y, batch.ctx)
    plain = solver.polish
    solver.polish = Polish()
    once = solver.solve(batch.y, batch.ctx)
    assert plain.steps == 10 and res.trace.polish_seconds > 0 and once.trace.polish_seconds == 0
    e, e0 = res.trace.energies(), once.trace.energies()
    assert torch.equal(e[:, :-1], e0[:, :-1]) and (e[:, -1] <= e0[:, -1]).all() and (e[:, -1] < e0[:, -1]).any()
    assert torch.allclose(e[:, -1], toy_task.energy(toy_task.forward(res.x, {}), batch.y))
    assert res.seconds >= res.trace.polish_seconds


def test_polish_settings_are_checked_and_a_large_tangent_is_refused(toy_cfg, toy_task):
    with pytest.raises(ValueError, match="polish.steps must be >= 0"):
        toy_cfg("solver.polish.steps=-1")

    class Wide(type(toy_task).space.fget(toy_task).__class__):
        tangent_dim = 40

    task = type(toy_task)(toy_cfg())
    task._space = Wide(40, -1.5, 1.5)
    with pytest.raises(ValueError, match="40 tangent dimensions"):
        Polish(steps=1)(task, torch.zeros(2, 40), torch.zeros(2, 8), {})


def test_triage_continues_each_samples_best_start_with_a_whole_trace(restart_task, toy_cfg):
    torch.manual_seed(0)
    solver = build_solver(restart_task, toy_cfg("solver.steps=4"))
    batch = restart_task.sample(24, "test", 0)
    once = solver.solve(batch.y, batch.ctx)
    threshold = float(once.trace.energies()[:, -1].median())
    solver.restarts = Restarts(3, threshold, triage=2)
    res = solver.solve(batch.y, batch.ctx)
    tr, e0, e = res.trace, once.trace.energies(), res.trace.energies()
    assert e.shape == (24, 5) and len(tr.x) == 5 and tr.lambdas().shape == (24, 4) and len(tr.forward_seconds) == 5
    assert torch.equal(tr.resolved, e0[:, -1] > threshold) and tr.restarted.any()
    assert (e[:, -1] <= e0[:, -1]).all() and torch.equal(res.x[~tr.restarted], once.x[~tr.restarted])
    assert torch.allclose(e[:, -1], restart_task.energy(restart_task.forward(res.x, {}), batch.y))
    assert (e.diff(dim=1) <= 0).all()  # each kept run is one damped run: head and tail join up
    starts = restart_task.restart_starts(batch, 3)
    assert all(any(torch.equal(tr.x[0][i], starts[j, i]) for j in range(3)) for i in tr.restarted.nonzero().flatten())
    # triage after every step but the last, or none, is the full search over starts in the end
    full = Restarts(3, threshold)
    solver.restarts = full
    everything = solver.solve(batch.y, batch.ctx).trace.energies()
    assert (everything[:, -1] <= e[:, -1] + 1e-6).float().mean() > 0.9


def test_select_takes_rows_of_a_carry():
    h = (torch.arange(6.0).view(3, 2), [torch.arange(3.0), None], None)
    out = select(h, torch.tensor([2, 0]))
    assert torch.equal(out[0], torch.tensor([[4.0, 5.0], [0.0, 1.0]]))
    assert torch.equal(out[1][0], torch.tensor([2.0, 0.0]))
    assert out[1][1] is None and out[2] is None


def test_a_non_finite_jacobian_moves_no_sample_and_a_nan_energy_never_wins_triage(toy_task, monkeypatch):
    from feedback_solver.solver import lowest

    batch = toy_task.sample(6, "test", 0)
    start = batch.x + 0.1
    real = toy_task.polish_residual
    calls = []

    def flaky(x, ctx, y):  # the finite-difference calls of the first step return NaN
        calls.append(1)
        out = real(x, ctx, y)
        return out * float("nan") if len(calls) in (2, 3, 4, 5) else out

    monkeypatch.setattr(toy_task, "polish_residual", flaky)
    x, _ = Polish(steps=1)(toy_task, start, batch.y, {})
    assert torch.equal(x, start)
    assert lowest(torch.tensor([[float("nan"), 2.0], [1.0, float("nan")], [3.0, 1.0]])).tolist() == [1, 2]
