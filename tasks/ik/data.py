"""IK data: real CMU poses (train 01_01, test 01_03), augmented around the real poses for training."""
from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch
from torch import Tensor

from tasks.ik.skeleton import Clip

UP = torch.tensor([0.0, 1.0, 0.0])  # BVH clips are Y-up


@dataclass(frozen=True)
class Augment:
    """Training poses: a random heading, and per-joint rotation noise of a per-sample level in [0, noise_deg]."""

    noise_deg: float = 15.0
    random_heading: bool = True


def train_frames(clip: Clip, generator: torch.Generator, n: int) -> Tensor:
    """Random frames, skipping frame 0 (the CMU clips' T-pose calibration frame)."""
    return torch.randint(1, clip.rotations.shape[0], (n,), generator=generator)


def test_frames(clip: Clip, n: int) -> Tensor:
    """A fixed, evenly spaced subsample of frames 1..F-1, so every run evaluates the same poses."""
    last = clip.rotations.shape[0] - 1
    if n > last:
        raise ValueError(f"asked for {n} test frames but the clip has only {last} after its T-pose frame")
    return torch.linspace(1, last, n).round().long()


def augment(rot: Tensor, active: Tensor, aug: Augment, generator: torch.Generator) -> Tensor:
    """Perturb the active joints' local rotations and turn the root about the vertical axis."""
    b = rot.shape[0]
    rot = rot.clone()
    level = torch.rand(b, 1, 1, generator=generator) * math.radians(aug.noise_deg)
    noise = torch.randn(b, int(active.numel()), 3, generator=generator) * level
    rot[:, active] = rot[:, active] @ roma.rotvec_to_rotmat(noise)
    if aug.random_heading:
        yaw = torch.rand(b, 1, generator=generator) * 2 * math.pi
        rot[:, 0] = roma.rotvec_to_rotmat(yaw * UP) @ rot[:, 0]
    return rot
