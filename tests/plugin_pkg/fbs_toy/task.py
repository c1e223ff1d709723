"""Toy task: recover x in R^4 from y = tanh(A x) + 0.1 (B x)^2, with A, B fixed 8 x 4 matrices.

Written only against the public core API, as a third-party plugin would be.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver import Batch, Task
from feedback_solver.spaces import Euclidean
from feedback_solver.update import FlatInitializer, FlatUpdate

DIM, OBS = 4, 8
#: feature width of each shape of feedback (feedback_solver.feedback.KINDS says which shape each input has)
SIZES = {"observation": OBS, "state": DIM, "tangent": DIM}
#: environment variable that moves `checkpoint_dir` (tests point it at a temporary folder)
CHECKPOINT_ENV = "FBS_TOY_CHECKPOINTS"


def matrices(seed: int = 1234) -> tuple[Tensor, Tensor]:
    """The fixed forward-model matrices A, B (8 x 4), drawn from a fixed generator."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(OBS, DIM, generator=gen) / DIM**0.5 * 1.5
    b = torch.randn(OBS, DIM, generator=gen) / DIM**0.5
    return a, b


class ToyTask(Task):
    """x uniform in [-1, 1]^4 (the space allows the box [-1.5, 1.5]); y in R^8."""

    name = "toy"
    differentiable = True
    default_config: dict[str, Any] = {
        "task": {"checkpoint_dir": ""},
        "model": {"hidden": 64, "layers": 2},
        "feedback": {"inputs": ["y", "y_t", "residual", "x"]},
        "solver": {"steps": 3, "mode": "stagewise", "init": "constant",
                   "damping": {"enabled": True, "max_halvings": 4, "factor": 0.5}},
        "train": {"schedule": "progressive", "supervision": "deep", "batch_size": 64, "iterations": 150,
                  "init_iterations": 300, "finetune_iterations": 0, "lr": 3.0e-3, "lr_final": 1.0e-4,
                  "checkpoint_every": 50, "log_every": 50, "val_samples": 128},
        "bench": {"samples": 100, "slow_samples": 30, "batch_size": 100,
                  "methods": ["feedback", "regression", "adam", "lbfgs"], "primary_metric": "error"},
        "baselines": {"max_iterations": 200, "patience": 10, "adam": {"lr": 0.05}},
        "variants": {
            "feedback_shared": {"solver": {"mode": "shared"}, "train": {"schedule": "joint", "iterations": 300}},
            "feedback_gradient": {"feedback": {"inputs": ["y", "gradient", "x"]}},
            "regression": {"solver": {"steps": 0, "init": "learned"}},
        },
    }

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.A, self.B = matrices()
        self._space = Euclidean(DIM, -1.5, 1.5)

    # --- physics -------------------------------------------------------------------------------
    @property
    def space(self) -> Euclidean:
        return self._space

    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        a, b = self.A.to(x), self.B.to(x)
        return torch.tanh(x @ a.T) + 0.1 * (x @ b.T).pow(2)

    # --- data and evaluation ---------------------------------------------------------------------
    def sample(self, n: int, split: str, seed: int) -> Batch:
        offsets = {"train": 0, "val": 7_777_777, "test": 13_131_313}
        if split not in offsets:
            raise ValueError(f"split must be train, val or test, got {split!r}")
        gen = torch.Generator().manual_seed(int(seed) + offsets[split])
        x = torch.rand(n, DIM, generator=gen) * 2 - 1
        return Batch(self.forward(x, {}), x, {})

    def initial(self, batch: Batch) -> Tensor:
        return batch.y.new_zeros(len(batch), DIM)

    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        return {"error": (x_pred - x_true).norm(dim=1)}

    def is_outlier(self, metrics: dict[str, Tensor]) -> Tensor:
        return metrics["error"] > 0.5

    # --- learned parts -------------------------------------------------------------------------
    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        return FlatUpdate(inputs, SIZES, DIM, int(model.hidden), int(model.layers))

    def make_initializer(self, model: DictConfig) -> nn.Module:
        return FlatInitializer(OBS, DIM, int(model.hidden), int(model.layers))

    # --- command line ----------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        """task.checkpoint_dir if set, else $FBS_TOY_CHECKPOINTS, else the package's checkpoints/ folder."""
        configured = str(self.cfg.task.get("checkpoint_dir", "") or "") if "task" in self.cfg else ""
        if configured:
            return Path(configured)
        if os.environ.get(CHECKPOINT_ENV):
            return Path(os.environ[CHECKPOINT_ENV])
        return super().checkpoint_dir

    def describe_data(self, split: str) -> str:
        return f"toy {split} split: x uniform in [-1, 1]^4"
