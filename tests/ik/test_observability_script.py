"""benchmarks/ik_observability.py: the oracle keeps the true joint positions and moves only toward the prior."""
from __future__ import annotations

import pytest
import torch

from feedback_solver import registry
from feedback_solver.config import load_config


@pytest.fixture(scope="module")
def task():
    cls = registry.task_class("ik")
    return cls(load_config(cls, []))


def test_the_oracle_holds_the_positions_and_lowers_the_prior_term(task, benchmark_script):
    script = benchmark_script("ik_observability")
    batch = task.sample(500, "test", 0).index(torch.tensor([100, 300]))
    x = script.retry_unmoved(task, batch, script.oracle(task, batch, "chordal_mean", rounds=1), "chordal_mean")
    m = task.metrics(x, batch.x, {})
    assert m["position_cm"].max() < 0.01, "the data term holds the joint positions"
    assert (m["angle_deg"] > 1.0).all(), "the unobserved DoFs moved"
    assert (script.prior_term(task, x, "chordal_mean") < script.prior_term(task, batch.x, "chordal_mean")).all()
    summary = script.summary(task, x, batch)
    assert summary["unmoved"] == 0.0 and summary["angle_deg mean"] == pytest.approx(float(m["angle_deg"].mean()))


def test_a_sample_left_at_the_truth_is_solved_again(task, benchmark_script):
    script = benchmark_script("ik_observability")
    batch = task.sample(500, "test", 0).index(torch.tensor([200]))
    x = script.retry_unmoved(task, batch, batch.x.clone(), "chordal_mean")
    assert task.space.angles(x, batch.x).amax() > 1e-3
