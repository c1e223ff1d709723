"""A tiny task plugin that lives outside the `tasks/` package, registered through one entry-point line.

It exists to prove that a new task touches no core file: see fbs_toy-0.1.dist-info/entry_points.txt.
"""
from fbs_toy.task import ToyTask

__all__ = ["ToyTask"]
