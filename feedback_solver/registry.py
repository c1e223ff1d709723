"""Task plugins are found through the `feedback_solver.tasks` entry-point group, built-in ones included."""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

GROUP = "feedback_solver.tasks"


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
