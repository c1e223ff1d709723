"""benchmarks/compare_reports.py: figures compared, timings and provenance left out."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_reports.py"
spec = importlib.util.spec_from_file_location("compare_reports", SCRIPT)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

REPORT = {"command": "fbsolve bench toy", "methods": {"feedback": {
    "metrics": {"error": {"mean": 0.1, "median": 0.05}}, "seconds_per_sample": 0.001,
    "curve": {"step": [0, 1], "mean": [1.0, 0.1]}, "per_step": {"forward_fraction": 0.5}}}}


def write(path: Path, report: dict) -> Path:
    path.write_text(json.dumps(report))
    return path


def test_timings_and_commands_may_differ_but_figures_may_not(tmp_path, capsys):
    a = write(tmp_path / "a.json", REPORT)
    timed = json.loads(json.dumps(REPORT))
    timed["command"] = "fbsolve bench toy --out elsewhere"
    timed["methods"]["feedback"]["seconds_per_sample"] = 0.5
    timed["methods"]["feedback"]["per_step"]["forward_fraction"] = 0.9
    assert compare.main([str(a), str(write(tmp_path / "b.json", timed))]) == 0
    moved = json.loads(json.dumps(REPORT))
    moved["methods"]["feedback"]["curve"]["mean"][1] = 0.2
    assert compare.main([str(a), str(write(tmp_path / "c.json", moved))]) == 1
    assert "methods.feedback.curve.mean[1]: 0.1 -> 0.2" in capsys.readouterr().out
