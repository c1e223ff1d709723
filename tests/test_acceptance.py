"""Step acceptance: LM-style damping never lets E_data rise; AlwaysAccept takes every step in full."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from feedback_solver.acceptance import AlwaysAccept, LMDamping
from feedback_solver.solver import build_solver
from feedback_solver.update import Stages


class RandomStep(nn.Module):
    """A deliberately harmful update: a large random step, ignoring the feedback."""

    def __init__(self, seed: int, scale: float):
        super().__init__()
        self.gen, self.scale = torch.Generator().manual_seed(seed), scale

    def forward(self, fb, h=None):
        x = fb["x"]
        return self.scale * torch.randn(x.shape, generator=self.gen, dtype=x.dtype), h


class GradientAscent(nn.Module):
    """A deliberately harmful update: climb the energy."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, fb, h=None):
        return self.rate * fb["gradient"], h


def harmful_solver(toy_task, toy_cfg, kind: str, seed: int, damping: bool = True, steps: int = 5):
    inputs = "[y,gradient,x]" if kind == "ascent" else "[y,y_t,residual,x]"
    cfg = toy_cfg(f"solver.steps={steps}", f"feedback.inputs={inputs}", f"solver.damping.enabled={damping}")
    torch.manual_seed(seed)
    solver = build_solver(toy_task, cfg)
    if kind == "random":
        solver.stages = Stages(lambda: RandomStep(seed, 3.0), steps, "shared")
    elif kind == "ascent":
        solver.stages = Stages(lambda: GradientAscent(50.0), steps, "shared")
    return solver


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 48), kind=st.sampled_from(["untrained", "random", "ascent"]))
def test_damped_energy_never_rises_for_any_sample(toy_cls, toy_cfg, seed, n, kind):
    task = toy_cls(toy_cfg())
    solver = harmful_solver(task, toy_cfg, kind, seed)
    batch = task.sample(n, "test", seed)
    res = solver.solve(batch.y, batch.ctx)
    e = res.trace.energies()
    assert e.shape == (n, 6)
    assert torch.isfinite(e).all()
    rises = e.diff(dim=1) > 0
    assert not rises.any(), f"E_data rose for samples {rises.any(1).nonzero().squeeze(1).tolist()}"
    # the energies the trace reports are those of the states it reports
    for x_t, e_t in zip(res.trace.x, res.trace.energy):
        assert torch.allclose(task.energy(task.forward(x_t, batch.ctx), batch.y), e_t, rtol=1e-5, atol=1e-7)
    lam = res.trace.lambdas()
    allowed = torch.tensor([0.0] + [0.5**k for k in range(5)])
    assert torch.isin(lam, allowed).all()


def test_without_damping_the_harmful_update_does_raise_the_energy(toy_task, toy_cfg):
    """The control for the property above: it is the damping, not the toy, that keeps E_data down."""
    batch = toy_task.sample(32, "test", 0)
    for kind in ("random", "ascent"):
        res = harmful_solver(toy_task, toy_cfg, kind, 0, damping=False).solve(batch.y, batch.ctx)
        assert (res.trace.energies().diff(dim=1) > 0).any(), kind
        assert torch.equal(res.trace.lambdas(), torch.ones(32, 5))


