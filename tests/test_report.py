"""Tests for feedback_solver.report: files written, JSON round-trip, markdown content, PNG."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from feedback_solver.report import (
    MISSING,
    fmt_seconds,
    load_report,
    to_builtin,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _method(mean, median, seconds, steps, curve=None, outlier=0.02, forward=None, energy=None):
    m = {
        "metrics": {
            "angle_deg": {"mean": mean, "median": median, "std": mean / 2},
            "pos_mm": {"mean": mean * 10, "median": median * 10, "std": mean * 5},
        },
        "outlier_rate": outlier,
        "steps": steps,
        "seconds_per_sample": seconds,
        "forward_seconds_per_sample": forward,
        "samples": 500,
    }
    if curve is not None:
        m["curve"] = curve
    if energy is not None:
        m["energy_monotone"] = energy
    return m


def _curve(n, start, rate):
    steps = list(range(n))
    med = [start * rate**k for k in steps]
    return {"step": steps, "median": med, "mean": [1.1 * v for v in med]}


@pytest.fixture
def result() -> dict:
    return {
        "task": "ik",
        "data": "test: 01_03.bvh, 500 frames evenly spaced",
        "seed": 0,
        "command": "fbsolve bench ik --out DIR",
        "primary_metric": "angle_deg",
        "methods": {
            "feedback": _method(1.5, 1.2, 2e-3, 5, _curve(6, 20.0, 0.5), energy=0.97),
            "gradient": _method(4.0, 3.5, 0.05, 200, _curve(201, 20.0, 0.98), outlier=None),
            "direct_net": _method(6.0, 5.0, 1e-4, 1, forward=1e-4),
        },
        "subset": {
            "samples": 30,
            "note": "slow baselines on a fixed 30-sample subset",
            "methods": {
                "feedback": _method(1.4, 1.1, 2e-3, 5, _curve(6, 19.0, 0.5)),
                "adam": _method(1.0, 0.9, 1.624, 1000, _curve(1001, 20.0, 0.99)),
                "lbfgs": _method(1.1, 1.0, 0.19, 100),
            },
        },
    }


@pytest.fixture
def written(result, tmp_path):
    return write_report(result, tmp_path / "out"), tmp_path / "out"


def test_writes_three_files(written):
    paths, out = written
    assert set(paths) == {"json", "md", "png"}
    assert paths["json"] == out / "ik.json"
    assert paths["md"] == out / "ik.md"
    assert paths["png"] == out / "ik_steps.png"
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0


def test_json_round_trips(result, written):
    paths, _ = written
    loaded = load_report(paths["json"])
    assert loaded == result
    assert list(loaded) == list(result)  # insertion order kept
    assert list(loaded["methods"]) == ["feedback", "gradient", "direct_net"]
    text = paths["json"].read_text()
    assert text.startswith('{\n  "task": "ik"')  # indent=2


def test_markdown_content(result, written):
    paths, _ = written
    md = paths["md"].read_text()
    assert md.startswith("# Benchmark: ik\n")
    assert result["data"] in md
    assert "Seed: 0" in md
    assert "`fbsolve bench ik --out DIR`" in md
    for name in ["feedback", "gradient", "direct_net", "adam", "lbfgs"]:
        assert f"| {name} |" in md
    header = ("| method | angle_deg mean | angle_deg median | pos_mm mean | pos_mm median"
              " | outliers % | steps | s/sample | forward s/sample |")
    assert md.count(header) == 2  # full + subset section
    assert "## Subset (30 samples)" in md
    assert "adam takes 812x the time of feedback per sample" in md
    assert "lbfgs takes 95x the time of feedback per sample" in md
    # ratio line sits below the subset table
    assert md.index("adam takes 812x") > md.index("## Subset")
    assert "- feedback: 97%" in md  # energy_monotone listed


def test_number_formatting(written):
    md = written[0]["md"].read_text()
    feedback_row = next(row for row in md.splitlines() if row.startswith("| feedback |"))
    assert feedback_row == "| feedback | 1.5 | 1.2 | 15 | 12 | 2 | 5 | 2 ms | – |"
    assert fmt_seconds(1.624) == "1.62 s"
    assert fmt_seconds(2.5e-5) == "25 µs"
    assert fmt_seconds(3e-8) == "3e-08 s"
    assert "| adam | 1 | 0.9 | 10 | 9 | 2 | 1000 | 1.62 s | – |" in md
    assert fmt_seconds(None) == MISSING


def test_none_renders_as_dash(written):
    md = written[0]["md"].read_text()
    gradient_row = next(row for row in md.splitlines() if row.startswith("| gradient |"))
    cells = [c.strip() for c in gradient_row.strip("|").split("|")]
    assert cells[5] == "–"  # outlier_rate None
    assert cells[8] == "–"  # forward_seconds_per_sample None
    direct_row = next(row for row in md.splitlines() if row.startswith("| direct_net |"))
    assert "–" not in direct_row


def test_png_is_valid(written):
    png = written[0]["png"].read_bytes()
    assert png[:8] == PNG_MAGIC
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 400 and height >= 300
    assert len(png) > 10_000  # curves, lines, legend: not an empty canvas


def test_numpy_values_serialised(result, tmp_path):
    fb = result["methods"]["feedback"]
    fb["metrics"]["angle_deg"]["mean"] = np.float32(1.5)
    fb["seconds_per_sample"] = np.float64(2e-3)
    fb["samples"] = np.int64(500)
    fb["curve"]["median"] = np.array(fb["curve"]["median"])
    paths = write_report(result, tmp_path)
    loaded = json.loads(paths["json"].read_text())
    lfb = loaded["methods"]["feedback"]
    assert lfb["metrics"]["angle_deg"]["mean"] == 1.5
    assert type(lfb["seconds_per_sample"]) is float
    assert lfb["samples"] == 500
    assert lfb["curve"]["median"] == pytest.approx([20.0 * 0.5**k for k in range(6)])
    assert "| feedback | 1.5 |" in paths["md"].read_text()


def test_to_builtin_scalars():
    torch = pytest.importorskip("torch")
    out = to_builtin({"a": np.float32(0.25), "b": torch.tensor(0.5), "c": np.bool_(True),
                      "d": (np.int32(3), torch.tensor([1.0, 2.0]))})
    assert out == {"a": 0.25, "b": 0.5, "c": True, "d": [3, [1.0, 2.0]]}
    assert type(out["a"]) is float and type(out["b"]) is float
    with pytest.raises(TypeError):
        to_builtin({"x": object()})


def test_minimal_result_without_subset_or_curves(tmp_path):
    minimal = {"task": "ik", "data": "d", "seed": 1, "primary_metric": "angle_deg",
               "methods": {"direct_net": _method(6.0, 5.0, 1e-4, 1)}}
    paths = write_report(minimal, tmp_path)
    md = paths["md"].read_text()
    assert "Subset" not in md and "Command" not in md and "takes" not in md
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_time_to_match_finds_the_first_iteration_at_the_learned_solvers_error(tmp_path):
    from feedback_solver.bench import matches

    curve = {"step": [0, 10, 20, 50], "mean": [0.3, 0.2, 0.09, 0.05], "median": [0.3, 0.2, 0.09, 0.05]}
    methods = {"feedback": {"seconds_per_sample": 0.01, "primary_mean": 0.1, "curve": {"step": [], "mean": []}},
               "adam": {"seconds_per_sample": 1.0, "max_steps": 100, "curve": curve},
               "lbfgs": {"seconds_per_sample": 1.0, "max_steps": 50, "curve": curve | {"mean": [0.3] * 4}}}
    got = matches(methods)
    assert got["adam"]["iteration"] == 20
    assert got["adam"]["seconds_per_sample"] == pytest.approx(0.2)  # 1 s over 100 iterations, 20 of them
    assert got["adam"]["times_feedback"] == pytest.approx(20)
    assert got["lbfgs"]["iteration"] is None and "never reached in 50" in got["lbfgs"]["note"]
    result = {"task": "t", "primary_metric": "err", "methods": {},
              "subset": {"samples": 2, "methods": {}, "match": got}}
    from feedback_solver.report import render_markdown

    text = render_markdown(result)
    assert "Optimisers against feedback" in text and "| adam | 20 |" in text and "never reached" in text


def test_summarise_adds_the_primary_metric_per_group_where_the_task_names_groups():
    import torch

    from feedback_solver.bench import summarise
    from feedback_solver.problem import Batch, Evaluation

    class Grouped(Evaluation):  # the evaluation role alone is all summarise needs

        def metrics(self, x_pred, x_true, ctx):
            return {"err": (x_pred - x_true).abs()[:, 0]}

        def is_outlier(self, metrics):
            return metrics["err"] > 1.0

        def groups(self, batch):
            return batch.ctx["obj"]

    task = Grouped()
    x_true = torch.zeros(5, 1)
    x = torch.tensor([[0.1], [0.3], [2.0], [0.2], [0.4]])
    batch = Batch(torch.zeros(5, 1), x_true, {"obj": ["b", "a", "b", "b", "a"]})
    groups = summarise(task, x, batch, "err")["groups"]
    assert list(groups) == ["a", "b"]
    assert groups["a"]["samples"] == 2 and groups["a"]["median"] == pytest.approx(0.3)  # lower middle of 0.3, 0.4
    assert groups["b"]["mean"] == pytest.approx(0.7667, abs=1e-3)
    assert groups["b"]["outlier_rate"] == pytest.approx(1 / 3)
    assert "groups" not in summarise(task, x, batch)  # no primary metric named: no table

    class Ungrouped(Grouped):
        groups = Evaluation.groups  # the base class's hook: no groups

    assert "groups" not in summarise(Ungrouped(), x, batch, "err")


def test_markdown_has_a_per_group_table(result, tmp_path):
    result["methods"]["feedback"]["groups"] = {"duck.obj": {"samples": 3, "mean": 2.0, "median": 1.5,
                                                            "outlier_rate": 0.0},
                                               "mug.obj": {"samples": 2, "mean": 9.0, "median": 8.0,
                                                           "outlier_rate": 0.5}}
    result["methods"]["direct_net"]["groups"] = {"duck.obj": {"samples": 3, "mean": 5.0, "median": 4.0,
                                                              "outlier_rate": 0.0}}
    md = write_report(result, tmp_path)["md"].read_text()
    assert "## Per group (angle_deg median; outliers % of feedback)" in md
    assert "| group | samples | feedback | direct_net | outliers % |" in md
    assert "| duck.obj | 3 | 1.5 | 4 | 0 |" in md
    assert f"| mug.obj | 2 | 8 | {MISSING} | 50 |" in md


def test_time_curves_and_the_equal_time_table_and_plot(tmp_path):
    """A learned solver's step times (the timed steps, then their mean), an optimiser's iterations at its mean pace
    after its start, and the metric each reaches within the same budgets; a plot beside the report."""
    import torch

    from feedback_solver.bench import Raw, time_curve
    from feedback_solver.report import render_markdown

    learned = Raw(torch.zeros(2, 1), {}, torch.zeros(2), 1.0, step_seconds=torch.tensor([[0.1, 0.1, 0.0],
                                                                                        [0.2, 0.4, 0.0]]),
                  start_seconds=0.2)
    got = time_curve(learned, [0, 1, 2, 4], None, 2)["seconds"]  # per sample: start 0.1, steps 0.15 and 0.25
    assert got == pytest.approx([0.1, 0.25, 0.5, 0.9])
    optimiser = Raw(torch.zeros(2, 1), {}, torch.zeros(2), 2.2, start_seconds=0.2)
    assert time_curve(optimiser, [0, 5, 10], 10, 2)["seconds"] == pytest.approx([0.1, 0.6, 1.1])
    fb = {"seconds_per_sample": 0.5, "curve": {"step": [0, 1, 2], "mean": [0.3, 0.2, 0.1], "median": [0.3] * 3},
          "time_curve": {"step": [0, 1, 2], "seconds": [0.1, 0.3, 0.5]}, "metrics": {}}
    adam = {"seconds_per_sample": 5.0, "curve": {"step": [0, 10], "mean": [0.4, 0.15], "median": [0.4] * 2},
            "time_curve": {"step": [0, 10], "seconds": [0.0, 5.0]}, "metrics": {}}
    result = {"task": "t", "report": "t", "primary_metric": "err", "methods": {},
              "subset": {"samples": 2, "methods": {"feedback": fb, "adam": adam}}}
    text = render_markdown(result, time_png="t_time.png")
    assert "## Equal time (subset)" in text and "t_time.png" in text
    section = text.split("## Equal time (subset)")[1]
    row = next(line for line in section.splitlines() if line.startswith("| adam |"))
    assert row.split("|")[2].strip() == "0.4" and row.split("|")[6].strip() == "0.15"  # 0.5x: start; 10x: the end
    paths = write_report(result, tmp_path)
    assert paths["time_png"].read_bytes()[:8] == PNG_MAGIC
