"""Benchmark report writer: one result dict -> <task>.json, <task>.md, <task>_steps.png.

The result schema is documented on :func:`write_report`.  Plotting uses the Agg
canvas directly (no pyplot), so it works headless and never touches the global
matplotlib backend or figure registry of the calling process.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["write_report", "load_report", "to_builtin"]

MISSING = "–"  # en dash, shown for None / NaN / absent values
REFERENCE_METHOD = "feedback"
PNG_DPI = 120
MAX_MARKED_POINTS = 50  # beyond this, per-point markers just smear the line


# --------------------------------------------------------------------------- #
# JSON
# --------------------------------------------------------------------------- #
def to_builtin(obj: Any) -> Any:
    """Make numpy/torch values JSON-serialisable so json.dump never chokes on them."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)  # also strips int subclasses
    if isinstance(obj, float):
        return float(obj)  # np.float64 subclasses float; normalise it anyway
    if isinstance(obj, Mapping):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalar/array, torch tensor: duck-typed, no torch import
        return to_builtin(obj.tolist())
    try:
        return float(obj)
    except (TypeError, ValueError):
        raise TypeError(f"cannot serialise {type(obj).__name__} in a benchmark result") from None


def _write_json(result: dict, path: pathlib.Path) -> None:
    """Keep key order and indentation stable so reports diff cleanly."""
    with path.open("w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")


