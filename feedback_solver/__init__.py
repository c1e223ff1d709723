"""Learned-feedback solvers for inverse problems: a trained network turns forward-model feedback into updates.

The names below load on first use (PEP 562), so `fbsolve --help` starts without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Batch": "problem", "ForwardModel": "problem", "Symmetry": "problem", "Task": "problem",
            "FeedbackSolver": "solver", "SolveResult": "solver", "Trace": "solver"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'feedback_solver' has no attribute {name!r}")
    return getattr(importlib.import_module(f"feedback_solver.{_EXPORTS[name]}"), name)
