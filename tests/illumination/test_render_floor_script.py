"""benchmarks/render_floor.py: a relit step's cost on the test objects and on 100x denser copies."""
from __future__ import annotations

import pytest


def rows(script):
    small = {"faces": 1200, "relit_s": 0.0002, "render_s": 0.005, "scene_s": 0.012}
    dense = {"faces": 130000, "relit_s": 0.00024, "render_s": 0.05, "scene_s": 0.3}
    return [{"light": "point", "samples": 30, "seed": 0, "small": small, "dense": dense, "mitsuba_iteration_s": 0.01,
             **script.ratios(small, dense, 0.01)}]


def test_ratios_compare_dense_with_small_and_the_relit_call_with_the_others(benchmark_script):
    row = rows(benchmark_script("render_floor"))[0]
    assert row["relit_dense_over_small"] == pytest.approx(1.2)
    assert row["render_dense_over_small"] == pytest.approx(10.0)
    assert row["render_over_relit"] == pytest.approx(25.0)
    assert row["mitsuba_iteration_over_relit"] == pytest.approx(50.0)


def test_report_gives_the_measured_figures_and_the_bar(benchmark_script):
    script = benchmark_script("render_floor")
    md = "\n".join(script.write_md(rows(script), "python benchmarks/render_floor.py"))
    assert "| point | test objects | 1200 | 0.20 ms | 5.00 ms | 12.00 ms | 10.00 ms |" in md
    assert "| point | dense copies | 130000 | 0.24 ms | 50.00 ms | 300.00 ms | – |" in md
    assert "| point | 1.20x (within the 1.5x bar) | 10.00x | 25.0x | 50x |" in md
    assert "- Data: the first 30 test samples per light kind, seed 0; dense" in md
