"""Inverse kinematics on the CMU skeleton: recover per-joint rotations (6D) from 3D joint positions."""
from __future__ import annotations

import argparse
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import roma
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from feedback_solver.problem import Batch, Task
from feedback_solver.spaces import Rotation6D, degrees
from tasks.ik import data, options
from tasks.ik.nets import IKInitializer, IKUpdate
from tasks.ik.skeleton import Clip, check_compatible, load_bvh, matrix_to_euler, write_bvh


class IKTask(Task):
    """x: rotations of the joints that move in the training clip; y: all joint and end-site positions, root at 0."""

    name = "ik"
    differentiable = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.train_clip = load_bvh(cfg.task.train_bvh)
        self.test_bvh = str(cfg.task.test_bvh)
        self.frames = parse_frames(str(cfg.task.frames))
        self.frames_default = bool(cfg.task.clamp_frames)  # `frames` is solve's default, not the user's --frames
        rot = self.train_clip.rotations[1:]
        spread = roma.rotmat_geodesic_distance(rot, rot[:1]).amax(0)
        self.active = (spread > 1e-4).nonzero().squeeze(1)
        if int(self.active[0]) != 0:
            raise ValueError(f"{cfg.task.train_bvh}: the root never rotates; IK needs a moving root joint")
        self.fixed = self.train_clip.rotations[1]  # joints outside `active` keep these (constant) rotations
        self._space = Rotation6D(int(self.active.numel()))
        self.cm = float(cfg.task.cm_per_unit)
        self.aug = data.Augment(cfg.task.augment.noise_scale, cfg.task.augment.random_heading)
        self.moving = self.active[1:]  # the non-root active joints: the ones augmented and under the prior
        self.orders = [self.skeleton.rotation_order[int(j)] for j in self.moving]
        self.std_deg = data.channel_std(self.train_clip, self.moving, self.orders)

    # --- physics -----------------------------------------------------------------------------
    @property
    def space(self) -> Rotation6D:
        return self._space

    @property
    def skeleton(self):
        return self.train_clip.skeleton

    def full_rotations(self, x: Tensor) -> Tensor:
        """(B, A*6) active-joint parameters -> (B, J, 3, 3) with the fixed joints filled in."""
        act = self.space.to_rotmat(x)
        rest = self.fixed.to(x).expand(x.shape[0], -1, -1, -1)
        index = self.active.to(x.device).view(1, -1, 1, 1).expand(x.shape[0], -1, 3, 3)
        return rest.scatter(1, index, act)

    def forward(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        return self.skeleton.fk(self.full_rotations(x)).flatten(1)

    def energy(self, y_pred: Tensor, y_obs: Tensor) -> Tensor:
        """Sum of squared point distances (squared clip units)."""
        return (y_pred - y_obs).pow(2).sum(1)

    @cached_property
    def euler_stats(self) -> tuple[Tensor, Tensor]:
        """Mean and std (rad) of the non-root active joints' Euler angles over the training frames."""
        rot = self.train_clip.rotations[1:, self.moving]
        eul = torch.stack([matrix_to_euler(rot[:, i], o) for i, o in enumerate(self.orders)], 1).deg2rad()
        return eul.mean(0), self.std_deg.deg2rad().clamp(min=torch.deg2rad(torch.tensor(1.0)))

    def prior(self, x: Tensor) -> Tensor:
        """Gaussian prior on Euler angles (the seed's), fitted on the training clip; the root is left free."""
        mean, std = self.euler_stats
        rot = self.space.to_rotmat(x)[:, 1:]
        eul = torch.stack([matrix_to_euler(rot[:, i], o) for i, o in enumerate(self.orders)], 1).deg2rad()
        d = eul - mean.to(x)
        d = torch.atan2(torch.sin(d), torch.cos(d))
        return (d / std.to(x)).pow(2).flatten(1).sum(1)

    # --- data ----------------------------------------------------------------------------------
    def make_batch(self, rot: Tensor) -> Batch:
        x = self.space.from_rotmat(rot[:, self.active])
        return Batch(self.skeleton.fk(rot).flatten(1), x, {})

    def sample(self, n: int, split: str, seed: int) -> Batch:
        if split in ("train", "val"):
            gen = torch.Generator().manual_seed(seed + (0 if split == "train" else 7_777_777))
            rot = self.train_clip.rotations[data.train_frames(self.train_clip, gen, n)]
            return self.make_batch(data.augment(rot, self.moving, self.orders, self.std_deg, self.aug, gen))
        if split == "test":
            clip = self.load_clip(self.test_bvh)
            frames = data.test_frames(clip, n) if self.frames is None else self.frame_range(clip)
            return self.make_batch(clip.rotations[frames])
        raise ValueError(f"split must be train, val or test, got {split!r}")

    def frame_range(self, clip: Clip) -> Tensor:
        """The frames of --frames A:B (B exclusive), refused unless 0 <= A < B <= the clip's frame count."""
        n, a, b = len(clip.rotations), self.frames.start, self.frames.stop
        if self.frames_default:  # solve's default 1:11, on a clip that may be shorter
            a, b = min(a, n - 1), min(b, n)
        if not 0 <= a < b <= n:
            raise ValueError(f"--frames {a}:{b} does not lie in {self.test_bvh}'s {n} frames (A:B with "
                             f"0 <= A < B <= {n})")
        return torch.arange(a, b)

    def load_clip(self, path: str) -> Clip:
        """A user's clip, refused unless it has the training skeleton."""
        clip = load_bvh(path)
        check_compatible(self.skeleton, clip.skeleton, str(path))
        return clip

    @cached_property
    def mean_pose(self) -> Tensor:
        """Chordal mean of each active joint's training rotations: the constant start of the non-root joints."""
        return roma.special_procrustes(self.train_clip.rotations[1:, self.active].mean(0))

    def root_rotation(self, y: Tensor) -> Tensor:
        """Closed-form root rotation: points moved only by the root (and fixed joints) fitted by Kabsch."""
        pose = self.mean_pose.clone()
        pose[0] = torch.eye(3)
        ref = self.forward(self.space.from_rotmat(pose[None]), {}).view(-1, 3)[self.root_points]
        obs = y.view(y.shape[0], -1, 3)[:, self.root_points]
        return roma.rigid_vectors_registration(ref.expand_as(obs), obs)

    @cached_property
    def root_points(self) -> Tensor:
        """Points whose path from the root crosses no moving joint, and that are not at the root itself."""
        act = set(self.active.tolist()) - {0}
        parents = self.skeleton.parents
        idx = []
        for j in range(1, self.skeleton.n_joints):
            chain, p = [], parents[j]
            while p > 0:
                chain.append(p)
                p = parents[p]
            if not act.intersection(chain) and float(self.skeleton.offsets[j].norm()) > 1e-6:
                idx.append(j)
        idx = torch.tensor(idx, dtype=torch.long)
        if idx.numel() < 2:
            raise ValueError("the skeleton has fewer than two points fixed to the root: no closed-form root rotation")
        return idx

    def initial(self, batch: Batch) -> Tensor:
        rot = self.mean_pose.expand(len(batch), -1, -1, -1).clone()
        rot[:, 0] = self.root_rotation(batch.y)
        return self.space.from_rotmat(rot)

    # --- evaluation ------------------------------------------------------------------------------
    def metrics(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> dict[str, Tensor]:
        """Joint angle error (deg, geodesic, mean over moving joints) and position error (cm, mean over points)."""
        angle = degrees(self.space.angles(x_pred, x_true)).mean(1)
        diff = (self.forward(x_pred, ctx) - self.forward(x_true, ctx)).view(len(x_pred), -1, 3)
        return {"angle_deg": angle, "position_cm": diff.norm(dim=2).mean(1) * self.cm}

    def loss(self, x_pred: Tensor, x_true: Tensor, ctx: dict[str, Any]) -> Tensor:
        """Chordal rotation distance (smooth at zero, unlike the geodesic) plus a point-distance term."""
        a, b = self.space.to_rotmat(x_pred), self.space.to_rotmat(x_true)
        rot = ((a - b).pow(2).sum((-1, -2)) + 1e-8).sqrt().mean(1)
        pts = (self.forward(x_pred, ctx) - self.forward(x_true, ctx)).view(len(x_pred), -1, 3)
        pos = (pts.pow(2).sum(2) + 1e-8).sqrt().mean(1)
        return (rot + self.cfg.task.position_loss_weight * pos).mean()

    # --- nets ------------------------------------------------------------------------------------
    def make_update(self, inputs: list[str], model: DictConfig) -> nn.Module:
        return IKUpdate(inputs, self.skeleton.n_points, self.space, model)

    def make_initializer(self, model: DictConfig) -> nn.Module:
        return IKInitializer(self.skeleton.n_points, self.space, model)

    # --- command line ------------------------------------------------------------------------------
    def describe_data(self, split: str) -> str:
        if split != "test":
            return f"{self.cfg.task.train_bvh}, augmented"
        which = ("frames evenly spaced over 1..F-1" if self.frames is None
                 else f"frames {self.frames.start}:{self.frames.stop}")
        return f"{Path(self.test_bvh).name} ({which})"

    @classmethod
    def add_cli_options(cls, parser: argparse.ArgumentParser, command: str) -> None:
        options.add_cli_options(parser, command)

    def from_cli(self, args: argparse.Namespace, command: str) -> list[Task]:
        keys: dict[str, Any] = {"test_bvh": args.bvh} if getattr(args, "bvh", None) else {}
        frames = getattr(args, "frames", None)
        if frames or command == "solve":  # solve's default: frames 1:11, cut to a shorter clip
            keys.update(frames=frames or "1:11", clamp_frames=not frames)
        return [self.setting(**keys)] if keys else [self]

    def load_observation(self, args: argparse.Namespace) -> Batch:
        clip = self.load_clip(self.test_bvh)
        frames = self.frame_range(clip)
        batch = self.make_batch(clip.rotations[frames])
        batch.ctx.update(frames=frames, root_positions=clip.root_positions[frames], frame_time=clip.frame_time)
        return batch

    def write_solution(self, x: Tensor, batch: Batch, args: argparse.Namespace) -> list[Path]:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        bvh = out / "ik_solution.bvh"
        write_bvh(bvh, self.skeleton, self.full_rotations(x), batch.ctx["root_positions"], batch.ctx["frame_time"])
        m = self.metrics(x, batch.x, batch.ctx)
        summary = {"source": self.test_bvh, "frames": batch.ctx["frames"].tolist(),
                   "angle_deg": m["angle_deg"].tolist(), "position_cm": m["position_cm"].tolist()}
        (out / "ik_solution.json").write_text(json.dumps(summary, indent=1))
        print(f"angle error median {float(m['angle_deg'].median()):.3f} deg, "
              f"position error median {float(m['position_cm'].median()):.3f} cm (against the clip's own rotations)")
        return [bvh, out / "ik_solution.json"]


def parse_frames(frames: str) -> slice | None:
    """--frames A:B (task.frames) as a slice; empty: None (frames evenly spaced over the clip)."""
    if not frames:
        return None
    try:
        a, b = (int(v) for v in frames.split(":"))
    except ValueError:
        raise ValueError(f"--frames must look like A:B (e.g. 1:100), got {frames!r}") from None
    return slice(a, b)
