"""Joint angles of a robot arm (within their limits) from its end effector's pose: position and orientation.

The arm is read from a URDF (default: the KUKA iiwa in pybullet_data) by pytorch_kinematics, whose batched forward
kinematics is differentiable, so gradient feedback, Adam and L-BFGS all apply. A 7-joint arm is redundant (many
joint angles give one pose), so the loss and the metrics score the pose reached, not the angles.
"""
from __future__ import annotations

import argparse
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import pytorch_kinematics as pk
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver import Batch, Task
from feedback_solver.spaces import Euclidean
from feedback_solver.update import FlatInitializer, FlatUpdate

SPLITS = {"train": 0, "val": 4_444_444, "test": 8_888_888}
OBS = 9  # position (3) and the first two columns of the rotation (6)


def pose(matrix: Tensor, rot_weight: float) -> Tensor:
    """(B, 4, 4) transforms -> (B, 9): position in metres, then rot_weight x the rotation's first two columns."""
    return torch.cat([matrix[:, :3, 3], rot_weight * matrix[:, :3, :2].transpose(1, 2).flatten(1)], 1)


class ArmTask(Task):
    """x: the arm's joint angles (rad), inside the URDF's limits; y: its end effector's pose in the base frame."""

    name = "arm_ik"
    differentiable = True
    default_config: dict[str, Any] = {
        "task": {"urdf": "kuka_iiwa/model.urdf", "end_link": "lbr_iiwa_link_7", "range": 0.8, "rot_weight": 0.3,
                 "outlier_cm": 2.0, "home": [0.0, 0.5, 0.0, -1.0, 0.0, 0.5, 0.0]},  # a bent start: away from singular
        "model": {"hidden": 256, "layers": 3},
        "feedback": {"inputs": ["residual", "gradient", "x"]},
        "solver": {"steps": 4, "mode": "stagewise", "init": "learned"},
        "train": {"batch_size": 256, "iterations": 400, "init_iterations": 800, "lr": 2e-3, "lr_final": 1e-4,
                  "checkpoint_every": 200, "log_every": 100, "val_samples": 256, "pool": 8192},
        "bench": {"samples": 200, "slow_samples": 20, "batch_size": 200, "primary_metric": "position_cm",
                  "methods": ["feedback", "regression", "adam", "lbfgs"]},
        "baselines": {"max_iterations": 300, "adam": {"lr": 0.02}},
        "variants": {"regression": {"solver": {"steps": 0}}},
    }

    @cached_property
    def chain(self) -> pk.SerialChain:
        """The arm from base to `task.end_link`, read from the URDF (a path, or one relative to pybullet_data)."""
        path = Path(str(self.cfg.task.urdf))
        if not path.is_absolute():
            import pybullet_data

            path = Path(pybullet_data.getDataPath()) / path
        if not path.is_file():
            raise FileNotFoundError(f"task.urdf: {path} does not exist")
        return pk.build_serial_chain_from_urdf(path.read_bytes(), str(self.cfg.task.end_link))

    @cached_property
    def space(self) -> Euclidean:
        low, high = (torch.tensor(v) for v in self.chain.get_joint_limits())
        return Euclidean(len(low), low, high)

    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        return pose(self.chain.forward_kinematics(x).get_matrix(), float(self.cfg.task.rot_weight))

    def sample(self, n: int, split: str, seed: int) -> Batch:
        """Joint angles uniform in the central `task.range` of each joint's limits; the pose they reach."""
        gen = torch.Generator().manual_seed(int(seed) + SPLITS[split])
        mid, half = (self.space.high + self.space.low) / 2, (self.space.high - self.space.low) / 2
        x = mid + half * float(self.cfg.task.range) * (2 * torch.rand(n, self.space.dim, generator=gen) - 1)
        return Batch(self.forward(x, {}), x, {})

    def initial(self, batch: Batch) -> Tensor:
        """`task.home`: the same bent pose for every sample (the straight arm is a singular start)."""
        home = torch.tensor([float(v) for v in self.cfg.task.home])
        if home.shape != (self.space.dim,):
            raise ValueError(f"task.home has {len(home)} angles; the arm has {self.space.dim} joints")
        return home.to(batch.y).expand(len(batch), -1).clone()

    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        """The pose reached: position error in cm and the angle (deg) between the two orientations."""
        a, b = (self.chain.forward_kinematics(x).get_matrix() for x in (x_pred, x_true))
        cos = ((a[:, :3, :3] * b[:, :3, :3]).sum((1, 2)) - 1) / 2
        return {"position_cm": 100 * (a[:, :3, 3] - b[:, :3, 3]).norm(dim=1),
                "rotation_deg": torch.rad2deg(torch.acos(cos.clamp(-1, 1)))}

    def is_outlier(self, metrics: dict[str, Tensor]) -> Tensor:
        return metrics["position_cm"] > float(self.cfg.task.outlier_cm)

    def loss(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> Tensor:
        """The pose reached, not the angles: a redundant arm reaches one pose with many."""
        return (self.forward(x_pred, ctx) - self.forward(x_true, ctx)).pow(2).sum(1).mean()

    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        sizes = {"observation": OBS, "state": self.space.dim, "tangent": self.space.dim}
        return FlatUpdate(inputs, sizes, self.space.dim, int(model.hidden), int(model.layers))

    def make_initializer(self, model: DictConfig) -> nn.Module:
        return FlatInitializer(OBS, self.space.dim, int(model.hidden), int(model.layers))

    @classmethod
    def add_cli_options(cls, parser: argparse.ArgumentParser, command: str) -> None:
        if command == "solve":
            parser.add_argument("--target", required=True, help='JSON {"position": [x, y, z] (m), "rotation": '
                                '3x3 rows}: the end effector pose in the base frame')

    def load_observation(self, args: argparse.Namespace) -> Batch:
        try:
            t = json.loads(Path(args.target).read_text())
            m = torch.eye(4)
            m[:3, 3], m[:3, :3] = torch.tensor(t["position"], dtype=torch.float32), torch.tensor(t["rotation"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            raise ValueError(f"--target {args.target}: not a pose file ({err})") from None
        return Batch(pose(m[None], float(self.cfg.task.rot_weight)), None, {})

    def write_solution(self, x: Tensor, batch: Batch, args: argparse.Namespace) -> list[Path]:
        out = Path(args.out) / "joints.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        names = self.chain.get_joint_parameter_names()
        out.write_text(json.dumps({"joints_rad": dict(zip(names, x[0].tolist()))}, indent=2) + "\n")
        return [out]

    def describe_data(self, split: str) -> str:
        return (f"{self.cfg.task.urdf} to {self.cfg.task.end_link}: {split} joint angles uniform in the central "
                f"{self.cfg.task.range:g} of their limits")
