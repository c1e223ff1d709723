"""Compare two benchmark reports (JSON) without their timings: does a change leave every figure as it was?

    python benchmarks/compare_reports.py benchmarks/ik/ik.json out/ik/ik.json [--rel 1e-6]

Prints each metric that differs by more than --rel (relative) and exits 1 if any does; timings, the command, the
config and the run list are left out (they differ by machine and by invocation, not by result).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

#: keys whose values are times, or say how the report was made rather than what it found
SKIP = ("seconds", "fraction", "command", "config", "runs", "times_feedback", "note")


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a report's leaves, timings and provenance left out."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if not any(s in k for s in SKIP):
                out |= leaves(v, f"{prefix}.{k}" if prefix else k)
        return out
    if isinstance(node, list):
        return {f"{prefix}[{i}]": v for i, v in enumerate(node)} if all(
            not isinstance(v, (dict, list)) for v in node) else leaves(dict(enumerate(node)), prefix)
    return {prefix: node}


def differences(a: dict[str, Any], b: dict[str, Any], rel: float) -> list[str]:
    """Every path whose values differ (numbers by more than `rel`), or that only one report has."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            same = math.isclose(x, y, rel_tol=rel, abs_tol=1e-12) or (math.isnan(x) and math.isnan(y))
        else:
            same = x == y
        if not same:
            out.append(f"{key}: {x!r} -> {y!r}")
    return out


def common_methods(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Both reports cut down to the methods (and subset methods) that both ran."""
    out = []
    for r, other in ((a, b), (b, a)):
        r = json.loads(json.dumps(r))
        r["methods"] = {k: v for k, v in r["methods"].items() if k in other["methods"]}
        if "subset" in r:
            theirs = other.get("subset", {}).get("methods", {})
            r["subset"]["methods"] = {k: v for k, v in r["subset"]["methods"].items() if k in theirs}
            r["subset"].pop("match", None)
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rel", type=float, default=1e-6, help="relative tolerance of a number")
    parser.add_argument("--common", action="store_true",
                        help="only the methods both reports ran (a rerun of some methods of a full report)")
    args = parser.parse_args(argv)
    reports = [json.loads(p.read_text()) for p in (args.before, args.after)]
    if args.common:
        reports = common_methods(*reports)
    a, b = (leaves(r) for r in reports)
    diff = differences(a, b, args.rel)
    print("\n".join(diff) if diff else f"same: {len(a)} figures of {args.before} and {args.after} agree")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
