"""benchmarks/convergence.py: energy buckets hold the right samples, and steps past T reach the solver."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from feedback_solver.problem import Batch


def test_buckets_split_samples_by_final_energy_and_skip_empty_ones(benchmark_script):
    script = benchmark_script("convergence")
    task = SimpleNamespace(metrics=lambda x, x_true, ctx: {"err": (x - x_true).abs().flatten()})
    batch = Batch(torch.zeros(5, 1), torch.zeros(5, 1))
    x = torch.tensor([[1.0], [2.0], [3.0], [10.0], [20.0]])
    energy = torch.tensor([0.0005, 0.0001, 0.0009, 0.02, 0.5])
    rows = script.buckets(task, batch, x, energy, [0.0, 0.001, 0.005, 0.01, float("inf")])
    assert [(r["energy"], r["samples"], r["err median"]) for r in rows] == [("[0, 0.001)", 3, 2.0),
                                                                           ("[0.01, inf)", 2, 10.0)]
    lines = script.table(rows)
    assert lines[0] == "| energy | samples | err median |" and len(lines) == 4


def test_solve_passes_the_step_count_and_keeps_sample_order(benchmark_script, monkeypatch):
    script = benchmark_script("convergence")
    seen = []

    class Solver:
        def solve(self, y, ctx, steps):
            seen.append((len(y), steps))
            return SimpleNamespace(x=y * steps, trace=SimpleNamespace(energy=[y.sum(1)]))

    monkeypatch.setattr(script.FeedbackSolver, "from_checkpoint", lambda task: Solver())
    y = torch.arange(5.0)[:, None]
    x, energy = script.solve(None, Batch(y, y), steps=12, chunk=2)
    assert seen == [(2, 12), (2, 12), (1, 12)]
    assert x.flatten().tolist() == [0.0, 12.0, 24.0, 36.0, 48.0] and energy.tolist() == [0, 1, 2, 3, 4]


def test_stats_flatten_the_bench_summary_with_the_outlier_rate(benchmark_script):
    script = benchmark_script("convergence")
    task = SimpleNamespace(metrics=lambda x, x_true, ctx: {"err": (x - x_true).abs().flatten()},
                           is_outlier=lambda m: m["err"] > 2.5, groups=lambda batch: None)
    out = script.stats(task, Batch(torch.zeros(4, 1), torch.zeros(4, 1)), torch.tensor([[1.0], [2.0], [3.0], [6.0]]))
    assert out == {"err mean": 3.0, "err median": 2.0, "outliers %": 50.0}