def load_report(path: str | os.PathLike) -> dict:
    """Read back a report JSON so results can be compared or re-rendered."""
    with pathlib.Path(path).open(encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- #
# number formatting
# --------------------------------------------------------------------------- #
def _is_missing(x: Any) -> bool:
    """None and NaN both mean 'no value' in a report cell."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_num(x: Any) -> str:
    """Three significant digits is enough to compare methods at a glance."""
    if _is_missing(x):
        return MISSING
    x = float(x)
    if 1e3 <= abs(x) < 1e6:
        return f"{x:.0f}"  # step counts like 1000 read badly as 1e+03
    return f"{x:.3g}"


def fmt_percent(rate: Any) -> str:
    """Outlier rates are stored as fractions but read more naturally as percent."""
    return MISSING if _is_missing(rate) else f"{100.0 * float(rate):.3g}"


def fmt_seconds(x: Any) -> str:
    """Per-sample times span many decades; ms reads best in the middle range."""
    if _is_missing(x):
        return MISSING
    x = float(x)
    if x == 0 or x >= 1.0:
        return f"{x:.3g} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    if x >= 1e-6:
        return f"{x * 1e6:.3g} µs"
    return f"{x:.3g} s"


def fmt_ratio(r: float) -> str:
    """Large ratios are clearer as whole numbers than in scientific notation."""
    return f"{r:,.0f}x" if r >= 100 else f"{r:.3g}x"


# --------------------------------------------------------------------------- #
# markdown
# --------------------------------------------------------------------------- #
def _metric_names(methods: Mapping[str, dict]) -> list[str]:
    """Union of metrics in first-seen order, so methods with extra metrics still fit."""
    names: dict[str, None] = {}
    for m in methods.values():
        names.update(dict.fromkeys((m.get("metrics") or {}).keys()))
    return list(names)


def _md_escape(text: str) -> str:
    """A '|' inside a cell would split the markdown table row."""
    return str(text).replace("|", "\\|")


def _table_row(cells: Iterable[str]) -> str:
    """Markdown tables need leading and trailing pipes for most renderers."""
    return "| " + " | ".join(cells) + " |"


def _method_cells(name: str, m: Mapping[str, Any], metrics: list[str]) -> list[str]:
    """One row per method; absent fields render as the missing marker."""
    cells = [_md_escape(name)]
    for metric in metrics:
        stats = (m.get("metrics") or {}).get(metric) or {}
        cells += [fmt_num(stats.get("mean")), fmt_num(stats.get("median"))]
    cells += [
        fmt_percent(m.get("outlier_rate")),
        fmt_num(m.get("steps")),
        fmt_seconds(m.get("seconds_per_sample")),
        fmt_seconds(m.get("forward_seconds_per_sample")),
    ]
    return cells


def methods_table(methods: Mapping[str, dict]) -> list[str]:
    """Shared table layout so the full and subset sections line up."""
    metrics = _metric_names(methods)
    header = ["method"]
    for metric in metrics:
        header += [f"{metric} mean", f"{metric} median"]
    header += ["outliers %", "steps", "s/sample", "forward s/sample"]
    lines = [_table_row(header), _table_row(["---"] * len(header))]
    lines += [_table_row(_method_cells(n, m, metrics)) for n, m in methods.items()]
    return lines


def time_ratio_line(methods: Mapping[str, dict], ref: str = REFERENCE_METHOD,
                    runs: list[dict] | None = None) -> str | None:
    """The headline comparison is cost per sample relative to the learned solver, within the run that timed it
    (a merged report's other runs ran at another time on a shared machine)."""
    ref_time = (methods.get(ref) or {}).get("seconds_per_sample")
    if _is_missing(ref_time) or float(ref_time) <= 0:
        return None
    ref_run = next((set(r.get("methods") or []) for r in reversed(runs or []) if ref in (r.get("methods") or [])),
                   None)  # the run whose figures the report holds: the last that ran it
    parts = []
    for name, m in methods.items():
        t = m.get("seconds_per_sample")
        if name == ref or _is_missing(t) or (ref_run is not None and name not in ref_run):
            continue
        parts.append(f"{_md_escape(name)} takes {fmt_ratio(float(t) / float(ref_time))} "
                     f"the time of {ref} per sample")
    return ("Time per sample relative to " + ref + ": " + "; ".join(parts) + ".") if parts else None


def _section(title: str, methods: Mapping[str, dict], note: str | None = None,
             runs: list[dict] | None = None) -> list[str]:
    """Table plus ratio line, so each section is self-contained."""
    lines = [f"## {title}", ""]
    if note:
        lines += [_md_escape(note), ""]
    lines += methods_table(methods)
    ratio = time_ratio_line(methods, runs=runs)
    if ratio:
        lines += ["", ratio]
    return lines + [""]


def _labelled_methods(result: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """Subset methods get a suffix so they are distinguishable from full-run ones."""
    items = [(n, m) for n, m in (result.get("methods") or {}).items()]
    subset = result.get("subset") or {}
    items += [(f"{n} (subset)", m) for n, m in (subset.get("methods") or {}).items()]
    return items


def energy_lines(result: Mapping[str, Any]) -> list[str]:
    """Monotone energy is a correctness property worth listing separately."""
    rows = [(label, m["energy_monotone"]) for label, m in _labelled_methods(result)
            if not _is_missing(m.get("energy_monotone"))]
    if not rows:
        return []
    lines = ["## Energy monotonicity", "",
             "Fraction of samples whose energy never rose:", ""]
    lines += [f"- {_md_escape(label)}: {fmt_percent(v)}%" for label, v in rows]
    return lines + [""]


def restart_lines(result: Mapping[str, Any]) -> list[str]:
    """How much of the learned solver's answer came from `solver.restarts` (its time is in s/sample)."""
    rows = [(label, m["restarts"]) for label, m in _labelled_methods(result) if m.get("restarts")]
    if not rows:
        return []
    lines = ["## Restarts", "", "Samples left above `solver.restarts.energy_above` after the solve are solved again "
             "from the task's other starts; each keeps its lowest-energy run.", ""]
    lines += [f"- {_md_escape(label)}: {fmt_percent(r['solved_again'])}% solved again, "
              f"{fmt_percent(r['answer_from_restart'])}% answered by a restart" for label, r in rows]
    return lines + [""]


def group_lines(result: Mapping[str, Any]) -> list[str]:
    """The primary metric per group (the task's objects) for every method run on all samples."""
    methods = {n: m["groups"] for n, m in (result.get("methods") or {}).items() if m.get("groups")}
    if not methods:
        return []
    metric = result.get("primary_metric", "metric")
    groups = list(dict.fromkeys(g for per in methods.values() for g in per))
    first = next(iter(methods))
    lines = [f"## Per group ({metric} median; outliers % of {_md_escape(first)})", "",
             _table_row(["group", "samples", *map(_md_escape, methods), "outliers %"]),
             _table_row(["---"] * (len(methods) + 3))]
    for g in groups:
        row = methods[first].get(g) or {}
        cells = [_md_escape(g), str(row.get("samples", MISSING))]
        cells += [fmt_num((per.get(g) or {}).get("median")) for per in methods.values()]
        lines.append(_table_row(cells + [fmt_percent(row.get("outlier_rate"))]))
    return lines + [""]


def match_lines(result: Mapping[str, Any]) -> list[str]:
    """When each optimiser first matched the learned solver's mean primary metric (the seed's time-to-match)."""
    match = (result.get("subset") or {}).get("match") or {}
    if not match:
        return []
    metric = result.get("primary_metric", "the primary metric")
    lines = [f"## Optimisers against {REFERENCE_METHOD} (subset)", "",
             f"First recorded iteration whose mean {metric} is at or below {REFERENCE_METHOD}'s, and the time to get "
             "there (time per iteration of the optimiser's slowest sample x iterations).", "",
             _table_row(["optimiser", "iteration", "time per sample", f"x {REFERENCE_METHOD}'s time"]),
             _table_row(["---"] * 4)]
    for name, m in match.items():
        if m.get("iteration") is None:
            lines.append(_table_row([_md_escape(name), _md_escape(m.get("note") or "never"), MISSING, MISSING]))
        else:
            lines.append(_table_row([_md_escape(name), str(m["iteration"]), fmt_seconds(m["seconds_per_sample"]),
                                     fmt_ratio(m["times_feedback"])]))
    return lines + [""]


def step_time_lines(result: Mapping[str, Any], name: str = REFERENCE_METHOD) -> list[str]:
    """The seed's runtime breakdown: forward-model and update time per step of the learned solver."""
    m = (result.get("methods") or {}).get(name) or {}
    per = m.get("per_step")
    if not per:
        return []
    fwd, upd = per["forward_seconds_per_sample"], per["update_seconds_per_sample"]
    lines = [f"## Time per step ({_md_escape(name)})", "",
             "Per sample; step T is the final forward call that scores the answer. Forward time includes the "
             "damping's extra calls (and the restarts'); polish: solver.polish's Gauss-Newton steps.", "",
             _table_row(["step", "forward", "update"]), _table_row(["---"] * 3)]
    lines += [_table_row([str(t), fmt_seconds(f), fmt_seconds(u)]) for t, (f, u) in enumerate(zip(fwd, upd))]
    polish = per.get("polish_seconds_per_sample") or 0.0
    if polish:  # solver.polish: after the steps and restarts, all of it forward calls and small solves
        lines.append(_table_row(["polish", fmt_seconds(polish), "–"]))
    frac = per.get("forward_fraction")
    if not _is_missing(frac):
        lines += ["", f"Forward model: {100 * float(frac):.1f}% of the solve time."]
    return lines + [""]


def _header_lines(result: Mapping[str, Any]) -> list[str]:
    """Provenance first, so a reader knows how to reproduce the numbers."""
    lines = [f"# Benchmark: {result.get('task', MISSING)}", ""]
    lines.append(f"- Data: {result.get('data', MISSING)}")
    seed = result.get("seed")
    lines.append(f"- Seed: {MISSING if seed is None else seed}")
    runs = result.get("runs") or []
    if len(runs) > 1:  # bench --merge: each run's command and the methods it timed (time ratios hold within a run)
        lines += [f"- Run {k}: `{r['command']}` ({', '.join(dict.fromkeys(r['methods']))})"
                  for k, r in enumerate(runs, 1)]
    elif result.get("command"):
        lines.append(f"- Command: `{result['command']}`")
    if result.get("ranks", 1) > 1:
        lines.append(f"- Ranks: {result['ranks']} (torchrun); seconds per sample are summed over ranks")
    if result.get("primary_metric"):
        lines.append(f"- Primary metric: {result['primary_metric']}")
    if result.get("forward_gap"):
        lines.append(f"- Forward model against the data: {result['forward_gap']}")
    return lines + [""]


#: time budgets of the equal-time table, as multiples of the learned solver's time per sample
BUDGETS = (0.5, 1, 2, 5, 10, 20, 50)


def timed_methods(result: Mapping[str, Any]) -> dict[str, dict]:
    """The subset's methods with a time curve (every one run on the same samples in the same run)."""
    subset = (result.get("subset") or {}).get("methods") or {}
    return {k: m for k, m in subset.items() if (m.get("time_curve") or {}).get("seconds")}


def metric_at(m: Mapping[str, Any], seconds: float) -> float | None:
    """A method's mean primary metric at its last recorded step or iteration within `seconds` per sample."""
    best = None
    for t, v in zip(m["time_curve"]["seconds"], m["curve"]["mean"]):
        if t <= seconds * (1 + 1e-9):
            best = v
    return best


def equal_time_lines(result: Mapping[str, Any]) -> list[str]:
    """The primary metric each method reaches within the same wall-clock budgets per sample (the subset)."""
    timed = timed_methods(result)
    ref = timed.get(REFERENCE_METHOD)
    if ref is None or len(timed) < 2:
        return []
    metric = result.get("primary_metric", "the primary metric")
    base = ref["seconds_per_sample"]
    lines = ["## Equal time (subset)", "",
             f"Mean {metric} reached within each budget of seconds per sample (a multiple of {REFERENCE_METHOD}'s "
             f"{fmt_seconds(base)}): each method's last recorded step or iteration by then, its time the start plus "
             f"its mean time per step or iteration; {MISSING}: not started. {REFERENCE_METHOD} runs on past its "
             "shipped steps (the curve's).", "",
             _table_row(["method", *(f"{b}x ({fmt_seconds(b * base)})" for b in BUDGETS)]),
             _table_row(["---"] * (len(BUDGETS) + 1))]
    for name, m in timed.items():
        vals = [metric_at(m, b * base) for b in BUDGETS]
        lines.append(_table_row([_md_escape(name), *(MISSING if v is None else fmt_num(v) for v in vals)]))
    return lines + [""]


def render_time_plot(result: Mapping[str, Any], path: pathlib.Path) -> bool:
    """The primary metric (mean) against seconds per sample for the subset's methods; False when there are none."""
    timed = timed_methods(result)
    if len(timed) < 2:
        return False
    metric = result.get("primary_metric") or "metric"
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, (name, m) in enumerate(timed.items()):
        xs, ys = _floats(m["time_curve"]["seconds"]), _floats(m["curve"]["mean"])
        ax.plot(xs, ys, "-", color=f"C{k % 10}", marker="." if len(xs) <= MAX_MARKED_POINTS else None, label=name)
        ax.plot(xs[-1:], ys[-1:], "o", color=f"C{k % 10}")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per sample")
    ax.set_ylabel(f"{metric} (mean)")
    ax.set_title(f"{result.get('report', result.get('task', ''))}: {metric} against time (same samples, same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=PNG_DPI)
    return True


def render_markdown(result: Mapping[str, Any], png_name: str | None = None, time_png: str | None = None) -> str:
    """Human-readable summary that sits next to the raw JSON."""
    lines = _header_lines(result)
    lines += _section("All samples", result.get("methods") or {}, runs=result.get("runs"))
    subset = result.get("subset")
    if subset and subset.get("methods"):
        n = subset.get("samples")
        title = f"Subset ({n} samples)" if n is not None else "Subset"
        lines += _section(title, subset["methods"], subset.get("note"))
    lines += group_lines(result)
    lines += match_lines(result)
    lines += equal_time_lines(result)
    if time_png:
        lines += [f"![{result.get('primary_metric', 'metric')} vs time]({time_png})", ""]
    lines += energy_lines(result)
    lines += restart_lines(result)
    lines += step_time_lines(result)
    if png_name:
        lines += [f"![{result.get('primary_metric', 'metric')} vs step]({png_name})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# plot
# --------------------------------------------------------------------------- #
def _floats(values: Iterable[Any]) -> list[float]:
    """NaN leaves a gap in the line instead of failing on None."""
    return [math.nan if _is_missing(v) else float(v) for v in values]


def _primary_median(m: Mapping[str, Any], metric: str) -> float | None:
    """Methods without a curve are drawn at their final median."""
    value = ((m.get("metrics") or {}).get(metric) or {}).get("median")
    return None if _is_missing(value) else float(value)


def _plot_series(result: Mapping[str, Any], metric: str) -> tuple[list, list]:
    """Split methods into curves and flat reference lines."""
    curves, flats = [], []
    for label, m in _labelled_methods(result):
        curve = m.get("curve") or {}
        if curve.get("step") and curve.get("median"):
            curves.append((label, _floats(curve["step"]), _floats(curve["median"])))
        elif (median := _primary_median(m, metric)) is not None:
            flats.append((label, median))
    return curves, flats


def _all_positive(curves: list, flats: list) -> bool:
    """Log y only makes sense if nothing is zero or negative."""
    ys = [y for _, _, ys in curves for y in ys if not math.isnan(y)] + [y for _, y in flats]
    return bool(ys) and all(y > 0 for y in ys)


def _base_name(label: str) -> str:
    """Same method in both sections should share a colour."""
    return label.removesuffix(" (subset)")


def _draw(ax: Any, curves: list, flats: list) -> None:
    """Same colour per method across sections; subset curves dotted, curveless methods dashed."""
    colours: dict[str, str] = {}
    for label, xs, ys in curves + [(lab, None, y) for lab, y in flats]:
        colour = colours.setdefault(_base_name(label), f"C{len(colours) % 10}")
        if xs is None:
            ax.axhline(ys, color=colour, linestyle="--", linewidth=1.2, label=label)
        else:
            style = ":" if label.endswith("(subset)") else "-"
            marker = "." if len(xs) <= MAX_MARKED_POINTS else None
            ax.plot(xs, ys, style, color=colour, marker=marker, markersize=4, label=label)


def render_steps_plot(result: Mapping[str, Any], path: pathlib.Path) -> None:
    """Shows how the primary metric converges with steps for every method."""
    metric = result.get("primary_metric") or "metric"
    curves, flats = _plot_series(result, metric)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw(ax, curves, flats)
    ax.set_xscale("symlog", linthresh=1)  # linear in [0, 1] so step 0 is visible
    ax.set_xlim(left=0)  # steps are never negative; symlog would otherwise mirror the axis
    if _all_positive(curves, flats):
        ax.set_yscale("log")
    ax.set_xlabel("step / iteration")
    ax.set_ylabel(f"{metric} (median)")
    ax.set_title(f"{result.get('task', '')}: {metric} vs step")
    ax.grid(True, which="both", alpha=0.3)
    if curves or flats:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=PNG_DPI)


# --------------------------------------------------------------------------- #
# entry point
# --------------------------------------------------------------------------- #
def _file_stem(task: Any) -> str:
    """Task names become file names, so strip anything that could escape out_dir."""
    stem = re.sub(r"[^\w.-]+", "_", str(task)).strip("._")
    return stem or "task"


def write_report(result: dict, out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Writes out_dir/<report>.json, .md, _steps.png, and _time.png where the subset's methods carry time curves
    (report: the task's setting, its name by default).

    Schema (``result``)::

        {"task": str, "report": str (optional), "data": str, "seed": int, "command": str (optional),
         "ranks": int (optional),
         "primary_metric": str,
         "forward_gap": str (optional: the forward model against the program that made the data),
         "methods": {NAME: {"metrics": {METRIC: {"mean", "median", "std"}},
                            "outlier_rate": fraction | None, "steps": float,
                            "seconds_per_sample": float,
                            "forward_seconds_per_sample": float | None,
                            "samples": int,
                            "curve": {"step": [...], "median": [...], "mean": [...]} (optional),
                            "time_curve": {"step": [...], "seconds": [...]} (optional: seconds per sample at
                                          each curve step),
                            "energy_monotone": fraction | None (optional),
                            "restarts": {"solved_again": fraction, "answer_from_restart": fraction} (optional),
                            "groups": {GROUP: {"samples", "mean", "median", "outlier_rate"}} (optional: the
                                       primary metric per group, where the task names groups)}},
         "subset": {"samples": int, "note": str, "methods": {...}} (optional),
         "runs": [{"command": str, "methods": [...]}] (optional: bench --merge, every run that fed the report)}
    """
    clean = to_builtin(result)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(clean.get("report") or clean.get("task", "task"))
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md",
             "png": out / f"{stem}_steps.png"}
    _write_json(clean, paths["json"])
    render_steps_plot(clean, paths["png"])
    time_png = out / f"{stem}_time.png"
    if render_time_plot(clean, time_png):
        paths["time_png"] = time_png
    paths["md"].write_text(render_markdown(clean, paths["png"].name, time_png.name if "time_png" in paths else None),
                           encoding="utf-8")
    return paths
