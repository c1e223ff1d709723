"""benchmarks/render_floor.py: the ceiling a per-step render puts on the speed-up over Mitsuba."""
from __future__ import annotations

import pytest


def test_bound_is_mitsuba_over_steps_renders(benchmark_script):
    bound = benchmark_script("render_floor").bound
    b = bound(render=0.005, steps=7, mitsuba=1.0)
    assert b["floor_s"] == pytest.approx(0.035)
    assert b["max_speedup"] == pytest.approx(1.0 / 0.035)
    assert b["solve_budget_for_100x_s"] == pytest.approx(0.01)
    assert b["renders_in_that_budget"] == pytest.approx(2.0)


def test_report_row_gives_the_measured_figures(benchmark_script):
    script = benchmark_script("render_floor")
    row = {"light": "point", "samples": 30, "seed": 0, "render_workers": 2, "mitsuba_iterations": 56,
           **script.bound(render=0.0047, steps=7, mitsuba=0.95)}
    md = "\n".join(script.write_md([row], "python benchmarks/render_floor.py"))
    assert "| point | 4.7 ms | 7 | 33 ms | 0.95 s | 56 | 28.9x | 9.5 ms | 2.02 |" in md
    assert "- Data: the first 30 test samples per light kind, seed 0" in md