def toy_step(toy_task, n: int = 8, p_scale: float = 1e-2):
    """x = truth + p in float64, so the energy is near-quadratic in the step along p."""
    batch = toy_task.sample(n, "test", 1)
    x_true, y = batch.x.double(), batch.y.double()
    p = p_scale * torch.randn(n, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = x_true + p
    y_t = toy_task.forward(x, {})
    return x, x_true, p, y, y_t, toy_task.energy(y_t, y)


def test_zero_halvings_rejected_step_keeps_x_and_lambda_zero(toy_task):
    x, x_true, p, y, y_t, e = toy_step(toy_task)
    dx = torch.cat([-p[:4], 3 * p[4:]])  # first half: straight to the truth; second half: away from it
    acc = LMDamping(max_halvings=0)(toy_task, x, dx, y, {}, e, y_t)
    assert torch.equal(acc.lam, torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.equal(acc.x[4:], x[4:]), "a rejected step must leave x bit-for-bit unchanged"
    assert torch.equal(acc.energy[4:], e[4:]) and torch.equal(acc.y_t[4:], y_t[4:])
    assert torch.allclose(acc.x[:4], x_true[:4], atol=1e-12)
    assert (acc.energy[:4] < e[:4]).all()
    assert torch.allclose(acc.energy, toy_task.energy(toy_task.forward(acc.x, {}), y))


def test_halving_takes_the_first_scale_that_lowers_the_energy(toy_task):
    x, x_true, p, y, y_t, e = toy_step(toy_task)
    # lambda 1: truth - 5p (25x the energy), 0.5: truth - 2p (4x), 0.25: truth + 0.5p (0.25x)
    acc = LMDamping(max_halvings=4, factor=0.5)(toy_task, x, -6 * p, y, {}, e, y_t)
    assert torch.equal(acc.lam, torch.full((8,), 0.25, dtype=acc.lam.dtype))
    assert torch.allclose(acc.x, x - 1.5 * p, atol=1e-12)
    assert (acc.energy <= e).all()
    # two halvings are not enough: every sample gives up and keeps x
    acc = LMDamping(max_halvings=1)(toy_task, x, -6 * p, y, {}, e, y_t)
    assert torch.equal(acc.lam, torch.zeros(8)) and torch.equal(acc.x, x)


def test_non_finite_steps_are_rejected(toy_task):
    x, _, p, y, y_t, e = toy_step(toy_task)
    dx = torch.full_like(p, float("nan"))
    dx[:2] = -p[:2]
    acc = LMDamping(max_halvings=3)(toy_task, x, dx, y, {}, e, y_t)
    assert torch.isfinite(acc.x).all() and torch.equal(acc.x[2:], x[2:])
    assert torch.equal(acc.lam[2:], torch.zeros(6)) and torch.equal(acc.lam[:2], torch.ones(2))


def test_always_accept_takes_full_steps_even_uphill(toy_task):
    x, _, p, y, y_t, e = toy_step(toy_task)
    dx = 3 * p  # uphill for every sample
    acc = AlwaysAccept()(toy_task, x, dx, y, {}, e, y_t)
    assert torch.equal(acc.x, toy_task.space.retract(x, dx))
    assert torch.equal(acc.lam, torch.ones(8))
    assert (toy_task.energy(toy_task.forward(acc.x, {}), y) > e).all()
    assert acc.y_t is None and acc.energy is None


@pytest.mark.parametrize("halvings,factor", [(-1, 0.5), (2, 1.0), (2, 0.0)])
def test_damping_refuses_bad_settings(halvings, factor):
    with pytest.raises(ValueError, match="max_halvings"):
        LMDamping(halvings, factor)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 24), in_turn=st.sampled_from([1, 2, 3]),
       nan_rows=st.sets(st.integers(0, 23), max_size=4), nan_at=st.sampled_from([None, 1.0, 0.5, 0.25]))
def test_halvings_tried_together_give_the_answer_of_trying_them_in_turn(toy_task, seed, n, in_turn, nan_rows, nan_at):
    """Random steps, and a forward model that returns NaN for some samples at one step scale: the same scales and
    non-finite flags, and states and energies to float rounding, whether the scales are tried one call each or
    together."""
    gen = torch.Generator().manual_seed(seed)
    batch = toy_task.sample(n, "test", seed % 1000)
    x = torch.rand(n, 4, generator=gen) * 2 - 1
    dx = torch.randn(n, 4, generator=gen) * torch.rand(n, 1, generator=gen) * 3
    y_t = toy_task.forward(x, {})
    energy = toy_task.energy(y_t, batch.y)
    bad = torch.tensor(sorted(r for r in nan_rows if r < n), dtype=torch.long)

    class Flaky(type(toy_task)):
        def forward(self, xs, ctx):
            out = super().forward(xs, ctx)
            if nan_at is not None and len(bad):  # rows of x + nan_at * dx, whichever sample they belong to
                hit = ((xs[:, None] - toy_task.space.retract(x[bad], nan_at * dx[bad])[None]).abs().sum(2) < 1e-6)
                out[hit.any(1)] = float("nan")
            return out

    task = Flaky(toy_task.cfg)
    a = LMDamping(4, 0.5)(task, x, dx, batch.y, {}, energy, y_t)
    b = LMDamping(4, 0.5, in_turn)(task, x, dx, batch.y, {}, energy, y_t)
    for name in ("lam", "nonfinite"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("x", "energy", "y_t"):  # a forward call on another batch may round its last bit otherwise
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6, equal_nan=True), name


def test_in_turn_must_try_the_full_step_alone():
    with pytest.raises(ValueError, match="in_turn must be >= 1"):
        LMDamping(4, 0.5, 0)
