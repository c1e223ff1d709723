"""Guards of the solve loop: NaN observations are refused, NaN or infinite proposals (from an update net or a forward
model) are rejected like a rising energy and counted in the trace, and a step of the wrong shape is named."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_solver.solver import FeedbackSolver, build_solver

GUARD = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def solvers(toy_cls, toy_cfg):
    """An untrained toy solver (with and without damping) and the shipped IK solver: two tasks, two spaces."""
    from feedback_solver import registry
    from feedback_solver.config import load_config

    out = {}
    for damped in (True, False):
        cfg = toy_cfg(f"solver.damping.enabled={str(damped).lower()}")
        out[f"toy damped={damped}"] = build_solver(toy_cls(cfg), cfg)
    ik_cls = registry.task_class("ik")
    ik = ik_cls(load_config(ik_cls, []))
    out["ik"] = FeedbackSolver.from_checkpoint(ik)
    return out


class Poisoned(torch.nn.Module):
    """An update net whose step is NaN or inf for chosen samples."""

    def __init__(self, net, rows: list[int], value: float):
        super().__init__()
        self.net, self.rows, self.value = net, rows, value

    def forward(self, fb, h=None):
        dx, h = self.net(fb, h)
        dx = dx.clone()
        dx[self.rows] = self.value
        return dx, h


@GUARD
@given(name=st.sampled_from(["toy damped=True", "toy damped=False", "ik"]), n=st.integers(1, 12),
       rows=st.sets(st.integers(0, 11), max_size=6), stages=st.sets(st.integers(0, 2), min_size=1),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf")]), seed=st.integers(0, 10_000))
def test_non_finite_steps_are_rejected_counted_and_leave_a_finite_answer(solvers, name, n, rows, stages, value,
                                                                          seed):
    solver = solvers[name]
    batch = solver.task.sample(n, "val", seed)
    rows = sorted(r for r in rows if r < n)
    real = list(solver.stages.nets)
    assert solver.stages.mode == "stagewise" and len(real) >= 3
    stages = {s for s in stages if s < len(real)}
    solver.stages.nets = torch.nn.ModuleList(Poisoned(net, rows if k in stages else [], value)
                                             for k, net in enumerate(real))
    try:
        res = solver.solve(batch.y, batch.ctx, steps=len(real))
    finally:
        solver.stages.nets = torch.nn.ModuleList(real)
    assert torch.isfinite(res.x).all()
    energies = res.trace.energies()
    assert torch.isfinite(energies).all()
    assert res.trace.nonfinite_count() == len(rows) * len(stages)
    for t, flags in enumerate(res.trace.nonfinite):
        assert flags.nonzero().flatten().tolist() == (rows if t in stages else [])
        assert (res.trace.lambdas()[flags, t] == 0).all()  # the state was kept
    if type(solver.acceptance).__name__ == "LMDamping":
        assert (energies[:, 1:] <= energies[:, :-1] + 1e-6).all()


def test_a_forward_model_that_returns_nan_is_a_rejected_trial(solvers, monkeypatch):
    solver = solvers["toy damped=True"]
    batch = solver.task.sample(16, "val", 3)
    real = type(solver.task).forward
    calls = {"n": 0}

    def flaky(self, x, ctx):
        y = real(self, x, ctx)
        calls["n"] += 1
        return torch.full_like(y, float("nan")) if calls["n"] == 2 else y  # the first damping trial

    monkeypatch.setattr(type(solver.task), "forward", flaky)
    res = solver.solve(batch.y, batch.ctx)
    assert torch.isfinite(res.x).all() and res.trace.nonfinite[0].all() and res.trace.nonfinite_count() == 16


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_observation_is_refused_before_solving(solvers, bad):
    solver = solvers["toy damped=True"]
    batch = solver.task.sample(8, "val", 0)
    y = batch.y.clone()
    y[5, 2] = bad
    with pytest.raises(ValueError, match=r"observation y of sample\(s\) \[5\] contains NaN or inf"):
        solver.solve(y, batch.ctx)


def test_a_step_of_the_wrong_shape_names_the_net_and_the_space(solvers):
    solver = solvers["toy damped=True"]
    batch = solver.task.sample(4, "val", 0)
    real = solver.stages.nets[0].forward
    solver.stages.nets[0].forward = lambda fb, h=None: (real(fb, h)[0][:, :3], h)
    try:
        with pytest.raises(ValueError, match=r"update net FlatUpdate \(stage 0\) returned a step of shape \(4, 3\); "
                                             r"the space Euclidean takes \(B, 4\)"):
            solver.solve(batch.y, batch.ctx)
    finally:
        del solver.stages.nets[0].forward
