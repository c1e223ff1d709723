"""The config's typed schema: omegaconf checks every core setting's type and choices once, when a config loads.

The `task`, `model` and `variants` sections belong to the task and stay free-form; the rest is typed here, so a
setting's name, type, default and meaning live in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

from omegaconf import MISSING


class Mode(StrEnum):
    """shared: one update net for every step; stagewise: a net per step (Ma et al.)."""

    shared = "shared"
    stagewise = "stagewise"


class Init(StrEnum):
    """x0: the task's constant start, or a learned initializer's guess from the observation."""

    constant = "constant"
    learned = "learned"


class Schedule(StrEnum):
    """progressive: initializer, then one stage at a time; joint: the whole unroll at once."""

    progressive = "progressive"
    joint = "joint"


class Supervision(StrEnum):
    """Joint training's loss: every step's state, the last one, or the initializer's and the last one's."""

    deep = "deep"
    final = "final"
    ends = "ends"


class Start(StrEnum):
    """Where Adam and L-BFGS start: the task's constant start, or the shipped solver's learned x0."""

    initial = "initial"
    learned = "learned"


@dataclass
class DampingSettings:
    """LM-style acceptance: halve a step until the data energy drops, at most max_halvings times."""

    enabled: bool = True
    max_halvings: int = 4
    factor: float = 0.5
    # the first in_turn scales one call each, the rest in one call (the same answer; an inference setting for a
    # forward model whose cost is per call, see acceptance.LMDamping); null: every scale in turn
    in_turn: Optional[int] = None


@dataclass
class RestartSettings:
    """> 0 starts: samples whose final energy exceeds energy_above are solved again from the task's other starts,
    keeping each sample's lowest-energy run (an inference setting: it applies to any checkpoint)."""

    starts: int = 0
    energy_above: float = 0.0
    triage: int = 0  # > 0: every start runs this many steps; each sample's lowest-energy one alone goes on


@dataclass
class PolishSettings:
    """Gauss-Newton (Levenberg-Marquardt) iterations after the learned steps and restarts (feedback_solver.polish);
    an inference setting: it applies to any checkpoint."""

    steps: int = 0
    delta: float = 1e-3
    mu: float = 1e-3
    tol: float = 1e-5  # a sample whose accepted step moves it less than this stops


@dataclass
class SolverSettings:
    steps: int = 4
    mode: Mode = Mode.stagewise
    init: Init = Init.constant
    damping: DampingSettings = field(default_factory=DampingSettings)
    restarts: RestartSettings = field(default_factory=RestartSettings)
    polish: PolishSettings = field(default_factory=PolishSettings)
    # true: at inference each step is the mean of the update net's steps on the feedback under each of the task's
    # symmetries (Task.symmetries), mapped back; an inference setting like restarts
    symmetries: bool = False


@dataclass
class FeedbackSettings:
    inputs: list[str] = field(default_factory=lambda: ["y", "y_t", "residual"])


@dataclass
class TrainSettings:
    schedule: Schedule = Schedule.progressive
    supervision: Supervision = Supervision.deep
    batch_size: int = 128
    iterations: int = 1000
    init_iterations: int = 1000
    finetune_iterations: int = 0
    lr: float = 1e-3
    lr_final: float = 1e-5
    checkpoint_every: int = 200
    log_every: int = 100
    val_samples: int = 256
    warm_start: bool = False  # stage-wise progressive: stage t starts from stage t-1's trained weights
    pool: int = 0  # > 0: progressive phases train on this many fixed samples with cached states (costly forwards)
    stop_after: int = 0  # > 0: save the state and stop after this many iterations (time-limited jobs); --resume
    init_from: str = ""  # a checkpoint of the same task: start from its tensors whose names and shapes fit
    augment: bool = False  # pool minibatches pass through task.augment (a symmetry: mirrored scenes for pose)


@dataclass
class LearnedMethod:
    """A task's own learned bench method: which checkpoint, which inference switches off, how many steps."""

    checkpoint: str = MISSING
    off: list[str] = field(default_factory=list)
    steps: Optional[int] = None


@dataclass
class BenchSettings:
    samples: int = 500
    slow_samples: int = 50
    methods: list[str] = field(default_factory=lambda: ["feedback", "regression", "adam", "lbfgs"])
    demo_methods: Optional[list[str]] = None  # `fbsolve demo`'s methods when the full list is too slow (None: all)
    batch_size: int = 500  # samples per learned-solver call; ranks split the test set in whole chunks
    slow_batch_size: int = 25  # samples per optimiser call (Adam is batched; L-BFGS goes one by one anyway)
    primary_metric: str = ""
    curve_steps: int = 0  # > the trained steps: the subset's feedback run goes this far (error-against-step plot)
    # a task's own learned methods by report name; `feedback`, `regression`, every variant and
    # `<method>_no_<damping|restarts|symmetry>` need no entry
    learned: dict[str, LearnedMethod] = field(default_factory=dict)


@dataclass
class AdamSettings:
    lr: float = 0.01


@dataclass
class LbfgsSettings:
    """torch.optim.LBFGS's own settings."""

    lr: float = 1.0
    history_size: int = 20
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9


@dataclass
class BaselineSettings:
    max_iterations: int = 500
    patience: int = 20
    rel_tol: float = 1e-6
    prior_weight: float = 0.0
    adam: AdamSettings = field(default_factory=AdamSettings)
    lbfgs: LbfgsSettings = field(default_factory=LbfgsSettings)
    energy_scale: float = 1.0  # L-BFGS minimises this x the energy (a per-pixel mean has gradients near its tolerance)
    hybrid: str = "lbfgs"
    hybrid_overrides: dict[str, Any] = field(default_factory=dict)  # merged into `baselines` for the hybrid's run
    start: Start = Start.initial


@dataclass
class Config:
    """A run's whole config: core defaults < configs/<task>.yaml < variant < key=value overrides."""

    task: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"  # auto: this rank's GPU when CUDA is present, else the CPU; cpu, cuda, cuda:N
    model: dict[str, Any] = field(default_factory=dict)
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    solver: SolverSettings = field(default_factory=SolverSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    variants: dict[str, Any] = field(default_factory=dict)


#: settings that must be >= 0 (omegaconf checks their type, not their range)
NON_NEGATIVE = ("solver.steps", "solver.restarts.starts", "solver.restarts.energy_above", "train.pool",
                "train.stop_after", "train.iterations", "train.init_iterations", "train.finetune_iterations",
                "bench.curve_steps", "baselines.max_iterations", "solver.damping.max_halvings", "solver.polish.steps",
                "solver.restarts.triage")
