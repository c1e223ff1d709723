"""What the update net sees: residual feedback (Ma et al. 2020), the energy gradient (Luo et al. 2024), or both."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor

if TYPE_CHECKING:
    from feedback_solver.problem import Task

@dataclass
class At:
    """What feedback is computed from at x_t: the observation, the prediction, and the energy's gradients."""

    x: Tensor
    y: Tensor
    y_t: Tensor
    grad: Tensor | None = None
    grads: Tensor | None = None


@dataclass(frozen=True)
class Kind:
    """One feedback component a config may ask for: what it is shaped like, so nets size themselves from it
    ("observation": like y; "state": like x; "tangent": like a step, one per energy part when `per_part`), and
    which gradient of the energy it needs (none, the total, or one per part)."""

    name: str
    like: str
    value: Callable[[At], Tensor | None]
    gradient: str = ""  # "" | "total" | "parts"

    @property
    def per_part(self) -> bool:
        return self.gradient == "parts"


KINDS = {k.name: k for k in (
    Kind("y", "observation", lambda a: a.y),
    Kind("y_t", "observation", lambda a: a.y_t),
    Kind("residual", "observation", lambda a: a.y - a.y_t),  # Ma et al. 2020
    Kind("gradient", "tangent", lambda a: a.grad, "total"),  # Luo et al. 2024
    Kind("gradients", "tangent", lambda a: a.grads, "parts"),  # one gradient per part of the energy (per photo)
    Kind("x", "state", lambda a: a.x),
)}
INPUTS = tuple(KINDS)


def shaped_like(inputs: list[str] | tuple[str, ...], like: str) -> list[str]:
    """The inputs of one shape ("observation", "state" or "tangent"), in the config's order."""
    return [k for k in inputs if KINDS[k].like == like]


def width(inputs: list[str] | tuple[str, ...], sizes: dict[str, int], parts: int = 1) -> int:
    """Channels (or features) of the inputs stacked, from the size of each shape (`sizes[like]`)."""
    return sum(sizes[KINDS[k].like] * (parts if KINDS[k].per_part else 1) for k in inputs)


@dataclass
class FeedbackOut:
    """The net's inputs plus what the solver loop reuses: the current prediction and its energy."""

    inputs: dict[str, Tensor]
    y_t: Tensor
    energy: Tensor
    seconds: float


def check_inputs(inputs: list[str] | tuple[str, ...]) -> None:
    """feedback.inputs names known kinds (the config's loader and a checkpoint's solver both ask)."""
    unknown = [k for k in inputs if k not in INPUTS]
    if unknown or not inputs:
        raise ValueError(f"feedback.inputs: unknown {unknown or 'empty list'}; choose from {list(INPUTS)}")


class Feedback:
    """Computes the chosen feedback components at x_t; everything but x is detached before it enters the net."""

    def __init__(self, inputs: list[str] | tuple[str, ...]):
        check_inputs(inputs)
        self.inputs = tuple(inputs)
        self.needs_gradient = any(KINDS[k].gradient for k in self.inputs)
        self.per_part = any(KINDS[k].per_part for k in self.inputs)

    def __call__(self, task: "Task", x_t: Tensor, y: Tensor, ctx: dict[str, Any],
                 y_t: Tensor | None = None) -> FeedbackOut:
        start = time.perf_counter()
        grad = grads = None
        if self.needs_gradient:
            grad, y_grad, grads = energy_gradient(task, x_t.detach(), y, ctx, self.per_part)
            if y_t is None and task.differentiable:
                y_t = y_grad
        if y_t is None:
            with torch.no_grad():
                y_t = task.forward(x_t.detach(), ctx)
        energy = task.energy(y_t, y).detach()
        seconds = time.perf_counter() - start
        at = At(x_t, y, y_t, grad, grads)
        return FeedbackOut({k: KINDS[k].value(at) for k in self.inputs}, y_t, energy, seconds)


def energy_gradient(task: "Task", x: Tensor, y: Tensor, ctx: dict[str, Any], per_part: bool = False
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Riemannian gradient of E_data at x: d/d(delta) E(retract(x, delta)) at delta = 0, detached; with `per_part`,
    also the gradient of each part of the energy (`task.energy_parts`, e.g. one per input image), stacked on dim 1.
    A task's own `energy_gradient` (closed form) replaces autograd where it has one."""
    closed = None if per_part else task.energy_gradient(x, y, ctx)
    if closed is not None:
        return closed[0].detach(), closed[1].detach(), None
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
