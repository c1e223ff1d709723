"""Task plugins are found through the `feedback_solver.tasks` entry-point group, built-in ones included.

A plugin may also name its command-line flags in `feedback_solver.options` (a function in a module without heavy
imports); the CLI then shows `fbsolve CMD TASK --help` without importing the task, torch or a renderer.
"""
from __future__ import annotations

import argparse
from importlib.metadata import EntryPoint, entry_points
from typing import Callable

GROUP = "feedback_solver.tasks"
OPTIONS_GROUP = "feedback_solver.options"


def available() -> dict[str, EntryPoint]:
    """Registered task names and their entry points."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def task_class(name: str) -> type:
    """The Task subclass registered under `name`, with a message listing the known tasks otherwise."""
    found = available()
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise KeyError(f"no task {name!r} registered in entry-point group {GROUP!r} (registered: {known})")
    return found[name].load()


def cli_options(name: str) -> Callable[[argparse.ArgumentParser, str], None]:
    """The task's add_cli_options(parser, command): its cheap-to-import entry point if registered, else the Task's."""
    quick = {ep.name: ep for ep in entry_points(group=OPTIONS_GROUP)}
    if name in quick and name in available():
        return quick[name].load()
    return task_class(name).add_cli_options
