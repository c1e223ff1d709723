"""The Task protocol a plugin implements, and the Batch that carries (x, y, ctx) through the core."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver.spaces import Space


def index_ctx(ctx: dict[str, Any], idx: Tensor, batch_size: int) -> dict[str, Any]:
    """Select samples of per-sample context entries so damping and sharding can work on subsets."""
    out: dict[str, Any] = {}
    for key, value in ctx.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            out[key] = value[idx]
        elif isinstance(value, list) and len(value) == batch_size:
            out[key] = [value[i] for i in idx.tolist()]
        else:
            out[key] = value
    return out


def missing(task: Any, hook: str) -> NotImplementedError:
    """The error of a required hook a plugin did not write, naming the plugin class and the hook."""
    return NotImplementedError(f"task {getattr(task, 'name', '?')!r} ({type(task).__name__}) does not implement "
                               f"Task.{hook}, which this command needs")


@dataclass
class Batch:
    """Observations y with their context and, for synthetic data, the true parameters x."""

    y: Tensor
    x: Tensor | None = None
    ctx: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.y.shape[0]

    def index(self, idx: Tensor | slice) -> "Batch":
        """Sub-batch, so benchmarks can run slow methods on a fixed subset."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        return Batch(self.y[idx], None if self.x is None else self.x[idx], index_ctx(self.ctx, idx, len(self)))

    def to(self, device: torch.device | str) -> "Batch":
        """Move tensors, leaving shared objects (meshes, skeletons) alone."""
        ctx = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.ctx.items()}
        return Batch(self.y.to(device), None if self.x is None else self.x.to(device), ctx)


@runtime_checkable
class ForwardModel(Protocol):
    """A batched forward model f(x, ctx) -> y; `differentiable` says whether autograd through it is valid."""

    differentiable: bool

    def __call__(self, x: Tensor, ctx: dict[str, Any]) -> Tensor: ...


