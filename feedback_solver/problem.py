"""The Task protocol a plugin implements, and the Batch that carries (x, y, ctx) through the core."""
from __future__ import annotations

import argparse
import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver.spaces import Space


def index_ctx(ctx: dict[str, Any], idx: Tensor, batch_size: int) -> dict[str, Any]:
    """Select samples of per-sample context entries so damping and sharding can work on subsets; an entry with a
    `subset(idx)` method (a task's batched context, such as a scene's geometry buffers) selects its own."""
    out: dict[str, Any] = {}
    for key, value in ctx.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            out[key] = value[idx]
        elif isinstance(value, list) and len(value) == batch_size:
            out[key] = [value[i] for i in idx.tolist()]
        elif callable(getattr(value, "subset", None)):
            out[key] = value.subset(idx)
        else:
            out[key] = value
    return out


def unwritten(cls: type) -> list[str]:
    """The abstract hooks of Task that a plugin class leaves unwritten (checked before it is built)."""
    return sorted(h for h in Task.__abstractmethods__ if getattr(getattr(cls, h, None), "__isabstractmethod__", False))


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
        """Move tensors, leaving shared objects (a scene's geometry) alone."""
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


class Problem(ABC):
    """The physics: how x is stored and updated, what it predicts, how far a prediction is from the observation."""

    name: str = "task"
    #: whether autograd through `forward` is valid (gradient feedback, Adam and L-BFGS need it or a surrogate)
    differentiable: bool = False

    @property
    @abstractmethod
    def space(self) -> Space:
        """How x is stored and updated: retract, distance, project, random."""

    @abstractmethod
    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """The batched forward model f(x, ctx) -> y."""

    def surrogate_forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """Differentiable stand-in for `forward`; tasks with a differentiable forward use it as is."""
        if not self.differentiable:
            raise NotImplementedError(f"task {self.name!r}: forward is not differentiable and no surrogate is given")
        return self.forward(x, ctx)

    def energy_gradient(self, x: Tensor, y_obs: Tensor, ctx: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        """Where the task has one cheaper than autograd's pass: the gradient of E_data(f(retract(x, delta)), y) in delta
        at 0, in closed form or fused, and the prediction f(x). None (the default): autograd through surrogate_forward.
        """
        return None

    def energy(self, y_pred: Tensor, y_obs: Tensor) -> Tensor:
        """Per-sample data term; mean squared residual unless the task says otherwise."""
        return (y_pred - y_obs).flatten(1).pow(2).mean(1)

    def polish_residual(self, x: Tensor, ctx: dict[str, Any], y_obs: Tensor) -> Tensor:
        """The residual whose mean square `solver.polish` minimises (see feedback_solver.polish): by default the
        forward model's prediction minus the observation, so that its mean square is the default energy."""
        return self.forward(x, ctx) - y_obs

    def energy_parts(self, y_pred: Tensor, y_obs: Tensor) -> Tensor:
        """Per-sample energy split into parts (B x N, e.g. one per input image) for the "gradients" feedback."""
        return self.energy(y_pred, y_obs)[:, None]

    def prior(self, x: Tensor) -> Tensor | None:
        """Per-sample prior energy for the optimiser baselines, or None."""
        return None


class Data(ABC):
    """The data: samples of every split, deterministic per seed, and the starts a solve begins from."""

    #: the splits `sample` draws; a task may add validation splits of its own (pose: val_unseen, unseen robots)
    splits: tuple[str, ...] = ("train", "val", "test")

    @abstractmethod
    def sample(self, n: int, split: str, seed: int) -> Batch:
        """n samples (y, true x, ctx) of one of `splits` (train, val, test, ...)."""

    @abstractmethod
    def initial(self, batch: Batch) -> Tensor:
        """Constant or analytic start x0 for solvers without a learned initializer and for the baselines."""

    def restart_starts(self, batch: Batch, count: int) -> Tensor:
        """Other starts (count, B, D) for samples the solver left at a high energy (`solver.restarts`)."""
        raise NotImplementedError(f"task {self.name!r} gives no restart starts; set solver.restarts.starts=0")

    def describe_data(self, split: str) -> str:
        """One line naming the data a split is drawn from, for benchmark reports."""
        return f"{self.name} {split} split"


class Evaluation(ABC):
    """How an answer is scored: metrics per sample, the outlier rule, the report's groups."""

    @abstractmethod
    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        """Per-sample metrics by name; the first is the primary one unless bench.primary_metric says otherwise."""

    def curve_metric(self, xs: list[Tensor], x_true: Tensor, ctx: dict[str, Any], name: str) -> list[Tensor]:
        """One metric per sample at each state of a curve (a task may share work across states)."""
        return [self.metrics(x, x_true, ctx)[name] for x in xs]

    def is_outlier(self, metrics: dict[str, Tensor]) -> Tensor | None:
        """Per-sample outlier flags, or None when the task has no outlier rule."""
        return None

    def groups(self, batch: Batch) -> list[str] | None:
        """Each sample's group (e.g. its object) for the report's per-group table, or None for no such table."""
        return None

    def forward_gap(self, batch: Batch) -> str | None:
        """One line on how far the forward model is from the program that made the observations, at the true x
        (None: the observations are the forward model's own)."""
        return None


class Learned(ABC):
    """The learned parts: the update net, the initializer, the loss they train on, and the problem's symmetries."""

    @abstractmethod
    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        """One update net from the config's `model` section: forward(fb: dict[str, Tensor], h) -> (dx tangent, h)."""

    def make_initializer(self, model: DictConfig) -> nn.Module | None:
        """A learned initializer: forward(y, ctx, x0) -> x0', or None for the constant/analytic start."""
        return None

    def loss(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> Tensor:
        """Supervised loss at one unrolled stage; the space's distance unless the task says otherwise."""
        return self.space.distance(x_pred, x_true).mean()

    def auxiliary_loss(self, aux: dict[str, Tensor], batch: Batch) -> Tensor:
        """Loss of what a net reports in `net.aux` while training (e.g. a depth head); unused at inference."""
        raise NotImplementedError(f"task {self.name!r}: a net reported auxiliary outputs {sorted(aux)} "
                                  "but the task defines no auxiliary_loss")

    def augment(self, batch: Batch, states: tuple[Tensor, Tensor] | None,
                gen: torch.Generator) -> tuple[Batch, tuple[Tensor, Tensor] | None]:
        """A pool minibatch and its states (x_t, y_t) under a symmetry of the problem (`train.augment`)."""
        raise NotImplementedError(f"task {self.name!r} defines no augmentation; set train.augment=false")

    def symmetries(self) -> list["Symmetry"]:
        """Transforms under which the problem is equivariant, the identity first (`solver.symmetries`); none."""
        return []

    def optimisers(self) -> dict[str, Callable[..., Any]]:
        """Baseline optimisers beside Adam and L-BFGS by report name, each f(task, y, ctx, x0, cfg) -> OptimResult."""
        return {}


class Settings:
    """Settings of one task that bench reports apart (two test sets, say), and checkpoints fit to each."""

    cfg: DictConfig

    def setting(self, **task_keys: Any) -> "Task":
        """This task with some `task.*` config keys changed: a fresh task built from a copy of its config."""
        cfg = copy.deepcopy(self.cfg)
        for key, value in task_keys.items():
            cfg.task[key] = value
        return type(self)(cfg)

    @property
    def report_name(self) -> str:
        """File stem of this setting's benchmark report."""
        return self.name

    def check_checkpoint(self, cfg: DictConfig, path: Path) -> None:
        """Refuse a checkpoint trained for another setting of this task (its config is `cfg`)."""

    def for_checkpoint(self, cfg: DictConfig) -> "Task":
        """The task a checkpoint's solver runs against: this one, unless the checkpoint observes differently."""
        return self

    def observe(self, batch: Batch) -> Batch:
        """This task's observation of a batch drawn by another setting of the task (see `for_checkpoint`)."""
        return batch


class CliAdapter:
    """`fbsolve train|solve|bench TASK`: the task's flags, a user's observation in, the solution out."""

    @property
    def checkpoint_dir(self) -> Path:
        """Where shipped checkpoints live; a plugin's own package folder by default."""
        import inspect

        return Path(inspect.getfile(type(self))).parent / "checkpoints"

    @classmethod
    def add_cli_options(cls, parser: argparse.ArgumentParser, command: str) -> None:
        """Task-specific flags for `fbsolve train|solve|bench TASK` (a classmethod: added before a task exists)."""

    def from_cli(self, args: argparse.Namespace, command: str) -> list["Task"]:
        """The settings this command runs, with the flags of `add_cli_options` applied: this task alone."""
        return [self]

    def load_observation(self, args: argparse.Namespace) -> Batch:
        """Read a user's observation for `fbsolve solve`."""
        raise NotImplementedError(f"task {self.name!r} does not support `fbsolve solve`")

    def write_solution(self, x: Tensor, batch: Batch, args: argparse.Namespace) -> list[Path]:
        """Write the recovered parameters of `fbsolve solve`; returns the files written."""
        raise missing(self, "write_solution")


class Task(Problem, Data, Evaluation, Learned, Settings, CliAdapter):
    """A task plugin: the six abstract hooks (space, forward, sample, initial, metrics, make_update) and any optional
    one it needs; register it under the `feedback_solver.tasks` entry point."""

    #: the config used when no configs/<name>.yaml exists (user plugins outside this repo)
    default_config: dict[str, Any] = {}

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
