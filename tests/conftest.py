"""Make the out-of-tree toy plugin (tests/plugin_pkg) visible exactly as an installed plugin would be.

tests/plugin_pkg holds the package `fbs_toy` and its `fbs_toy-0.1.dist-info` with one entry-point line; putting
the folder on sys.path (this process) and PYTHONPATH (CLI subprocesses) is all the registration there is.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parent / "plugin_pkg"


def _register_plugin() -> None:
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(PLUGIN_DIR) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), *parts])
    importlib.invalidate_caches()  # also clears importlib.metadata's path cache


# at collection time, so module-level code in test files already sees the plugin
_register_plugin()


@pytest.fixture(scope="session", autouse=True)
def toy_plugin_registered():
    """Session setup: the plugin is on the path, and the registry lists it."""
    _register_plugin()
    from feedback_solver import registry

    assert "toy" in registry.available(), "tests/plugin_pkg did not register the toy task"
    return PLUGIN_DIR


@pytest.fixture(scope="module", autouse=True)
def single_thread_for_core_tests(request):
    """The core tests' nets are tiny: one intra-op thread is several times faster than two fighting over cores.

    Only for tests directly in tests/ (task suites in subfolders keep torch's default).
    """
    import torch

    if request.path.parent != Path(__file__).resolve().parent:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_cls():
    from feedback_solver import registry

    return registry.task_class("toy")


@pytest.fixture(scope="session")
def toy_cfg(toy_cls):
    """toy_cfg(*overrides, variant=None): the toy's merged, validated config."""
    from feedback_solver.config import load_config

    def make(*overrides: str, variant: str | None = None):
        return load_config(toy_cls, list(overrides), variant)

    return make


@pytest.fixture(scope="session")
def toy_task(toy_cls, toy_cfg):
    return toy_cls(toy_cfg())


@pytest.fixture
def benchmark_script():
    """A script of benchmarks/ loaded as a module by name, so its helpers can be tested without running it."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def restart_task(toy_cls, toy_cfg):
    """The toy with other starts: corners of the box, so a restart can land nearer the truth than the zero start."""
    import torch

    class Restarting(toy_cls):
        def restart_starts(self, batch, count):
            signs = torch.tensor([[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0], [1.0, 1.0, -1.0, -1.0]])
            return (0.8 * signs[:count, None, :]).expand(count, len(batch), 4).clone()

    return Restarting(toy_cfg())