class Symmetry(Protocol):
    """A transform g of the scene (a mirror, say): the update net's step on g(feedback), mapped back by g^-1, is
    another estimate of its step on the feedback itself."""

    def feedback(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The update net's inputs as the transformed scene would give them."""
        ...

    def step(self, dx: Tensor) -> Tensor:
        """A tangent step taken in the transformed scene, as a step in the scene itself."""
        ...


class Task:
    """Base class of a task plugin: subclass it and register it under the `feedback_solver.tasks` entry point."""

    name: str = "task"
    #: whether autograd through `forward` is valid (gradient feedback, Adam and L-BFGS need it or a surrogate)
    differentiable: bool = False
    #: the config used when no configs/<name>.yaml exists (user plugins outside this repo)
    default_config: dict[str, Any] = {}

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    # --- the physics -------------------------------------------------------------------------
    @property
    def space(self) -> Space:
        raise missing(self, "space")

    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        raise missing(self, "forward")

    def surrogate_forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """Differentiable stand-in for `forward`; tasks with a differentiable forward use it as is."""
        if not self.differentiable:
            raise NotImplementedError(f"task {self.name!r}: forward is not differentiable and no surrogate is given")
        return self.forward(x, ctx)

    def energy(self, y_pred: Tensor, y_obs: Tensor) -> Tensor:
        """Per-sample data term; mean squared residual unless the task says otherwise."""
        return (y_pred - y_obs).flatten(1).pow(2).mean(1)

    def energy_parts(self, y_pred: Tensor, y_obs: Tensor) -> Tensor:
        """Per-sample energy split into parts (B x N, e.g. one per input image) for the "gradients" feedback;
        one part, the whole energy, unless the task says otherwise."""
        return self.energy(y_pred, y_obs)[:, None]

    def prior(self, x: Tensor) -> Tensor | None:
        """Per-sample prior energy for the optimiser baselines, or None."""
        return None

    # --- data and evaluation -----------------------------------------------------------------
    def sample(self, n: int, split: str, seed: int) -> Batch:
        raise missing(self, "sample")

    def initial(self, batch: Batch) -> Tensor:
        """Constant or analytic start x0 for solvers without a learned initializer and for the baselines."""
        raise missing(self, "initial")

    def restart_starts(self, batch: Batch, count: int) -> Tensor:
        """Other starts (count, B, D) for samples the solver left at a high energy (`solver.restarts`)."""
        raise NotImplementedError(f"task {self.name!r} gives no restart starts; set solver.restarts.starts=0")

    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        raise missing(self, "metrics")

    def curve_metric(self, xs: list[Tensor], x_true: Tensor, ctx: dict[str, Any], name: str) -> list[Tensor]:
        """One metric per sample at each state of a curve (a task may compute it alone, or share work across states)."""
        return [self.metrics(x, x_true, ctx)[name] for x in xs]

    def is_outlier(self, metrics: dict[str, Tensor]) -> Tensor | None:
        """Per-sample outlier flags, or None when the task has no outlier rule."""
        return None

    def groups(self, batch: Batch) -> list[str] | None:
        """Each sample's group (e.g. its object) for the report's per-group table, or None for no such table."""
        return None

    def loss(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> Tensor:
        """Supervised loss at one unrolled stage; the space's distance unless the task says otherwise."""
        return self.space.distance(x_pred, x_true).mean()

    def augment(self, batch: Batch, states: tuple[Tensor, Tensor] | None,
                gen: torch.Generator) -> tuple[Batch, tuple[Tensor, Tensor] | None]:
        """A pool minibatch and its states (x_t, y_t) under a symmetry of the problem (`train.augment`): more
        variety from the same costly forwards. None by default; a task that has one overrides this."""
        raise NotImplementedError(f"task {self.name!r} defines no augmentation; set train.augment=false")

    def symmetries(self) -> list["Symmetry"]:
        """Transforms of the scene under which the problem is equivariant, the identity first (`solver.symmetries`):
        at inference each step is the mean of the net's steps on every transformed feedback, mapped back. None by
        default."""
        return []

    def auxiliary_loss(self, aux: dict[str, Tensor], batch: Batch) -> Tensor:
        """Loss of a net's auxiliary outputs (e.g. a depth head), trained beside the update and unused at inference.

        A net exposes them by setting `self.aux = {name: tensor}` in forward while training; none by default.
        """
        raise NotImplementedError(f"task {self.name!r}: a net reported auxiliary outputs {sorted(aux)} "
                                  "but the task defines no auxiliary_loss")

    # --- learned parts -------------------------------------------------------------------------
    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        """One update net from the config's `model` section: forward(fb: dict[str, Tensor], h) -> (dx tangent, h)."""
        raise missing(self, "make_update")

    def make_initializer(self, model: DictConfig) -> nn.Module | None:
        """A learned initializer: forward(y, ctx, x0) -> x0', or None for the constant/analytic start."""
        return None

    def optimisers(self) -> dict[str, Callable[..., Any]]:
        """Extra baseline optimisers by report name (e.g. a differentiable renderer), beside Adam and L-BFGS.

        Each is called as f(task, y, ctx, x0, cfg) and returns a `baselines.OptimResult`, as Adam does.
        """
        return {}

    # --- settings, checkpoints and reports -----------------------------------------------------------
    def settings(self) -> list["Task"]:
        """The independent settings `bench` reports one by one (e.g. a point and a directional light); just this."""
        return [self]

    @property
    def report_name(self) -> str:
        """File stem of this setting's benchmark report."""
        return self.name

    def check_checkpoint(self, cfg: DictConfig, path: Path) -> None:
        """Refuse a checkpoint trained for another setting of this task (its config is `cfg`)."""

    def for_checkpoint(self, cfg: DictConfig) -> "Task":
        """The task a checkpoint's solver runs against: this one, unless the checkpoint observes differently (e.g.
        several photos instead of one); `observe` then makes its observations from a test batch's true x."""
        return self

    def observe(self, batch: Batch) -> Batch:
        """This task's observation of a batch drawn by another setting of the task (see `for_checkpoint`)."""
        return batch

    # --- command line --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        """Where shipped checkpoints live; a plugin's own package folder by default."""
        import inspect

        return Path(inspect.getfile(type(self))).parent / "checkpoints"

    @classmethod
    def add_cli_options(cls, parser: argparse.ArgumentParser, command: str) -> None:
        """Task-specific flags for `fbsolve train|solve|bench TASK` (a classmethod: added before a task exists)."""

    def apply_cli_options(self, args: argparse.Namespace, command: str) -> None:
        """Apply the flags of `add_cli_options` (e.g. a user's data file) before sampling."""

    def describe_data(self, split: str) -> str:
        """One line naming the data a split is drawn from, for benchmark reports."""
        return f"{self.name} {split} split"

    def load_observation(self, args: argparse.Namespace) -> Batch:
        """Read a user's observation for `fbsolve solve`."""
        raise NotImplementedError(f"task {self.name!r} does not support `fbsolve solve`")

    def write_solution(self, x: Tensor, batch: Batch, args: argparse.Namespace) -> list[Path]:
        """Write the recovered parameters of `fbsolve solve`; returns the files written."""
        raise missing(self, "write_solution")
