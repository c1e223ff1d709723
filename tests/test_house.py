"""The rules of the house (DESIGN.md), checked on the source: the core knows no task, no task imports another, no
module imports itself round a circle, and the Task base asks a plugin for few hooks."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("feedback_solver", "tasks")
#: words of the tasks' worlds that no core module outside the rendering layer may name
TASK_WORDS = ("feedback_multi", "light", "mesh", "material", "skeleton", "silhouette")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for the core and the built-in tasks."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports anywhere (at the top, under TYPE_CHECKING or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_the_core_never_imports_a_task_and_no_task_imports_another():
    for name, deps in graph().items():
        if name.startswith("feedback_solver"):
            assert not [d for d in deps if d.startswith("tasks")], name
        elif name.count(".") >= 2:  # tasks.<task>.<module>
            own = ".".join(name.split(".")[:2])
            assert not [d for d in deps if d.startswith("tasks.") and not d.startswith(own)], name


def test_no_import_circle():
    g = graph()
    packages = {n for n, p in modules().items() if p.name == "__init__.py"}
    edges = {n: {d for d in deps if d not in packages} for n, deps in g.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(d):] + [n, d]))
            if d not in state:
                visit(d, path + [n])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])


def test_the_core_outside_the_rendering_layer_names_no_task_word():
    pattern = re.compile("|".join(TASK_WORDS), re.IGNORECASE)
    hits = [f"{p.name}:{i}: {line.strip()}" for p in sorted((ROOT / "feedback_solver").glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


def test_the_task_base_asks_for_few_hooks_and_the_toy_plugin_writes_only_what_it_needs():
    from fbs_toy.task import ToyTask

    from feedback_solver.problem import Task, unwritten

    assert 0 < len(Task.__abstractmethods__) <= 8
    assert unwritten(ToyTask) == []
    written = {k for k in vars(ToyTask) if not k.startswith("_")} - {"name", "default_config", "differentiable"}
    assert written <= set(Task.__abstractmethods__) | {"is_outlier", "make_initializer", "checkpoint_dir",
                                                      "describe_data"}


def test_bench_methods_are_data_not_core_words():
    from fbs_toy.task import ToyTask

    from feedback_solver.bench import Learned, learned
    from feedback_solver.config import load_config

    cfg = load_config(ToyTask)
    assert learned("feedback", cfg) == Learned("feedback")
    assert learned("feedback_gradient", cfg) == Learned("feedback_gradient")  # a variant: its own checkpoint
    assert learned("feedback_no_damping", cfg) == Learned("feedback", ("damping",))
    assert learned("feedback_shared_no_restarts_no_symmetry", cfg) == Learned("feedback_shared",
                                                                              ("restarts", "symmetry"))
    assert learned("feedback_no_gravity", cfg) is None and learned("adam", cfg) is None
    own = load_config(ToyTask, ["bench.learned.initializer.checkpoint=feedback", "bench.learned.initializer.steps=0"])
    assert learned("initializer", own) == Learned("feedback", (), 0)


def test_a_learned_method_entry_is_checked_when_the_config_loads():
    from fbs_toy.task import ToyTask

    from feedback_solver.config import load_config

    assert load_config(ToyTask, ["bench.learned.short.checkpoint=feedback", "bench.learned.short.steps=1"])
    with pytest.raises(ValueError, match=r"bench.learned.short: give its checkpoint"):
        load_config(ToyTask, ["bench.learned.short.steps=1"])
    with pytest.raises(KeyError, match=r"unknown config key 'bench.learned.short.stop'"):
        load_config(ToyTask, ["bench.learned.short.checkpoint=feedback", "bench.learned.short.stop=1"])
    with pytest.raises(ValueError, match=r"bench.learned.short.steps must be an integer, got 'all'"):
        load_config(ToyTask, ["bench.learned.short.checkpoint=feedback", "bench.learned.short.steps=all"])


def test_settings_are_typed_once_when_loaded():
    from fbs_toy.task import ToyTask

    from feedback_solver.config import load_config
    from feedback_solver.settings import Mode, Schedule

    cfg = load_config(ToyTask, ["solver.mode=shared", "solver.steps=1", "train.lr=1e-2"])
    assert cfg.solver.mode is Mode.shared and cfg.train.schedule is Schedule.progressive
    assert isinstance(cfg.train.lr, float) and cfg.solver.mode == "shared"
    with pytest.raises(ValueError, match=r"^train.batch_size must be an integer, got 'many'$"):
        load_config(ToyTask, ["train.batch_size=many"])
    with pytest.raises(ValueError, match=r"^solver.damping.enabled must be true or false, got 'often'$"):
        load_config(ToyTask, ["solver.damping.enabled=often"])
