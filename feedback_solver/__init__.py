"""Learned-feedback solvers for inverse problems: a trained network turns forward-model feedback into updates."""
from feedback_solver.problem import Batch, ForwardModel, Symmetry, Task
from feedback_solver.solver import FeedbackSolver, SolveResult, Trace

__all__ = ["Batch", "ForwardModel", "Symmetry", "Task", "FeedbackSolver", "SolveResult", "Trace"]
__version__ = "0.1.0"
