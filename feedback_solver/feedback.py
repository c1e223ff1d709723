"""What the update net sees: residual feedback (Ma et al. 2020), the energy gradient (Luo et al. 2024), or both."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from feedback_solver.problem import Task

#: feedback components a config may ask for; "gradients": one gradient per part of the energy (per input image)
INPUTS = ("y", "y_t", "residual", "gradient", "gradients", "x")


@dataclass
class FeedbackOut:
    """The net's inputs plus what the solver loop reuses: the current prediction and its energy."""

    inputs: dict[str, Tensor]
    y_t: Tensor
    energy: Tensor
    seconds: float


class Feedback:
    """Computes the chosen feedback components at x_t; everything but x is detached before it enters the net."""

    def __init__(self, inputs: list[str] | tuple[str, ...]):
        unknown = [k for k in inputs if k not in INPUTS]
        if unknown or not inputs:
            raise ValueError(f"feedback.inputs: unknown {unknown or 'empty list'}; choose from {list(INPUTS)}")
        self.inputs = tuple(inputs)
        self.needs_gradient = "gradient" in self.inputs or "gradients" in self.inputs

    def __call__(self, task: "Task", x_t: Tensor, y: Tensor, ctx: dict[str, Any],
                 y_t: Tensor | None = None) -> FeedbackOut:
        start = time.perf_counter()
        grad = grads = None
        if self.needs_gradient:
            grad, y_grad, grads = energy_gradient(task, x_t.detach(), y, ctx, "gradients" in self.inputs)
            if y_t is None and task.differentiable:
                y_t = y_grad
        if y_t is None:
            with torch.no_grad():
                y_t = task.forward(x_t.detach(), ctx)
        energy = task.energy(y_t, y).detach()
        seconds = time.perf_counter() - start
        parts = {"y": y, "y_t": y_t, "residual": y - y_t, "gradient": grad, "gradients": grads, "x": x_t}
        return FeedbackOut({k: parts[k] for k in self.inputs}, y_t, energy, seconds)


def energy_gradient(task: "Task", x: Tensor, y: Tensor, ctx: dict[str, Any], per_part: bool = False
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Riemannian gradient of E_data at x: d/d(delta) E(retract(x, delta)) at delta = 0, detached; with `per_part`,
    also the gradient of each part of the energy (`task.energy_parts`, e.g. one per input image), stacked on dim 1."""
    delta = task.space.tangent_zeros(x).requires_grad_(True)
    with torch.enable_grad():
        y_pred = task.surrogate_forward(task.space.retract(x, delta), ctx)
        energy = task.energy(y_pred, y)
        (grad,) = torch.autograd.grad(energy.sum(), delta, retain_graph=per_part)
        grads = None
        if per_part:
            parts = task.energy_parts(y_pred, y)
            grads = torch.stack([torch.autograd.grad(parts[:, k].sum(), delta, retain_graph=k + 1 < parts.shape[1])[0]
                                 for k in range(parts.shape[1])], 1)
    return grad.detach(), y_pred.detach(), None if grads is None else grads.detach()
